"""A DAS result's report section shows its own numbers: every control beside the subspace, each
random subspace, the held-out prompts' projection, and the flags; checked on planted models."""

import html

import numpy as np
import pytest

import actpatch as ap
from actpatch.report.das import controls_plot, das_section, projection_plot, ran
from actpatch.subspace.das import Training, das
from actpatch.subspace.guards import Guards
from actpatch.subspace.planted import planted

FAST = {"training": Training(steps=60, lr=0.1), "guards": Guards(n_random=10), "n_boot": 200}


@pytest.fixture(scope="module")
def found():
    return {
        kind: das(case.model, case.pairs, case.site, rank=1, **FAST)
        for kind in ("genuine", "illusion")
        for case in [planted(kind)]
    }


def test_the_controls_plot_draws_the_table_and_every_random_subspace(found):
    result = found["illusion"]
    figure = controls_plot(result)
    bars = [t for t in figure.data if t.type == "bar"]
    points = [t for t in figure.data if t.type == "scatter"]
    controls = ran(result)
    assert controls[:2] == ["subspace", "subspace_train"]  # held-out beside training
    assert {"full_component", "row_space", "null_space", "random_subspaces", "random_model"} <= set(
        controls
    )
    for bar, score in zip(bars, ("iia", "norm_logit_diff")):
        assert list(bar.x) == controls
        want = result.table.sel(metric=score, stat="value", control=controls).values
        np.testing.assert_allclose(np.asarray(bar.y, dtype=float), want)
        hi = result.table.sel(metric=score, stat="hi", control=controls).values
        np.testing.assert_allclose(np.asarray(bar.error_y.array, dtype=float), hi - want)
    for point, score in zip(points, ("iia", "norm_logit_diff")):
        np.testing.assert_allclose(
            np.asarray(point.y, dtype=float), result.random_subspaces.sel(metric=score).values
        )


def test_the_projection_plot_places_each_held_out_prompt_at_its_coordinates(found):
    result = found["genuine"]
    figure = projection_plot(result)
    runs = {t.name: t for t in figure.data if t.mode == "markers"}
    assert set(runs) == {"source run", "target run"}
    for run in ("source", "target"):
        trace = runs[f"{run} run"]
        assert list(trace.x) == [str(i) for i in result.test]
        want = result.projection.sel(run=run).isel(latent=0).values
        np.testing.assert_allclose(np.asarray(trace.y, dtype=float), want, atol=1e-6)
    # The planted variable: every held-out pair's runs sit 2 apart along the learned direction.
    source, target = (np.asarray(runs[f"{r} run"].y, dtype=float) for r in ("source", "target"))
    assert np.abs(np.abs(source - target) - 2).max() < 0.1


def test_the_section_lists_the_numbers_and_the_flags_and_renders(found, tmp_path):
    flagged = das_section(found["illusion"])
    result = found["illusion"]
    for control in ran(result):
        cells = result.table.sel(control=control, metric="iia")
        value, lo, hi = (float(cells.sel(stat=s)) for s in ("value", "lo", "hi"))
        assert f"<th>{control}</th>" in flagged.html
        assert f"{value:.3f} [{lo:.3f}, {hi:.3f}]" in flagged.html
    for flag in result.flags:
        assert html.escape(flag) in flagged.html
    assert "exceeds_component" in flagged.html and "dormant_pathway" in flagged.html
    passed = das_section(found["genuine"])
    assert "No guard raised a flag" in passed.html and "class='failed'" not in passed.html
    assert len(passed.figures) == 3  # controls, projection, training loss
    page = ap.report.render_report([passed, flagged], tmp_path / "das.html").read_text()
    assert page.count("Held-out accuracy beside its controls") == 2
    assert "the part the next weights ignore" in page and "neuron[layer=0, pos=END]" in page
    with pytest.raises(TypeError, match="draws a DASResult"):
        das_section(result.table)


def test_a_subspace_over_every_position_is_drawn_at_the_last():
    from tiny import tiny_task

    model, pairs = tiny_task("gpt2", batch=6)
    pairs = pairs[[0, 1, 2, 0, 1, 2]]
    result = das(
        model,
        pairs,
        "resid_pre[layer=1]",
        rank=2,
        training=Training(steps=2),
        guards=False,
        n_boot=20,
    )
    figure = projection_plot(result)
    assert "drawn at the last" in figure.layout.title.text
    source = [t for t in figure.data if t.name == "source run"]
    assert len(source) == 2  # one panel per direction
    want = result.projection.sel(run="source").isel(pos=-1, latent=1).values
    np.testing.assert_allclose(np.asarray(source[1].y, dtype=float), want, atol=1e-6)
    section = das_section(result)
    assert section.html.count("not run") == 2 * 5  # five controls, two scores each

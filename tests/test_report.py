"""The report's figures, pages and images, checked as data: which panels, which values, which labels.

Whether a browser draws the page is tests/test_report_browser.py's job."""

from __future__ import annotations

import re

import numpy as np
import plotly.graph_objects as go
import pytest
import xarray as xr

import actpatch as ap
from actpatch import report
from actpatch.report import layout
from sample_results import pareto_curve, tiny_results


def test_directions_sit_side_by_side_on_one_scale():
    result = tiny_results()["resid_pre"]
    grid = layout.grid(result)
    assert grid.columns_per_row == 2 and grid.rows == 1
    assert [p.title.split(":")[0] for p in grid.panels] == ["denoise", "noise"]
    for panel, direction in zip(grid.panels, ["denoise", "noise"]):
        np.testing.assert_array_equal(
            panel.values, result.sel(direction=direction, metric="norm_logit_diff").values
        )
    figure = report.show(result)
    heatmaps = [t for t in figure.data if isinstance(t, go.Heatmap)]
    assert len(heatmaps) == 2
    np.testing.assert_array_equal(
        heatmaps[1].z, result.sel(direction="noise", metric="norm_logit_diff").values
    )
    assert "%{z:.8g}" in heatmaps[0].hovertemplate and "%{customdata}" in heatmaps[0].hovertemplate
    assert (
        heatmaps[0].customdata[1][3].startswith("pos 3 · clean ")
    )  # every cell's hover names its column


def _midpoints(figure: go.Figure) -> list[tuple[float, float, float]]:
    """Per heatmap panel: its colour axis's (cmin, cmid, cmax)."""
    axes = [figure.layout[t.coloraxis] for t in figure.data if isinstance(t, go.Heatmap)]
    return [(a.cmin, a.cmid, a.cmax) for a in axes]


@pytest.mark.parametrize("metric", ["norm_logit_diff", "logit_diff", "kl"])
def test_each_direction_is_white_where_a_patch_changes_nothing(metric):
    # Untouched sites sit at the target run's value: 0 denoising and 1 noising on the normalised
    # scale. One scale centred at 0 painted the whole noising panel one saturated colour.
    result = tiny_results()["resid_pre"]
    target = {
        "denoise": result.attrs["baseline_corrupt"][metric],
        "noise": result.attrs["baseline_clean"][metric],
    }
    if metric == "norm_logit_diff":
        assert target == {"denoise": pytest.approx(0), "noise": pytest.approx(1)}
    figure = report.show(result, metric=metric)
    values = {d: result.sel(direction=d, metric=metric).values for d in target}
    extent = max(np.abs(values[d] - target[d]).max() for d in target)
    for (low, mid, high), direction in zip(_midpoints(figure), ["denoise", "noise"]):
        assert mid == pytest.approx(target[direction], abs=1e-12)
        assert (low, high) == (
            pytest.approx(mid - extent),
            pytest.approx(mid + extent),
        )  # one extent: panels compare by eye
    bars = [figure.layout[t.coloraxis].colorbar.title.text for t in figure.data]
    assert (
        bars[1].startswith(metric)
        and f"noise: {target['noise']:.3g} = clean run (no effect)" in bars[1]
    )
    # The same centres in the static images.
    image = report.png.draw(result, metric)
    for ax, direction in zip(image.axes, ["denoise", "noise"]):
        low, high = ax.images[0].get_clim()
        assert (low + high) / 2 == pytest.approx(target[direction])


def test_a_single_direction_and_an_unknown_centre():
    heads = tiny_results()["head"]  # denoise only: one scale, white at 0
    assert _midpoints(report.show(heads)) == [
        (pytest.approx(-layout.grid(heads).extent), 0, pytest.approx(layout.grid(heads).extent))
    ]
    noising = heads.assign_attrs(direction="noise")
    assert {mid for _, mid, _ in _midpoints(report.show(noising))} == {1}
    # Stacked corruptions drop baselines that differ: logit_diff has no known centre, and says so.
    corruptions = tiny_results()["corruptions"]
    figure = report.show(corruptions, metric="logit_diff")
    denoise_bar = figure.layout.coloraxis.colorbar.title.text
    if "baseline_corrupt" not in corruptions.attrs:
        assert "centred at 0" in denoise_bar and figure.layout.coloraxis.cmid == 0
    assert [mid for _, mid, _ in _midpoints(report.show(corruptions))] == [0, 1] * 2


def test_position_ticks_carry_tokens_and_names():
    result = tiny_results()["resid_pre"]
    panel = layout.grid(result).panels[0]
    clean, corrupt = (
        [str(t) for t in result.clean_token.values],
        [str(t) for t in result.corrupt_token.values],
    )
    for i, tick in enumerate(panel.ticks):
        assert tick[0] == clean[i]
        assert (f"({corrupt[i]})" in tick) == (corrupt[i] != clean[i])
    assert f"clean {clean[3]!r}" in panel.hover[3]
    named = layout.grid(tiny_results()["corruptions"]).panels[0]
    assert [t[-1] for t in named.ticks] == ["X", "END"]
    # Columns are drawn at their index: a categorical axis would merge two columns with one token.
    figure = report.show(result)
    assert list(figure.data[0].x) == list(range(result.sizes["pos"]))
    assert (
        "&lt;" in figure.layout.xaxis.ticktext[0]
    )  # tiny tokens read "<23>": plotly must not take them for tags


def test_heads_at_named_positions_get_one_panel_per_position():
    result = tiny_results()["head_named"]
    grid = layout.grid(result)
    assert grid.column_dim == "head" and [p.title for p in grid.panels] == [
        f"pos X ({str(result.clean_token.values[0])!r})",
        f"pos END ({str(result.clean_token.values[1])!r})",
    ]
    np.testing.assert_array_equal(
        grid.panels[1].values, result.sel(metric="norm_logit_diff", pos="END").values
    )


def test_corruptions_are_rows_and_directions_columns():
    result = tiny_results()["corruptions"]
    grid = layout.grid(result, "logit_diff")
    assert (grid.rows, grid.columns_per_row) == (2, 2)
    assert [p.title.split(":")[0] for p in grid.panels] == [
        "corruption random · denoise",
        "corruption random · noise",
        "corruption rolled · denoise",
        "corruption rolled · noise",
    ]
    np.testing.assert_array_equal(
        grid.panels[2].values,
        result.sel(corruption="rolled", direction="denoise", metric="logit_diff").values,
    )


def test_metric_menu_switches_every_panel():
    result = tiny_results()["resid_pre"]
    figure = report.show(result, metric="kl")
    assert figure.layout.coloraxis.colorbar.title.text.startswith("kl<br>")
    menu = figure.layout.updatemenus[0]
    assert [b.label for b in menu.buttons] == list(ap.METRICS) and menu.buttons[
        menu.active
    ].label == "kl"
    logit_diff = menu.buttons[list(ap.METRICS).index("logit_diff")]
    restyle, relayout = logit_diff.args
    for z, direction in zip(restyle["z"], ["denoise", "noise"]):
        np.testing.assert_array_equal(
            z, result.sel(direction=direction, metric="logit_diff").values
        )
    grid = layout.grid(result, "logit_diff")
    for i, axis in enumerate(["coloraxis", "coloraxis2"]):
        assert (
            relayout[f"{axis}.cmid"] == grid.scales[i].centre
            and relayout[f"{axis}.cmax"] == grid.limits(i)[1]
        )
    assert relayout["coloraxis2.cmid"] == pytest.approx(
        result.attrs["baseline_clean"]["logit_diff"]
    )
    with pytest.raises(ValueError, match="metric must be one of"):
        report.show(result, metric="nope")


def test_per_prompt_results_are_averaged_and_say_so():
    result = tiny_results()["head"].expand_dims(batch=3).copy()
    result[dict(batch=0)] = 0.0
    grid = layout.grid(result)
    assert "mean over 3 prompts" in grid.note
    np.testing.assert_allclose(
        grid.panels[0].values, tiny_results()["head"].sel(metric="norm_logit_diff").values * 2 / 3
    )


def test_line_plot_draws_a_curve_with_its_references():
    curve = pareto_curve()
    figure = report.line_plot(curve)
    np.testing.assert_array_equal(figure.data[0].x, curve["size"].values)
    np.testing.assert_array_equal(figure.data[0].y, curve.values)
    assert figure.layout.xaxis.title.text == "size"
    assert sorted(shape.y0 for shape in figure.layout.shapes) == [0.0, 1.0]  # corrupt and clean
    two = xr.concat([curve, curve / 2], dim="method").assign_coords(method=["exact", "atp"])
    assert [t.name for t in report.line_plot(two).data] == ["exact", "atp"]
    with pytest.raises(ValueError, match="one dimension for x"):
        report.line_plot(xr.DataArray(np.zeros((2, 2, 2)), dims=["a", "b", "c"]))


def test_report_is_one_self_contained_page(tmp_path):
    results = tiny_results()
    extra = report.Section(
        "Circuit", figures=[report.line_plot(pareto_curve())], note="faithfulness 0.97"
    )
    path = report.render_report(
        {"residual stream": results["resid_pre"], "heads": results["head"], "circuit": extra},
        tmp_path / "sub" / "report.html",
    )
    page = path.read_text()
    assert "plotly.js v" in page and not re.search(
        r"<script[^>]+src=", page
    )  # plotly.js inlined, nothing fetched
    assert page.count("class='figure'") == 3 and page.count("<section") == 3
    assert "faithfulness 0.97" in page and ">Circuit</h2>" in page
    head = results["head"]
    assert f"{head.attrs['baseline_clean']['logit_diff']:.6g}" in page
    assert f"{head.attrs['self_checks']['noop_patch_error']:.6g}" in page
    assert ">tiny-llama<" in page and ">batched<" in page and ">transformers<" in page


def test_self_checks_are_judged_against_the_bound_the_sweep_used(tmp_path):
    head = tiny_results()["head"].copy()
    assert head.attrs["self_check_tolerance"] == 1e-3  # float32
    head.attrs["self_checks"] = {"noop_patch_error": 0.0, "full_patch_error": 0.01}
    page = report.render_report(head, tmp_path / "float32.html").read_text()
    assert "over tolerance" in page
    head.attrs["self_check_tolerance"] = 3e-2  # what a bfloat16 sweep is held to
    page = report.render_report(head, tmp_path / "bfloat16.html").read_text()
    assert "over tolerance" not in page and "fails above 0.03" in page


def test_report_round_trips_through_save(tmp_path):
    result = tiny_results()["corruptions"]
    loaded = ap.load(ap.save(result, tmp_path / "r.nc"))
    saved_page = report.render_report(loaded, tmp_path / "loaded.html").read_text()
    # plotly writes the figure as JSON, with "·" escaped or not depending on its JSON encoder.
    assert "corruption rolled · noise" in saved_page.replace("\\u00b7", "·")
    direct = report.show(result)
    again = report.show(loaded)
    for a, b in zip(direct.data, again.data):
        np.testing.assert_array_equal(a.z, b.z)


def test_report_rejects_what_it_cannot_draw(tmp_path):
    with pytest.raises(ValueError, match="one dimension for x"):
        report.render_report(xr.DataArray(np.zeros((2, 2)), dims=["a", "b"]), tmp_path / "x.html")
    with pytest.raises(TypeError, match=r"report.Section"):
        report.render_report(["not a result"], tmp_path / "x.html")


def test_pngs_are_written_per_result(tmp_path):
    results = tiny_results()
    paths = report.render_pngs(
        [results["resid_pre"], results["head"], results["head"], pareto_curve()], tmp_path / "png"
    )
    assert [p.name for p in paths] == [
        "resid_pre_denoise_noise_norm_logit_diff.png",
        "head_denoise_norm_logit_diff.png",
        "head_denoise_2_norm_logit_diff.png",
        "norm_logit_diff.png",
    ]
    for path in paths:
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and path.stat().st_size > 5_000
    figure = report.png.draw(results["resid_pre"])
    assert [ax.get_title().split(":")[0] for ax in figure.axes[:2]] == ["denoise", "noise"]
    assert (
        figure.axes[0].get_xticklabels()[0].get_text() == results["resid_pre"].clean_token.values[0]
    )

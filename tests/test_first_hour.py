"""What a researcher's first hour with edge circuits and intervals tripped on, fixed in the library:
answers without their leading space, intervals and provenance of edge circuits, error messages
that point the right way, numbers that do not mislead, and one-line reprs."""

from __future__ import annotations

import json
import logging
import pickle

import numpy as np
import pytest
import torch
import xarray as xr

import actpatch as ap
from actpatch import graph, stats
from actpatch.graph import EdgeError, Graph
from tiny import tiny_pairs, tiny_task
from word_tokenizer import gpt2_style_model

PROMPT = "When John and Mary went to the store, John gave a drink to"
CORRUPT = "When Alice and Bob went to the store, Carol gave a drink to"


@pytest.fixture(scope="module")
def words():
    return gpt2_style_model(extra=("she", "he", "The", "number", "is"))


@pytest.fixture(scope="module")
def tiny():
    return tiny_task("gpt2", batch=6)


# --- 1. answers without their leading space -----------------------------------------------------


def test_an_answer_without_its_leading_space_is_refused_with_the_fix(words):
    with pytest.raises(
        ap.PairsError, match=r"prompt 0: answer 'she' has no leading space.*write ' she'"
    ):
        ap.PromptPairs.from_strings(words, [PROMPT], [CORRUPT], ["she"], [" he"])
    with pytest.raises(
        ap.PairsError, match=r"prompt 1: wrong answer 'he' has no leading space.*write ' he'"
    ):
        ap.PromptPairs.from_strings(
            words, [PROMPT, PROMPT], [CORRUPT, CORRUPT], [" she", " she"], [" he", "he"]
        )
    with pytest.raises(ap.PairsError, match=r"prompt 0: answer 'Mary' has no leading space"):
        ap.PromptPairs.groups_from_strings(words, [PROMPT], [CORRUPT], ["Mary"], [" John"])


def test_answers_meant_without_a_space_still_build(words):
    # Digits after digits (greater-than's years), a word after a newline, a prompt ending in space.
    pairs = ap.PromptPairs.from_strings(
        words, ["The number is 17"], ["The number is 01"], ["32"], ["01"]
    )
    assert len(pairs) == 1
    assert (
        len(
            ap.PromptPairs.from_strings(
                words, ["The number is\n"], ["The number is\n"], ["she"], ["he"]
            )
        )
        == 1
    )
    assert (
        len(ap.PromptPairs.from_strings(words, [PROMPT + " "], [CORRUPT + " "], ["Mary"], ["John"]))
        == 1
    )
    assert len(ap.tasks.greater_than(words, n=4)) == 4 and len(ap.tasks.ioi(words, n=4)) == 4


def test_a_file_row_without_the_leading_space_names_row_line_and_field(words, tmp_path):
    path = tmp_path / "pronouns.jsonl"
    good = {"clean": PROMPT, "corrupt": CORRUPT, "answer": " Mary", "wrong": " John"}
    path.write_text(json.dumps(good) + "\n\n" + json.dumps({**good, "wrong": "John"}) + "\n")
    with pytest.raises(
        ap.PairsError,
        match=r"pronouns\.jsonl, row 2 \(line 3\), field 'wrong': 'John' has no "
        r"leading space.*write ' John'",
    ):
        ap.tasks.from_file(words, path)


# --- 2. uncertainty outputs that mislead at a glance ----------------------------------------------


def _rows(values: np.ndarray) -> xr.DataArray:
    """A per-prompt sweep of one site whose logit differences are `values` (clean 1, corrupt 0)."""
    n = len(values)
    data = np.zeros((len(ap.metrics.METRICS), 1, n))
    data[ap.metrics.METRICS.index("logit_diff"), 0] = values
    data[ap.metrics.METRICS.index("norm_logit_diff"), 0] = values
    result = xr.DataArray(
        data,
        dims=["metric", "layer", "batch"],
        coords={"metric": list(ap.metrics.METRICS), "layer": [0]},
        name="patching_effect",
    )
    result.attrs.update(
        direction="denoise",
        per_prompt_baseline_logit_diff={"clean": [1.0] * n, "corrupt": [0.0] * n},
        baseline_clean={"norm_logit_diff": 1.0, "logit_diff": 1.0},
        baseline_corrupt={"norm_logit_diff": 0.0, "logit_diff": 0.0},
    )
    return result


def test_enough_prompts_gives_no_number_when_widths_do_not_shrink_like_one_over_root_n():
    # One prompt far from the others: sub-samples that miss it are narrow, those that hold it wide,
    # so the widths do not follow k/√n and no count can be read off the fit.
    values = np.r_[np.full(63, 0.5), 40.0]
    with pytest.warns(UserWarning, match="do not shrink like"):
        budget = stats.enough_prompts(
            _rows(values), metric="logit_diff", width=0.1, ci=ap.Bootstrap(n_boot=300)
        )
    assert (budget.sites["misfit"] > 0.25).any()
    assert budget.needed is None and "1/√n" in budget.reason
    assert budget.sites["needed"].isna().all()
    text = repr(budget)
    assert "\n" not in text and "needed=None" in text and len(text) < 300


def test_enough_prompts_gives_its_number_when_the_fit_holds():
    rng = np.random.default_rng(0)
    budget = stats.enough_prompts(
        _rows(rng.normal(0.5, 1.0, 200)),
        metric="logit_diff",
        width=0.1,
        ci=ap.Bootstrap(n_boot=300),
    )
    assert isinstance(budget.needed, int) and budget.needed > 200 and budget.reason == ""
    assert repr(budget).startswith(f"EnoughPrompts(needed={budget.needed}")


def test_circuit_stability_says_its_cost_up_front_and_shows_progress(tiny, caplog, capsys):
    model, pairs = tiny
    sweep = ap.sweep(model, pairs, "head", positions="all", per_prompt=True, check_baseline=False)
    with caplog.at_level(logging.INFO, logger="actpatch.circuits.stability"):
        ap.circuits.circuit_stability(
            model, pairs, sweep, resamples=2, sizes=[0, 1, 2], progress=True
        )
    assert (
        "3 circuit searches (1 on all prompts, 2 resamples)" in caplog.text
        and "3 sizes" in caplog.text
    )
    assert "circuit searches" in capsys.readouterr().err  # the bar, on stderr


def test_edge_stability_says_its_cost_up_front_and_shows_progress(tiny, caplog, capsys):
    model, pairs = tiny
    with caplog.at_level(logging.INFO, logger="actpatch.graph.stability"):
        graph.edge_stability(
            model,
            pairs,
            method="eap",
            resamples=2,
            others=[pairs[:3]],
            check_baseline=False,
            progress=True,
        )
    assert "4 edge scorings (1 on all prompts, 2 resamples, 1 other prompt set)" in caplog.text
    assert "edge circuits" in capsys.readouterr().err


def test_compare_gives_raw_and_adjusted_p_values():
    rng = np.random.default_rng(1)
    a = _rows(rng.normal(0.5, 0.1, 40))
    b = a.copy(data=a.values - 0.02)
    table = stats.compare(a, b, metric="logit_diff", ci=ap.Bootstrap(n_boot=200))
    assert {"p", "p_adjusted"} <= set(table.columns)
    assert (table["p_adjusted"] >= table["p"]).all() and list(table["flagged"]) == list(
        table["p_adjusted"] <= 0.05
    )


# --- 3. edge circuits: intervals ------------------------------------------------------------------


def test_graph_evaluate_takes_ci_as_node_circuits_do(tiny):
    model, pairs = tiny
    circuit = graph.top_edges(
        graph.edge_scores(model, pairs, "eap", check_baseline=False), percent=20
    )
    plain = graph.evaluate(model, pairs, circuit, check_baseline=False)
    bounded = graph.evaluate(
        model, pairs, circuit, check_baseline=False, ci=ap.Bootstrap(0.9, n_boot=200, seed=3)
    )
    assert list(bounded["stat"].values) == ["value", "lo", "hi"]
    xr.testing.assert_allclose(bounded.sel(stat="value", drop=True), plain)
    assert bool((bounded.sel(stat="lo") <= bounded.sel(stat="hi")).all())
    assert not bool(bounded.sel(stat="lo").isnull().any())  # every metric bounded
    assert bounded.attrs["interval"]["n_boot"] == 200 and bounded.attrs["interval"]["seed"] == 3
    with pytest.raises(ValueError, match="ci is the interval's coverage"):
        graph.evaluate(model, pairs, circuit, check_baseline=False, ci=95)


def test_faithfulness_curve_takes_ci_and_bounds_every_metric(tiny):
    model, pairs = tiny
    scores = graph.edge_scores(model, pairs, "eap", check_baseline=False)
    plain = graph.faithfulness_curve(
        model, pairs, scores, percents=[10, 50, 100], check_baseline=False
    )
    bounded = graph.faithfulness_curve(
        model,
        pairs,
        scores,
        percents=[10, 50, 100],
        check_baseline=False,
        ci=ap.Bootstrap(0.9, n_boot=200, seed=1),
    )
    np.testing.assert_allclose(bounded.sel(stat="value").values, plain.values)
    assert not bool(bounded.sel(stat=["lo", "hi"]).isnull().any())  # prob, kl, accuracy too
    # f's bounds: those curve_intervals draws from the saved per-prompt numbers, same resamples
    saved = graph.curve_intervals(plain, ap.Bootstrap(0.9, n_boot=200, seed=1))
    np.testing.assert_allclose(
        bounded.sel(metric="faithfulness").values, saved.sel(metric="faithfulness").values
    )
    assert bounded.attrs["cpr_lo"] == pytest.approx(saved.attrs["cpr_lo"])


# --- 4. provenance and reprs ----------------------------------------------------------------------

PROVENANCE = (
    "analysis",
    "model",
    "weights_fingerprint",
    "task",
    "seed",
    "corruption",
    "clean_prompts",
    "versions",
)


def test_edge_results_carry_provenance_with_only_the_options_they_used(tiny):
    model, pairs = tiny
    scores = graph.edge_scores(model, pairs, "eap", check_baseline=False)
    curve = graph.faithfulness_curve(model, pairs, scores, percents=[50, 100], check_baseline=False)
    measured = graph.evaluate(
        model, pairs, graph.top_edges(scores, percent=50), check_baseline=False
    )
    for attrs, analysis in (
        (scores.attrs, "edge_scores"),
        (curve.attrs, "faithfulness_curve"),
        (measured.attrs, "graph.evaluate"),
    ):
        assert set(PROVENANCE) <= set(attrs) and attrs["analysis"] == analysis
        assert attrs["weights_fingerprint"] == ap.results.weights_fingerprint(model)
        assert not {"site", "direction", "positions", "graddrop"} & set(attrs)
    assert "steps" not in scores.attrs or scores.attrs["steps"] is None  # eap interpolates nothing
    assert curve.attrs["method"] == "eap" and curve.attrs["percents"] == [50.0, 100.0]
    ig = graph.edge_scores(model, pairs, "eap-ig-inputs", steps=2, check_baseline=False)
    assert ig.attrs["steps"] == 2 and ig.attrs["method"] == "eap-ig-inputs"


def test_a_graph_prints_in_one_line_with_its_sizes():
    text = repr(Graph(30, 9, 576, False))
    assert (
        text == "Graph(30 layers × 9 heads, d_model 576: 301 senders, 841 receivers, 123,211 edges)"
    )


def test_a_ci_sweep_prints_a_short_summary_with_its_strongest_cells(tiny):
    model, pairs = tiny
    result = ap.sweep(model, pairs, "head", ci=0.9, check_baseline=False, progress=False)
    text = str(result)
    assert text == repr(result) and len(text.splitlines()) <= 12
    assert "array(" not in text and "[[" not in text  # xarray's view lists every number
    head, sizes = text.splitlines()[:2]
    assert "sweep" in head and "site=head" in head and "direction=denoise" in head
    assert "90 % intervals (1000 resamples)" in head
    assert sizes.strip() == "metric 6 × layer 2 × head 4 × stat 3"
    assert "metrics: " + ", ".join(ap.METRICS) in text
    # the first cell listed is the largest effect on the logit difference, with its interval
    diff = result.sel(metric="logit_diff")
    effect = diff.sel(stat="value") - result.attrs["baseline_corrupt"]["logit_diff"]
    layer, head_index = np.unravel_index(int(np.abs(effect.values).argmax()), effect.shape)
    lo, hi = (float(diff.sel(stat=s)[layer, head_index]) for s in ("lo", "hi"))
    first = next(line for line in text.splitlines() if line.startswith("    "))
    assert first.split()[:2] == [f"head[layer={layer},", f"head={head_index}]"]
    assert f"[{lo:.4g}, {hi:.4g}]" in first


def test_every_analysis_result_is_a_dataarray_that_prints_short_and_stays_one(tiny, tmp_path):
    model, pairs = tiny
    sweep = ap.sweep(model, pairs, "head", check_baseline=False, progress=False)
    circuit = [ap.Site("head", 1, head=0)]
    made = {
        "sweep": sweep,
        "attribute": ap.attribute(model, pairs, "head", check_baseline=False, progress=False),
        "evaluate_circuit": ap.evaluate_circuit(model, pairs, circuit, ci=0.9),
        "pareto_frontier": ap.pareto_frontier(model, pairs, sweep, sizes=[0, 2]),
        "intervals": stats.intervals(
            ap.sweep(model, pairs, "head", per_prompt=True, check_baseline=False, progress=False)
        ),
    }
    for analysis, result in made.items():
        assert isinstance(result, xr.DataArray) and type(result) is ap.Result, analysis
        assert str(result).startswith(f"<actpatch.Result {result.name}: ")
        assert "<xarray" in result._repr_html_() or "xr-" in result._repr_html_()  # notebooks
    assert "norm_logit_diff" in str(made["evaluate_circuit"]).splitlines()[4]  # every metric
    # xarray's operations keep the type where xarray keeps it, and the numbers everywhere
    for derived in (
        sweep.sel(metric="norm_logit_diff"),
        sweep.isel(layer=0),
        sweep * 2 - sweep,
        sweep.mean("head"),
        xr.concat([sweep, sweep], "copy"),
        pickle.loads(pickle.dumps(sweep)),
    ):
        assert type(derived) is ap.Result
    plain = sweep.where(sweep > 0)  # xarray builds some results as plain DataArrays
    np.testing.assert_array_equal(plain.values, np.where(sweep > 0, sweep, np.nan))
    assert repr(sweep.mean(keep_attrs=False)).startswith("<xarray.Result")  # xarray view
    assert type(xr.DataArray(sweep)) is xr.DataArray
    back = ap.load(ap.save(made["evaluate_circuit"], tmp_path / "circuit.nc"))
    assert type(back) is ap.Result
    xr.testing.assert_identical(back, made["evaluate_circuit"])


def test_edge_gradient_bars_stay_off_a_redirected_stream(tiny, capsys):
    model, pairs = tiny
    graph.edge_scores(model, pairs, "eap-ig-activations", steps=4, chunk=1, check_baseline=False)
    assert "edge gradients" not in capsys.readouterr().err  # pytest's stderr is no terminal


# --- 5. error messages that point the right way ---------------------------------------------------


@pytest.mark.parametrize(
    "edge, message",
    [
        ("a0.h12->m0", r"'a0\.h12' is not a sender.*9 heads per layer \(h0–h8\)"),
        ("a0.h0->m0<q>", r"'m0<q>' is not a receiver.*an MLP has no <q>: write m0"),
        ("a31.h0->logits", r"30 layers \(0–29\)"),
        ("a0.h0<q>->m1", r"a head sends its output.*write a0\.h0"),
        ("a0.h0->a1.h0", r"write a1\.h0<q>, <k> or <v>"),
    ],
)
def test_edge_names_of_the_wrong_shape_say_what_was_meant(edge, message):
    with pytest.raises(EdgeError, match=message):
        Graph(30, 9, 576, False).edge(edge)


def test_a_named_position_for_the_wrong_number_of_prompts_says_how_many_it_got():
    pairs = tiny_pairs(batch=2)
    with pytest.raises(
        ap.PairsError, match=r"'IO' has 1 index for 2 prompts: give one index in 0\.\.5 per prompt"
    ):
        ap.PromptPairs(
            pairs.clean,
            pairs.corrupt,
            pairs.answers,
            pairs.wrong,
            positions={"IO": torch.tensor([3])},
        )
    with pytest.raises(ap.PairsError, match=r"'IO' is 9 for prompt 1, outside its 6 tokens"):
        ap.PromptPairs(
            pairs.clean,
            pairs.corrupt,
            pairs.answers,
            pairs.wrong,
            positions={"IO": torch.tensor([3, 9])},
        )


@pytest.mark.parametrize(
    "name, content, message",
    [
        (
            "model.gguf",
            b"<html>not found</html>",
            r"model\.gguf is named \.gguf but is not a GGUF file.*b'<htm'",
        ),
        (
            "model.safetensors",
            b"\x00" * 3,
            r"model\.safetensors is named \.safetensors but is not a safetensors file",
        ),
        ("model.safetensors", (10**9).to_bytes(8, "little") + b"{}", r"not a safetensors file"),
    ],
)
def test_a_weights_file_whose_bytes_are_another_format_is_refused_by_name(
    tmp_path, name, content, message
):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(ap.CorruptCheckpoint, match=message):
        ap.load_model(tmp_path / name)


def test_a_folder_with_a_damaged_safetensors_file_is_refused_before_transformers_reads_it(
    tmp_path,
):
    model = gpt2_style_model()
    model.hf.save_pretrained(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"Not Found")
    with pytest.raises(
        ap.CorruptCheckpoint, match=r"model\.safetensors is named \.safetensors but is not"
    ):
        ap.load_model(tmp_path)


# --- 2. faded cells recede; 3. the circuit picture reads ------------------------------------------


def test_faded_cells_are_drawn_towards_the_background():
    from actpatch.report import figures, png

    model, pairs = tiny_task("llama", batch=6)
    bounded = ap.sweep(
        model, pairs, "resid_pre", ci=ap.Bootstrap(0.9, n_boot=50), check_baseline=False
    )
    figure = ap.report.show(bounded)
    fades = [t for t in figure.data if t.name == figures.FADED_NAME]
    assert fades and figure.layout.plot_bgcolor == figures.BACKGROUND
    for fade in fades:  # an opaque colour of the background at a trace opacity: no rgba scale
        assert {colour for _, colour in fade.colorscale} == {figures.BACKGROUND}
        assert fade.opacity == figures.FADE_OPACITY
    assert png.FADE[:3] == png.BACKGROUND


def test_the_circuit_picture_draws_a_budget_of_edges_with_labels_and_a_legend():
    from actpatch.report import edges as picture

    g = Graph(4, 4, 16, False)
    torch.manual_seed(0)
    scores = graph.EdgeScores(
        g, torch.randn(g.exists.shape, dtype=torch.float64) * g.exists, "hand"
    )
    circuit = g.exists.clone()  # every edge: far more than the picture should draw
    figure = ap.report.circuit_plot(scores, circuit)
    midpoints, nodes = figure.data[-2], figure.data[-1]
    assert len(midpoints.x) == picture.DRAWN_EDGES < int(circuit.sum())
    labelled = [text for text in nodes.text if text]
    assert 0 < len(labelled) <= picture.LABELLED_NODES and "input" not in labelled
    top_sender, top_receiver = max(
        circuit.nonzero().tolist(), key=lambda sr: abs(float(scores.scores[sr[0], sr[1]]))
    )
    ends = {g.senders[top_sender], g.receiver_node(top_receiver)} - {"input", "logits"}
    assert ends <= set(labelled)  # the strongest edge's nodes are named
    legend = [t.name for t in figure.data if t.showlegend]
    assert "node in the circuit" in legend and "node not in the circuit" in legend
    every = ap.report.circuit_plot(scores, circuit, max_edges=None)
    assert len(every.data[-2].x) == int(circuit.sum())
    partial = ap.report.circuit_plot(scores, g.node_circuit(["input", "a0.h0", "logits"]))
    hollow = dict(zip(g.nodes, partial.data[-1].marker.color))
    assert hollow["a1.h1"] == "white" and hollow["a0.h0"] == "#333"

"""Choosing circuits (top-n, percent, pruning), faithfulness curves with CPR and CMD, and the
EAP-IG/MIB JSON file format."""

import json

import numpy as np
import pytest
import torch

from actpatch import hooks, metrics
from actpatch.graph import (
    EdgeError,
    EdgeRuns,
    EdgeScores,
    Graph,
    GraphFileError,
    cpr_cmd,
    edge_scores,
    faithfulness_curve,
    grow_circuit,
    load_graph,
    nodes_in_circuit,
    prune_circuit,
    save_graph,
    top_edges,
)
from actpatch.stats.bootstrap import Bootstrap
from tiny import tiny_model, tiny_task


def hand_scores(graph, values):
    scores = torch.zeros(graph.exists.shape, dtype=torch.float64)
    for name, value in values.items():
        scores[graph.edge(name)] = value
    return EdgeScores(graph, scores, "hand")


@pytest.fixture(scope="module")
def scored():
    model, pairs = tiny_task("gpt2")
    return model, pairs, edge_scores(model, pairs, "eap-ig-inputs", steps=3)


# --- choosing ---------------------------------------------------------------------------------


def test_top_n_ranks_by_absolute_or_signed_score():
    graph = Graph(2, 4, 32, False)
    scores = hand_scores(graph, {"input->a0.h0<q>": 3.0, "a0.h0->logits": -5.0, "m1->logits": 1.0})
    assert set(graph.names(top_edges(scores, 2, prune=False))) == {
        "a0.h0->logits",
        "input->a0.h0<q>",
    }
    assert set(graph.names(top_edges(scores, 2, absolute=False, prune=False))) == {
        "input->a0.h0<q>",
        "m1->logits",
    }
    assert int(top_edges(scores, percent=100, prune=False).sum()) == graph.n_edges
    assert int(top_edges(scores, percent=10, prune=False).sum()) == int(
        0.1 * graph.n_edges
    )  # MIB's ⌊p·n⌋


def test_pruning_keeps_only_paths_from_input_to_logits():
    graph = Graph(2, 4, 32, False)
    circuit = graph.circuit(
        [
            "input->a0.h0<q>",
            "a0.h0->logits",  # a path
            "a0.h1->m0",
            "m0->logits",  # m0 reached from nothing: a0.h1 has no input edge
            "input->a1.h2<k>",
        ]
    )  # a1.h2 leads nowhere
    assert set(graph.names(prune_circuit(graph, circuit))) == {"input->a0.h0<q>", "a0.h0->logits"}
    assert nodes_in_circuit(graph, prune_circuit(graph, circuit)) == {
        name: name in ("input", "a0.h0", "logits") for name in graph.nodes
    }


@pytest.mark.parametrize("family", ["gpt2", "pythia_parallel", "mistral"])
def test_pruned_edges_change_nothing_with_corrupt_values(family):
    model, pairs = tiny_task(family)
    runs = EdgeRuns.prepare(model, pairs)
    torch.manual_seed(1)
    circuit = runs.graph.exists & (torch.rand(runs.graph.exists.shape) < 0.15)
    pruned = prune_circuit(runs.graph, circuit)
    assert int(pruned.sum()) < int(circuit.sum())
    both = runs.logits(torch.stack([circuit, pruned]))
    torch.testing.assert_close(both[0], both[1], atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    "call, message",
    [
        (dict(percent=0), r"percent must be in \(0, 100\]"),
        (dict(percent=150), r"percent must be in \(0, 100\]"),
        (dict(n=10_000), "n must be a whole number of edges from 0 to 110"),
        (dict(n=3, percent=5), "exactly one of n="),
        (dict(), "exactly one of n="),
    ],
)
def test_bad_sizes_are_refused_with_the_fix(call, message):
    with pytest.raises(EdgeError, match=message):
        top_edges(hand_scores(Graph(2, 4, 32, False), {}), **call)


# --- curves -----------------------------------------------------------------------------------


def test_cpr_and_cmd_of_a_hand_computed_curve():
    # x = 0.1, 0.5, 1: widths 0.4 and 0.5; f = 0, 1, 0.5
    cpr, cmd = cpr_cmd([10, 50, 100], [0.0, 1.0, 0.5])
    assert cpr == pytest.approx(0.4 * 0.5 + 0.5 * 0.75)
    assert cmd == pytest.approx(0.4 * 0.5 + 0.5 * 0.25)
    assert cpr_cmd([10, 100], [1.0, 1.0]) == pytest.approx((0.9, 0.0))


def test_the_faithfulness_curve_ends_at_the_full_model_and_records_every_metric(scored):
    model, pairs, scores = scored
    curve = faithfulness_curve(model, pairs, scores)
    f = curve.sel(metric="faithfulness")
    assert list(curve.coords["percent"].values) == [0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100]
    assert f.sel(percent=100).item() == pytest.approx(1.0, abs=1e-5)
    assert curve.sel(metric="norm_logit_diff", percent=100).item() == pytest.approx(1.0, abs=1e-5)
    assert f.sel(percent=0.1).item() == pytest.approx(
        0.0, abs=1e-5
    )  # ⌊0.001·110⌋ = 0 edges: the corrupt run
    assert {"kl", "prob", "accuracy", "logit_diff"} <= set(curve.coords["metric"].values)
    assert curve.attrs["cpr"] == pytest.approx(cpr_cmd(curve.coords["percent"].values, f.values)[0])
    assert curve.coords["n_edges"].sel(percent=100).item() == scores.graph.n_edges
    assert hooks.attached_hooks(model) == 0


def test_a_curve_under_an_ablation_normalises_by_the_ablated_empty_circuit(scored):
    model, pairs, scores = scored
    curve = faithfulness_curve(
        model, pairs, scores, percents=[50, 100], ablation="mean", check_baseline=False
    )
    assert curve.sel(metric="faithfulness", percent=100).item() == pytest.approx(1.0, abs=1e-5)


# --- files ------------------------------------------------------------------------------------


def test_a_scored_circuit_round_trips_through_eap_ig_json(scored, tmp_path):
    model, _pairs, scores = scored
    circuit = top_edges(scores, percent=10)
    path = save_graph(tmp_path / "graph.json", scores, circuit)
    data = json.loads(path.read_text())
    assert data["cfg"] == {"n_layers": 2, "n_heads": 4, "parallel_attn_mlp": False, "d_model": 32}
    assert data["nodes"]["logits"] == {"in_graph": True} and set(data["nodes"]) == set(
        scores.graph.nodes
    )
    assert set(data["edges"]["input->a0.h0<q>"]) == {"score", "in_graph"}
    loaded, loaded_circuit = load_graph(path, model)
    assert torch.equal(loaded_circuit, circuit)
    torch.testing.assert_close(loaded.scores, scores.scores, atol=0, rtol=0)


def test_a_file_for_another_model_is_refused_by_its_sizes(scored, tmp_path):
    _model, _pairs, scores = scored
    path = save_graph(tmp_path / "graph.json", scores)
    with pytest.raises(
        GraphFileError, match=r"parallel_attn_mlp.*True.*score the edges on this model"
    ):
        load_graph(path, tiny_model("pythia_parallel"))


@pytest.mark.parametrize(
    "text, message",
    [
        ("not json", "is not JSON"),
        ('{"nodes": {}}', "no 'cfg' and 'edges'"),
        (
            '{"cfg": {"n_layers": 2, "n_heads": 4, "parallel_attn_mlp": false, "d_model": 32}, '
            '"edges": {"a1.h0->a0.h0<q>": {"score": 1.0, "in_graph": true}}}',
            "no edge a1.h0->a0.h0<q>",
        ),
        (
            '{"cfg": {"n_layers": 2, "n_heads": 4, "parallel_attn_mlp": false, "d_model": 32}, '
            '"edges": {"input->a0.h0<q>": {"score": 1.0, "in_graph": true}}}',
            "lists 1 edges of the 110",
        ),
    ],
)
def test_malformed_files_are_refused_with_the_reason(tmp_path, text, message):
    path = tmp_path / "graph.json"
    path.write_text(text)
    with pytest.raises(GraphFileError, match=message):
        load_graph(path, tiny_model("gpt2"))


@pytest.mark.parametrize("family, ablation", [("gpt2", None), ("llama", None), ("gemma3", "mean")])
def test_the_fast_curve_is_the_plain_curve(family, ablation):
    model, pairs = tiny_task(family)
    scores = edge_scores(model, pairs, "eap")
    fast = faithfulness_curve(model, pairs, scores, ablation=ablation, check_baseline=False)
    plain = faithfulness_curve(
        model, pairs, scores, ablation=ablation, check_baseline=False, engine="reference"
    )
    np.testing.assert_allclose(fast.values, plain.values, atol=1e-5)
    assert fast.attrs["cpr"] == pytest.approx(plain.attrs["cpr"], abs=1e-5)


# --- greedy growth ------------------------------------------------------------------------------


@pytest.mark.parametrize("family, step", [("gpt2", 1), ("llama", 2)])
def test_a_grown_circuit_is_at_least_as_faithful_as_the_top_edges_of_its_size(family, step):
    model, pairs = tiny_task(family)
    scores = edge_scores(model, pairs, "eap")
    grown = grow_circuit(model, pairs, scores, 6, candidates=30, step=step, check_baseline=False)
    assert (
        int(grown.circuit.sum()) == 6 == len(grown.order) and len(grown.faithfulness) == 6 // step
    )
    runs = EdgeRuns.prepare(model, pairs, check_baseline=False)
    top = top_edges(scores, 6, prune=False)
    empty, full, mine, theirs = (
        float(d)
        for d in mean_logit_diffs(
            runs,
            runs.logits(torch.stack([runs.graph.empty(), runs.graph.full(), grown.circuit, top])),
        )
    )
    assert (mine - empty) / (full - empty) == pytest.approx(grown.faithfulness[-1], abs=1e-5)
    assert mine >= theirs - 1e-6
    assert set(runs.graph.names(grown.circuit)) == set(grown.order)
    assert hooks.attached_hooks(model) == 0


def mean_logit_diffs(runs, logits):
    return [
        metrics.logit_diff(l.double(), runs.pairs.answers, runs.pairs.wrong).mean() for l in logits
    ]


# --- intervals --------------------------------------------------------------------------------


@pytest.mark.parametrize("ablation", [None, "mean"])
def test_curve_intervals_resample_prompts_without_a_forward_and_keep_the_values(
    scored, tmp_path, ablation
):
    from actpatch.graph import curve_intervals
    from actpatch.results import load, save

    model, pairs, scores = scored
    curve = faithfulness_curve(
        model, pairs, scores, percents=[5, 20, 50, 100], ablation=ablation, check_baseline=False
    )
    # no model is given, so no forward can run: the saved curve alone is resampled
    banded = curve_intervals(
        load(save(curve, tmp_path / "curve.nc")), Bootstrap(0.9, n_boot=300, seed=1)
    )
    assert banded.dims == ("percent", "metric", "stat")
    np.testing.assert_allclose(banded.sel(stat="value").values, curve.values, atol=1e-12)
    lo, value, hi = (
        banded.sel(stat=s, metric="faithfulness").values for s in ("lo", "value", "hi")
    )
    assert (lo <= value + 1e-12).all() and (value <= hi + 1e-12).all() and (hi - lo).max() > 1e-3
    assert lo[-1] == pytest.approx(1.0) and hi[-1] == pytest.approx(
        1.0
    )  # every edge: f = 1 in every resample
    assert banded.attrs["cpr_lo"] <= curve.attrs["cpr"] <= banded.attrs["cpr_hi"]
    assert banded.attrs["cmd_lo"] <= curve.attrs["cmd"] <= banded.attrs["cmd_hi"]
    again = curve_intervals(curve, Bootstrap(0.9, n_boot=300, seed=1))
    np.testing.assert_array_equal(again.values, banded.values)  # seeded


def test_curve_intervals_refuse_a_curve_without_per_prompt_numbers(scored):
    from actpatch.graph import curve_intervals

    model, pairs, scores = scored
    curve = faithfulness_curve(model, pairs, scores, percents=[50, 100], check_baseline=False)
    del curve.attrs["prompt_logit_diff"]
    with pytest.raises(ValueError, match="compute it again with faithfulness_curve"):
        curve_intervals(curve)

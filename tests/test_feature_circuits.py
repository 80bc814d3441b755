"""Feature circuits: dictionary latents and error nodes kept, every other node at its off value.

The fast path (every dictionary's patched nodes written as one, many circuits stacked and resumed)
is held against one circuit per forward, one prompt per forward, every latent and error node
patched as its own site. Where the metric is linear in the dictionary's output (a model without
final norm, a dictionary on the last layer), every circuit's f is the sum of its nodes' effects,
so the whole curve is known by hand. The ends are exact: every node kept is the clean run, none
kept (dictionaries on the residual stream) the corrupt run.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import actpatch as ap
from actpatch.bases.dictionary import DictionaryError
from actpatch.circuits import FeatureRuns
from actpatch.stats.bootstrap import NotPerPrompt
from random_dictionaries import random_dictionary
from tiny import FAMILIES, linear_head_model, tiny_pairs, tiny_task, with_answers

ATOL = 1e-5  # float32 logits of O(1-10): a few ulps of the forward, far below any effect


def two_dictionaries(model, activation="relu", n_latents=8):
    """An SAE on layer 0's output and a transcoder on layer 1's MLP: two layers, two kinds."""
    return [
        random_dictionary(
            model, "resid_post", "resid_post", activation, layer=0, n_latents=n_latents
        ),
        random_dictionary(model, "mlp_in", "mlp_out", activation, layer=1, n_latents=n_latents),
    ]


def every_node(dictionaries, seq):
    """Every latent and error node of the dictionaries, one per position."""
    return [
        ap.Site("feature", d.layer, latent=i, basis=d, pos=p)
        for d in dictionaries
        for i in range(d.n_latents)
        for p in range(seq)
    ] + [
        ap.Site("feature_error", d.layer, basis=d, pos=p) for d in dictionaries for p in range(seq)
    ]


def covers(node, d, latent, p, b, pairs):
    """Whether circuit `node` holds dictionary `d`'s `latent` (None: its error) at index p of prompt b."""
    if node.basis is not d or node.latent != latent:
        return False
    if node.pos is None:
        return True
    at = (
        int(pairs.positions[node.pos][b]) if isinstance(node.pos, str) else node.pos % pairs.seq_len
    )
    return at == p


def plain_logits(model, pairs, dictionaries, circuit, direction, ablation=None):
    """The oracle: one circuit, one prompt per forward, each latent and error node outside the
    circuit (inside it, noising) patched as its own site with its off value."""
    nodes = every_node(dictionaries, pairs.seq_len)
    clean = ap.capture(model, pairs.clean_run, nodes)
    off = ap.capture(model, pairs.corrupt_run, nodes) if ablation is None else None
    if ablation == "mean":
        off = {s: v.mean(0, keepdim=True).expand_as(v) for s, v in clean.items()}
    rows = []
    for b in range(len(pairs)):
        patches = {}
        for node in nodes:
            kept = any(covers(c, node.basis, node.latent, node.pos, b, pairs) for c in circuit)
            if kept == (direction == "noise"):
                patches[node] = off[node][b : b + 1]
        one = pairs[[b]]
        with ap.patch(model, patches):
            rows.append(ap.hooks.last_logits(model, one.clean_run))
    return torch.cat(rows)


def some_circuits(dictionaries):
    """Circuits of every shape a node takes: index, named position, every position, error nodes."""
    sae, transcoder = dictionaries
    return [
        [],
        [
            ap.Site("feature", 0, latent=1, basis=sae, pos=5),
            ap.Site("feature", 0, latent=3, basis=sae, pos="X"),
            ap.Site("feature_error", 1, basis=transcoder, pos="END"),
        ],
        [
            ap.Site("feature", 1, latent=2, basis=transcoder),
            ap.Site("feature", 0, latent=0, basis=sae, pos=-2),
            ap.Site("feature_error", 0, basis=sae),
        ],
        [ap.Site("feature", 1, latent=i, basis=transcoder, pos=4) for i in range(6)],
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_stacked_circuits_are_one_circuit_one_prompt_at_a_time_with_each_node_patched_alone(family):
    model, pairs = tiny_task(family)
    dictionaries = two_dictionaries(model, "topk" if family == "gemma3" else "relu")
    circuits = some_circuits(dictionaries)
    runs = FeatureRuns(model, pairs, dictionaries, chunk=3)  # the last chunk ragged
    got = {direction: runs.logits(circuits, direction) for direction in ("denoise", "noise")}
    for direction, found in got.items():
        for circuit, logits in zip(circuits, found):
            want = plain_logits(model, pairs, dictionaries, circuit, direction)
            assert (logits - want).abs().max() <= ATOL, (direction, circuit)
    # Patching something: the empty circuit (every node patched) is far from the clean run.
    assert (got["denoise"][0] - runs.base.clean_logits).abs().max() > 1e-2
    assert ap.attached_hooks(model) == 0


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_a_mean_ablated_circuit_is_its_plain_patches_too(family):
    model, pairs = tiny_task(family)
    dictionaries = two_dictionaries(model)
    circuit = some_circuits(dictionaries)[1]
    runs = FeatureRuns(model, pairs, dictionaries, "mean")
    got = runs.logits([circuit], "denoise")[0]
    want = plain_logits(model, pairs, dictionaries, circuit, "denoise", ablation="mean")
    assert (got - want).abs().max() <= ATOL


@pytest.mark.parametrize("family", ["llama", "pythia_parallel", "gemma3"])
def test_every_node_kept_is_the_clean_run_and_none_kept_the_corrupt_run(family):
    model, pairs = tiny_task(family)
    dictionaries = [
        random_dictionary(model, "resid_post", "resid_post", layer=layer, seed=layer)
        for layer in (0, 1)
    ]
    full = ap.evaluate_feature_circuit(model, pairs, every_node(dictionaries, pairs.seq_len))
    empty = ap.evaluate_feature_circuit(model, pairs, [], dictionaries=dictionaries)
    assert float(full.sel(metric="norm_logit_diff")) == pytest.approx(1, abs=ATOL)
    assert float(full.sel(metric="faithfulness")) == pytest.approx(1, abs=ATOL)
    # Every node of a residual dictionary at its corrupt value is the corrupt residual stream.
    assert float(empty.sel(metric="norm_logit_diff")) == pytest.approx(0, abs=ATOL)
    assert float(empty.sel(metric="faithfulness")) == pytest.approx(0, abs=ATOL)
    # The circuit removed: every node is the empty circuit, none the clean run.
    removed = ap.evaluate_feature_circuit(
        model, pairs, every_node(dictionaries, pairs.seq_len), direction="noise"
    )
    assert float(removed.sel(metric="norm_logit_diff")) == pytest.approx(0, abs=ATOL)


@pytest.fixture(scope="module")
def linear():
    """A model whose logit difference is linear in its last resid_post, with an SAE there: AtP is
    exact, and a circuit's effect is the sum of its nodes' effects."""
    model, pairs = with_answers(linear_head_model("llama"), tiny_pairs())
    last = random_dictionary(model, "resid_post", "resid_post", "jumprelu", layer=1)
    scores = ap.feature_scores(model, pairs, [last])
    return model, pairs, last, scores


def test_where_the_metric_is_linear_the_curve_is_the_sum_of_its_nodes_effects(linear):
    model, pairs, _, scores = linear
    curve = ap.feature_faithfulness_curve(model, pairs, scores, absolute=False)
    effects = dict(zip(map(str, scores.nodes), scores.effects))
    errors_alone = sum(v for k, v in effects.items() if k.startswith("feature_error"))
    # The metric reads the last position only, where the dictionary's nodes add up exactly.
    assert curve.attrs["errors_alone"] == pytest.approx(errors_alone, abs=1e-5)
    for mode in ("kept", "ranked"):
        ranked = scores.ranking(mode, absolute=False)
        sums = np.cumsum([0.0] + [effects[str(s)] for s in ranked])
        f = curve.sel(errors=mode, metric="faithfulness").values
        want = sums[curve.sel(errors=mode)["n_nodes"].values] + (
            errors_alone if mode == "kept" else 0
        )
        np.testing.assert_allclose(f, want, atol=1e-5)
        # The circuit removed leaves the rest: completeness is 1 − f.
        completeness = curve.sel(errors=mode, metric="completeness").values
        np.testing.assert_allclose(completeness, 1 - f, atol=1e-5)
        assert f[-1] == pytest.approx(1, abs=1e-5)
    # Signed ranking, errors kept: partial sums of falling effects stay above their lower end.
    kept = curve.sel(errors="kept", metric="faithfulness").values
    assert (kept >= min(errors_alone, 1.0) - 1e-5).all()
    assert float(curve.sel(errors="kept")["cpr"]) > 0


def test_curve_areas_intervals_and_evaluation_agree(linear):
    model, pairs, last, scores = linear
    runs = FeatureRuns(model, pairs, [last])
    plain = ap.feature_faithfulness_curve(model, pairs, scores, runs=runs)
    banded = ap.feature_faithfulness_curve(
        model, pairs, scores, runs=runs, ci=ap.Bootstrap(0.9, n_boot=200)
    )
    value = banded.sel(stat="value")
    np.testing.assert_allclose(value.values, plain.values, atol=1e-12)
    for mode in ("kept", "ranked"):
        f = plain.sel(errors=mode, metric="faithfulness").values
        assert float(plain.sel(errors=mode)["cpr"]) == pytest.approx(
            ap.graph.cpr_cmd(plain["percent"].values, f)[0]
        )
        one = banded.sel(errors=mode)
        assert float(one["cpr_lo"]) <= float(one["cpr"]) <= float(one["cpr_hi"])
        # Every node kept is the clean run on every resample: f's band is the point 1.
        at_full = one.sel(percent=100, metric=["faithfulness", "completeness"])
        np.testing.assert_allclose(at_full.sel(stat="lo").values, [1, 0], atol=1e-9)
        np.testing.assert_allclose(at_full.sel(stat="hi").values, [1, 0], atol=1e-9)
    # One size's circuit evaluated alone gives the curve's numbers.
    circuit = ap.top_features(scores, percent=20, errors="ranked")
    alone = ap.evaluate_feature_circuit(model, pairs, circuit, runs=runs)
    assert float(alone.sel(metric="faithfulness")) == pytest.approx(
        float(plain.sel(errors="ranked", percent=20, metric="faithfulness")), abs=1e-6
    )
    removed = ap.evaluate_feature_circuit(
        model, pairs, circuit, runs=runs, dictionaries=[last], direction="noise", ci=0.9
    )
    assert float(removed.sel(metric="faithfulness", stat="value")) == pytest.approx(
        float(plain.sel(errors="ranked", percent=20, metric="completeness")), abs=1e-6
    )
    assert plain.attrs["analysis"] == "feature_faithfulness_curve"
    assert plain.attrs["dictionaries"][0]["name"] == last.name


def test_top_features_counts_ranks_and_keeps_the_error_nodes(linear):
    _, _, last, scores = linear
    by_size = np.abs(scores.effects)
    latents = [s for s in scores.ranking("kept") if s.kind == "feature"]
    assert len(latents) == sum(s.kind == "feature" for s in scores.nodes)
    kept = ap.top_features(scores, 3)
    assert kept[:3] == latents[:3]
    assert kept[3:] == [ap.Site("feature_error", last.layer, basis=last)]
    assert (
        ap.top_features(scores, percent=50, errors="ranked")
        == scores.ranking()[: len(scores.nodes) // 2]
    )
    threshold = float(np.sort(by_size)[-4])
    above = ap.top_features(scores, threshold=threshold, errors="ranked")
    assert len(above) == int((by_size >= threshold).sum()) and len(above) >= 4


def test_stability_is_total_where_every_prompt_is_the_same(linear):
    model, pairs, last, scores = linear
    same = pairs[[0, 0, 0]]
    again = ap.feature_scores(model, same, [last])
    table = ap.feature_circuit_stability(again, n=4, resamples=20)
    assert table.attrs["mean_jaccard"] == 1.0 and table.attrs["circuit_size"] == 4
    assert (table["inclusion"] == 1.0).all() and table["in_circuit"].all()
    varied = ap.feature_circuit_stability(scores, n=4, resamples=50)
    assert set(varied.loc[varied["in_circuit"], "node"]) == {
        str(s) for s in ap.top_features(scores, 4) if s.kind == "feature"
    }
    assert 0 <= varied.attrs["mean_jaccard"] <= 1 and varied["inclusion"].between(0, 1).all()


def test_scores_read_exact_sweeps_and_summed_positions_too():
    model, pairs = tiny_task("llama")
    d = random_dictionary(model, "resid_post", "resid_post", layer=0)
    sweep = ap.sweep(model, pairs, "feature", dictionary=d, latents=[0, 1, 2], positions="all")
    error = ap.sweep(model, pairs, "feature_error", dictionary=d, positions="all")
    scores = ap.FeatureScores.from_results([sweep, error], [d])
    assert [s.pos for s in scores.nodes] == [None] * 4
    assert scores.method == "exact" and scores.changes is None
    want = ap.results.effects(
        sweep.attrs, sweep.sel(metric="norm_logit_diff").values.ravel(), "norm_logit_diff"
    )
    np.testing.assert_allclose(scores.effects[:3], want)
    with pytest.raises(NotPerPrompt, match="per_prompt=True"):
        ap.feature_circuit_stability(scores, n=2)


def test_bad_feature_circuits_name_the_fix():
    model, pairs = tiny_task("llama")
    d, other = two_dictionaries(model)
    with pytest.raises(
        ap.SiteError, match=r"not among the circuit's dictionaries.*add it to dictionaries="
    ):
        ap.evaluate_feature_circuit(
            model, pairs, [ap.Site("feature", 1, latent=0, basis=other)], dictionaries=[d]
        )
    with pytest.raises(ap.SiteError, match="latent 99 is out of range"):
        ap.evaluate_feature_circuit(model, pairs, [ap.Site("feature", 0, latent=99, basis=d)])
    with pytest.raises(ap.SiteError, match="needs dictionaries="):
        ap.evaluate_feature_circuit(model, pairs, [])
    twin = random_dictionary(model, "resid_post", "resid_post", layer=0, seed=5)
    twin.name = "twin"
    with pytest.raises(ValueError, match="one dictionary per place it writes"):
        FeatureRuns(model, pairs, [d, twin])
    width = model.dims.d_model + 1
    wide = ap.Dictionary(
        "wide",
        0,
        "resid_post",
        "resid_post",
        W_enc=torch.zeros(width, 4),
        b_enc=torch.zeros(4),
        W_dec=torch.zeros(4, width),
        b_dec=torch.zeros(width),
    )
    with pytest.raises(DictionaryError, match="trained for another model"):
        FeatureRuns(model, pairs, [wide])
    estimate = ap.attribute(model, pairs, "feature_error", dictionary=other)
    with pytest.raises(ValueError, match=r"not among the dictionaries given.*pass it too"):
        ap.FeatureScores.from_results([estimate], [d])
    with pytest.raises(ap.SiteError, match="rank 'feature' and 'feature_error' results"):
        ap.FeatureScores.from_results([ap.sweep(model, pairs, "resid_pre", layers=[0])], [d])
    assert ap.attached_hooks(model) == 0

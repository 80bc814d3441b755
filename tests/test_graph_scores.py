"""Edge scores: exact scores against one-edge-at-a-time evaluation, gradients against finite
differences of the exact evaluation (in float64), and the identities between the methods."""

import math

import pytest
import torch

from actpatch import hooks, metrics
from actpatch.graph import EdgeRuns, edge_scores, verify_edges
from actpatch.graph.verify import spearman
from tiny import FAMILIES, tiny_task

EDGES = [
    "input->a0.h1<q>",
    "input->a0.h2<k>",
    "a0.h3->a1.h0<v>",
    "a0.h0->a1.h3<k>",
    "m0->a1.h1<q>",
    "a0.h2->m0",
    "input->m1",
    "a1.h2->logits",
    "m1->logits",
]


def mean_logit_diff(runs, logits):
    return torch.stack(
        [
            metrics.logit_diff(l.double(), runs.pairs.answers, runs.pairs.wrong).mean()
            for l in logits
        ]
    )


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_exact_scores_are_each_edge_removed_alone(family):
    model, pairs = tiny_task(family)
    scores = edge_scores(model, pairs, "exact", chunk=7)  # ragged last chunk
    runs = EdgeRuns.prepare(model, pairs)
    full = mean_logit_diff(runs, runs.logits(runs.graph.full()[None]))[0]
    for name in EDGES:
        circuit = runs.graph.full()
        circuit[runs.graph.edge(name)] = False
        alone = mean_logit_diff(runs, runs.logits(circuit[None]))[0]
        assert scores[name] == pytest.approx(float(full - alone), abs=1e-5), name
    assert hooks.attached_hooks(model) == 0


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(
    "method, steps, chunk", [("eap", 1, None), ("eap-ig-inputs", 3, 2), ("clean-corrupted", 1, 1)]
)
def test_the_fast_gradient_path_gives_the_plain_paths_scores(family, method, steps, chunk):
    """Gradients split per receiver after one ordinary forward (grouped-query attention on H/KV
    copies, projections run once) equal those of the forward that expands every layer per head;
    `chunk` stacks interpolation steps (ragged) as copies."""
    model, pairs = tiny_task(family)
    plain = edge_scores(
        model, pairs, method, steps=steps, chunk=chunk, engine="reference", check_baseline=False
    ).scores
    fast = edge_scores(model, pairs, method, steps=steps, chunk=chunk, check_baseline=False).scores
    torch.testing.assert_close(fast, plain, atol=1e-5, rtol=1e-5)
    assert hooks.attached_hooks(model) == 0


def test_the_fast_gradient_path_on_one_prompt_under_grouped_query_attention():
    model, pairs = tiny_task("mistral", batch=1)
    plain = edge_scores(model, pairs, "eap", engine="reference", check_baseline=False).scores
    torch.testing.assert_close(
        edge_scores(model, pairs, "eap", check_baseline=False).scores, plain, atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_resumed_exact_scores_are_the_plain_removals_at_under_half_the_work(family):
    """Each removal resumed at its receiver's layer (and after the prompts' common first token)
    gives what its whole forward gives; counted in decoder-layer × token calls, the whole graph
    costs under half of one forward per edge (recordings included)."""
    model, pairs = tiny_task(family)
    plain = edge_scores(model, pairs, "exact", engine="reference", check_baseline=False).scores
    fast = edge_scores(model, pairs, "exact", chunk=7, check_baseline=False)
    torch.testing.assert_close(fast.scores, plain, atol=1e-5, rtol=0)
    cost = fast.attrs["cost"]
    assert cost["naive_forwards"] == fast.graph.n_edges
    assert cost["forward_equivalents"] <= 0.5 * cost["naive_forwards"]
    assert hooks.attached_hooks(model) == 0


# LayerNorm families run wholly in float64; RMSNorm families (LLaMA, Gemma) normalise in float32
# whatever the weights' dtype, so their differences need a wider step (truncation ~ε², rounding ~1e-7/ε).
STEPS = {
    "gpt2": (1e-4, 1e-6),
    "gpt_neox": (1e-4, 1e-6),
    "llama": (3e-3, 1e-4),
    "gemma3": (3e-3, 1e-4),
}


@pytest.mark.parametrize("family", STEPS)
def test_eap_is_the_derivative_of_the_exact_evaluation(family):
    """Weighing one edge 1 ± ε (its sender's delta ∓ε-removed at that receiver only) moves m by
    ±ε·score to first order: a central difference in float64 checks every receiver kind's gradient
    (q, k, v per query head under grouped-query attention, fused projections, MLP, logits)."""
    model, pairs = tiny_task(family, torch.float64)
    scores = edge_scores(model, pairs, "eap", check_baseline=False)
    runs = EdgeRuns.prepare(model, pairs, check_baseline=False)
    eps, atol = STEPS[family]
    for name in EDGES:
        up, down = runs.graph.full().double(), runs.graph.full().double()
        up[runs.graph.edge(name)], down[runs.graph.edge(name)] = 1 + eps, 1 - eps
        m_up, m_down = mean_logit_diff(runs, runs.logits(torch.stack([up, down])))
        assert scores[name] == pytest.approx(
            float(m_up - m_down) / (2 * eps), abs=atol, rel=1e-5
        ), name


def test_the_gradient_methods_agree_where_they_must():
    """One IG step on the inputs is the gradient at the corrupt run, so eap + ig(1) = 2·clean-corrupted;
    one step on the activations interpolates nothing (α = 1), so it is eap."""
    model, pairs = tiny_task("qwen2")
    eap = edge_scores(model, pairs, "eap").scores
    ig_one = edge_scores(model, pairs, "eap-ig-inputs", steps=1).scores
    both = edge_scores(model, pairs, "clean-corrupted").scores
    torch.testing.assert_close(eap + ig_one, 2 * both, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(
        edge_scores(model, pairs, "eap-ig-activations", steps=1).scores, eap, atol=1e-5, rtol=1e-5
    )


def test_integrated_gradients_on_the_inputs_are_complete():
    """The input's edges reach every receiver, so their scores sum to Δinput · ∂m/∂input averaged
    along the path from corrupt to clean input: IG's completeness makes that m(clean) − m(corrupt),
    up to the Riemann sum's O(1/steps)."""
    model, pairs = tiny_task("llama")
    runs = EdgeRuns.prepare(model, pairs)
    gap = float(runs.base.clean_logit_diff.mean() - runs.base.corrupt_logit_diff.mean())
    scores = edge_scores(model, pairs, "eap-ig-inputs", steps=16)
    assert float(scores.scores[scores.graph.sender("input")].sum()) == pytest.approx(gap, rel=0.03)


def test_integrated_gradients_beat_eap_at_estimating_exact_scores():
    model, pairs = tiny_task("gpt2")
    exact = edge_scores(model, pairs, "exact").scores
    error = {
        m: float((edge_scores(model, pairs, m, steps=8).scores - exact).abs().sum())
        for m in ("eap", "eap-ig-inputs")
    }
    assert error["eap-ig-inputs"] < error["eap"]


def test_scores_are_zero_off_the_graph_and_keyed_by_edge_name():
    model, pairs = tiny_task("pythia_parallel")
    scores = edge_scores(model, pairs, "eap")
    assert float(scores.scores[~scores.graph.exists].abs().sum()) == 0
    assert len(scores.as_dict()) == scores.graph.n_edges and "a0.h0->m0" not in scores.as_dict()


@pytest.mark.parametrize("ablation", ["zero", "mean", "resample"])
def test_exact_scores_under_an_ablation_remove_the_edge_towards_ablated_values(ablation):
    model, pairs = tiny_task("llama")
    scores = edge_scores(model, pairs, "exact", ablation=ablation, check_baseline=False)
    runs = EdgeRuns.prepare(model, pairs, ablation=ablation, check_baseline=False)
    circuit = runs.graph.full()
    circuit[runs.graph.edge("m0->logits")] = False
    full, without = mean_logit_diff(runs, runs.logits(torch.stack([runs.graph.full(), circuit])))
    assert scores["m0->logits"] == pytest.approx(float(full - without), abs=1e-5)


@pytest.mark.parametrize(
    "call, message",
    [
        (
            dict(method="atp"),
            "unknown edge-scoring method 'atp'; choose one of: eap, eap-ig-inputs",
        ),
        (dict(method="eap-ig-inputs", steps=0), "steps must be a positive integer"),
        (dict(method="clean-corrupted", ablation="zero"), "takes no ablation"),
        (dict(method="eap", ablation="gaussian"), "ablation must be one of"),
        (dict(method="eap", engine="turbo"), "engine must be one of"),
    ],
)
def test_bad_arguments_are_refused_with_the_fix(call, message):
    model, pairs = tiny_task("gpt2")
    with pytest.raises(ValueError, match=message):
        edge_scores(model, pairs, **call)
    assert hooks.attached_hooks(model) == 0


# --- verification -------------------------------------------------------------------------------


def test_verify_edges_removes_the_top_and_a_sample_exactly():
    model, pairs = tiny_task("llama")
    scores = edge_scores(model, pairs, "eap")
    exact = edge_scores(model, pairs, "exact")
    check = verify_edges(model, pairs, scores, top_k=6, sample=8, seed=3)
    table = check.table
    assert len(table) == 14 and table["in_top_k"].sum() == 6 and table["edge"].is_unique
    top = sorted(scores.as_dict().items(), key=lambda kv: -abs(kv[1]))[:6]
    assert set(table[table["in_top_k"]]["edge"]) == {name for name, _ in top}
    for row in table.itertuples():
        assert row.exact == pytest.approx(exact[row.edge], abs=1e-5)
        assert row.estimate == scores[row.edge]
    assert list(table["error"].abs()) == sorted(table["error"].abs(), reverse=True)  # worst first
    assert check.spearman == pytest.approx(spearman(table["estimate"], table["exact"]))
    assert 0 <= check.top_k_recall <= 1 and check.cost["naive_forwards"] == 14
    assert "worst misestimates" in repr(check)
    assert hooks.attached_hooks(model) == 0


def test_edge_spearman_gives_ties_their_average_rank():
    scipy_stats = pytest.importorskip("scipy.stats")
    a, b = [0.0, 0.0, 1.0, 3.0, 0.0], [2.0, 1.0, 1.0, 5.0, 0.5]
    assert spearman(a, b) == pytest.approx(scipy_stats.spearmanr(a, b).statistic)
    assert math.isnan(spearman([1.0, 1.0], [0.0, 2.0]))


@pytest.mark.parametrize(
    "call, message",
    [
        (dict(top_k=-1), "top_k must be a whole number"),
        (dict(sample=1.5), "sample must be a whole number"),
    ],
)
def test_verify_edges_refuses_bad_sizes(call, message):
    model, pairs = tiny_task("gpt2")
    scores = edge_scores(model, pairs, "eap")
    with pytest.raises(ValueError, match=message):
        verify_edges(model, pairs, scores, **call)


def test_scores_reuse_prepared_runs_and_refuse_runs_of_other_prompts():
    """EAP's own clean pass (clean outputs recorded in its gradient forward) gives the scores of the
    prepared runs' path; runs prepared for other prompts or another ablation are refused."""
    model, pairs = tiny_task("llama")
    runs = EdgeRuns.prepare(model, pairs)
    own = edge_scores(model, pairs, "eap")
    reused = edge_scores(model, pairs, "eap", runs=runs)
    torch.testing.assert_close(own.scores, reused.scores, atol=1e-6, rtol=1e-6)
    assert own.scores.abs().max() > 1e-3
    with pytest.raises(ValueError, match="prepare them with the same model, pairs and ablation"):
        edge_scores(model, pairs[:2], "eap", runs=runs)
    with pytest.raises(ValueError, match="ablation='mean'"):
        edge_scores(model, pairs, "eap", ablation="mean", runs=runs)
    assert hooks.attached_hooks(model) == 0


@pytest.mark.parametrize("method", ["eap", "eap-ig-inputs", "eap-ig-activations"])
def test_gradient_scores_under_no_grad_are_the_scores(method):
    """Notebooks often run under torch.no_grad() (or with grad disabled globally): the scores switch
    gradients on for their own passes."""
    model, pairs = tiny_task("qwen2")
    wanted = edge_scores(model, pairs, method, steps=2).scores
    with torch.no_grad():
        torch.testing.assert_close(
            edge_scores(model, pairs, method, steps=2).scores, wanted, atol=1e-6, rtol=1e-6
        )
        runs = EdgeRuns.prepare(model, pairs)
        torch.testing.assert_close(
            edge_scores(model, pairs, method, steps=2, runs=runs).scores,
            wanted,
            atol=1e-6,
            rtol=1e-6,
        )

"""Every fast path beside its plain one, on every tiny family: attribution, exact verification,
path patching, node circuits and edge circuits, each computed again one patch (or one circuit)
per forward with nothing but `capture`, `patch` and the model's own forward.

Sweeps have their table in tests/test_engines.py (batched against reference), edge scores and
faithfulness curves theirs in tests/test_graph_scores.py and tests/test_graph_curves.py, resumed
backup runs theirs in tests/test_circuits.py. Tolerances are float32's: each says why it is what
it is, and none was tuned to pass."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import actpatch as ap
from actpatch import graph, metrics, results
from actpatch.circuits import components
from tiny import FAMILIES, tiny_task

# Metrics from float32 logits of O(1-10), computed in float64: two exact paths that add the same
# terms in another order differ by float32 rounding of the logits, a few units of 1e-6.
EXACT = {"rtol": 0, "atol": 1e-5}
# A derivative summed over batch × pos × d_model float32 products by two different backward
# graphs (`watch`'s taps, and a scalar's gradient through one patch): rounding grows with the sum.
DERIVATIVE = {"rtol": 1e-4, "atol": 1e-5}


def averaged(logits, base) -> np.ndarray:
    """Every metric of final-position `logits` against the baseline `base`, in METRICS order."""
    values = metrics.averaged(logits, base)
    return np.array([values[m] for m in ap.METRICS])


def plain_baseline(model, pairs):
    """The clean and corrupt runs' logits, as `Model.last_logits` gives them."""
    return ap.Baseline(
        model.last_logits(pairs.clean_run),
        model.last_logits(pairs.corrupt_run),
        pairs.answers,
        pairs.wrong,
    )


def every_component(model) -> list[ap.Site]:
    """Every head and every MLP, whole."""
    heads = [
        ap.Site("head", l, head=h)
        for l in range(model.dims.n_layers)
        for h in range(model.dims.n_heads)
    ]
    return heads + [ap.Site("mlp_out", l) for l in range(model.dims.n_layers)]


def cell(result, site: ap.Site, metric: str) -> float:
    """`result`'s value for `site`, read by its coordinates."""
    where = {"metric": metric, "layer": site.layer}
    for dim in ("head", "kv_head"):
        if dim in result.dims:
            where[dim] = site.head
    if "pos" in result.dims:  # labelled by index, or by text where names and indices mix
        where["pos"] = site.pos if site.pos in result["pos"].values.tolist() else str(site.pos)
    return float(result.sel(where).item())


# --- attribution ----------------------------------------------------------------------------------


def plain_atp(model, pairs, site: ap.Site) -> float:
    """AtP's estimate of denoising `site`, as the definition reads: the corrupt run's mean logit
    difference plus its derivative along the patch from the corrupt value towards the clean one,
    ε ↦ metric(corrupt run with site := corrupt + ε · (clean − corrupt)) at ε = 0."""
    clean = ap.capture(model, pairs.clean_run, [site])[site]
    corrupt = ap.capture(model, pairs.corrupt_run, [site])[site]
    epsilon = torch.zeros((), requires_grad=True)
    with (
        torch.enable_grad(),
        ap.patch(
            model, {site: corrupt + epsilon * (clean - corrupt)}, named_positions=pairs.positions
        ),
    ):
        logits = model.hf(input_ids=pairs.corrupt, use_cache=False).logits[:, -1].float()
        diff = metrics.logit_diff(logits, pairs.answers, pairs.wrong).mean()
        (slope,) = torch.autograd.grad(diff, epsilon)
    return float(diff.detach()) + float(slope)


@pytest.mark.parametrize("kind", ["head", "v", "mlp_out"])  # per head, per KV head, per position
@pytest.mark.parametrize("family", FAMILIES)
def test_attribution_is_the_derivative_of_each_patch_taken_one_at_a_time(family, kind):
    model, pairs = tiny_task(family)
    estimate = ap.attribute(model, pairs, kind, check_baseline=False)
    sites = results.sites(estimate.sel(metric="logit_diff"))
    got = [cell(estimate, s, "logit_diff") for s in sites]
    want = [plain_atp(model, pairs, s) for s in sites]
    np.testing.assert_allclose(got, want, **DERIVATIVE)
    assert np.ptp(want) > 1e-2, "every estimate alike: a comparison that could not tell sites apart"


@pytest.mark.parametrize("family", FAMILIES)
def test_verification_patches_are_the_reference_engines(family):
    model, pairs = tiny_task(family)
    estimate = ap.attribute(model, pairs, "head", direction="noise", check_baseline=False)
    # Exact patches on the batched engine, of the sites verify chose.
    verified = ap.verify(model, pairs, estimate, top_k=3, sample=3)
    reference = ap.sweep(
        model, pairs, "head", direction="noise", engine="reference", check_baseline=False
    )
    want = [cell(reference, ap.Site.parse(s), "norm_logit_diff") for s in verified.table["site"]]
    np.testing.assert_allclose(verified.table["exact"], want, **EXACT)
    assert len(want) == 6


@pytest.mark.parametrize("method, kind", [("atp", "head"), ("ig", "head"), ("atp*", "q")])
def test_attributions_cost_counts_every_pass_it_runs(method, kind, monkeypatch):
    model, pairs = tiny_task("llama")
    forwards, backwards = [], []
    real_backward = torch.Tensor.backward
    monkeypatch.setattr(
        torch.Tensor, "backward", lambda *a, **k: backwards.append(1) or real_backward(*a, **k)
    )
    handle = model.hf.register_forward_pre_hook(lambda module, args: forwards.append(1))
    try:
        estimate = ap.attribute(model, pairs, kind, method=method, steps=3)
    finally:
        handle.remove()
    # A backward computing input gradients only costs about a forward, as the count says it does.
    assert estimate.attrs["cost"]["forward_equivalents"] >= len(forwards) + len(backwards)


# --- path patching --------------------------------------------------------------------------------


def plain_path_patch(
    model, pairs, clean, corrupt, senders: list[ap.Site], receivers: list
) -> torch.Tensor:
    """Denoising along paths as Wang et al. write it, for receivers that do not read one another:
    run 1, the corrupt prompt with the senders at their `clean` values and every other head and
    MLP frozen at its `corrupt` value, records the receivers' inputs (the logits are their own
    input); run 2 patches only those. Final-position logits."""
    frozen = {s: v for s, v in corrupt.items() if s not in receivers}
    frozen.update({s: clean[s] for s in senders})
    with ap.patch(model, frozen):
        if receivers == ["logits"]:
            return model.last_logits(pairs.corrupt_run)
        recorded = ap.capture(model, pairs.corrupt_run, receivers)
    with ap.patch(model, recorded):
        return model.last_logits(pairs.corrupt_run)


RECEIVERS = {  # each set read at one stage of the forward, after every layer-0 sender
    "logits": lambda dims: ["logits"],
    "queries": lambda dims: [ap.Site("q", 1, head=h) for h in range(dims.n_heads)],
    "keys and values": lambda dims: [
        ap.Site(k, 1, head=g) for k in ("k", "v") for g in range(dims.n_kv_heads)
    ],
    "mlp": lambda dims: [ap.Site("mlp_out", 1)],
}


@pytest.mark.parametrize("receivers", RECEIVERS)
@pytest.mark.parametrize("family", FAMILIES)
def test_path_patching_is_the_two_run_algorithm_one_sender_at_a_time(family, receivers):
    model, pairs = tiny_task(family)
    chosen = RECEIVERS[receivers](model.dims)
    swept = {
        kind: ap.sweep_paths(model, pairs, chosen, site=kind, layers=[0])
        for kind in ("head", "mlp_out")
    }
    senders = [ap.Site("head", 0, head=h) for h in range(model.dims.n_heads)] + [
        ap.Site("mlp_out", 0)
    ]
    base = plain_baseline(model, pairs)
    clean, corrupt = (
        ap.capture(model, run, every_component(model))
        for run in (pairs.clean_run, pairs.corrupt_run)
    )
    for sender in senders:
        want = averaged(plain_path_patch(model, pairs, clean, corrupt, [sender], chosen), base)
        got = [cell(swept[sender.kind], sender, m) for m in ap.METRICS]
        np.testing.assert_allclose(got, want, err_msg=str(sender), **EXACT)
    together = ap.patch_paths(model, pairs, senders[1:], chosen)  # three heads and the MLP at once
    np.testing.assert_allclose(
        together.values,
        averaged(plain_path_patch(model, pairs, clean, corrupt, senders[1:], chosen), base),
        **EXACT,
    )
    assert np.ptp(swept["head"].sel(metric="logit_diff").values) > 1e-3, (
        "every head alike: no path moved anything"
    )


# --- node circuits --------------------------------------------------------------------------------

# Each ablation's value of a component outside the circuit, from its clean and corrupt captures:
# the corrupt run's; the mean over prompts, position by position; zero; another prompt's (the
# derangement engine/sources.py draws for 3 prompts).
OFF = {
    None: lambda clean, corrupt: corrupt,
    "mean": lambda clean, corrupt: clean.mean(0, keepdim=True).expand_as(clean),
    "zero": lambda clean, corrupt: torch.zeros_like(clean),
    "resample": lambda clean, corrupt: clean[torch.tensor([2, 0, 1])],
}


def plain_circuit(model, pairs, clean, corrupt, circuit, direction, ablation) -> torch.Tensor:
    """The clean prompt with the components (those `clean` and `corrupt` hold) outside `circuit`
    (denoise) or in it (noise) written at their off values; final-position logits."""
    ablated = [s for s in clean if (s in circuit) == (direction == "noise")]
    with ap.patch(model, {s: OFF[ablation](clean[s], corrupt[s]) for s in ablated}):
        return model.last_logits(pairs.clean_run)


@pytest.mark.parametrize("ablation", OFF)
@pytest.mark.parametrize("family", FAMILIES)
def test_circuits_are_the_clean_run_with_the_rest_ablated_by_hand(family, ablation):
    model, pairs = tiny_task(family)
    universe = components(model)  # the embeddings, every head and every MLP
    ranking = [
        ap.Site("head", 1, head=3),
        ap.Site("mlp_out", 0),
        ap.Site("head", 0, head=1),
        ap.Site("mlp_out", 1),
    ]
    base = plain_baseline(model, pairs)
    clean, corrupt = (
        ap.capture(model, run, universe) for run in (pairs.clean_run, pairs.corrupt_run)
    )
    for direction in ("denoise", "noise"):
        frontier = ap.pareto_frontier(
            model, pairs, ranking, direction=direction, ablation=ablation, components=universe
        )
        for k in range(len(ranking) + 1):
            want = averaged(
                plain_circuit(model, pairs, clean, corrupt, ranking[:k], direction, ablation), base
            )
            np.testing.assert_allclose(
                frontier.sel(size=k).values, want, err_msg=f"{direction}, size {k}", **EXACT
            )
        alone = ap.evaluate_circuit(
            model, pairs, ranking[:2], direction=direction, ablation=ablation, components=universe
        )
        np.testing.assert_allclose(alone.values, frontier.sel(size=2).values, **EXACT)
    assert np.ptp(frontier.sel(metric="logit_diff").values) > 1e-2, (
        "every size alike: nothing was ablated"
    )


# --- edge circuits --------------------------------------------------------------------------------


def edge_circuits(model) -> torch.Tensor:
    """Five circuits (circuit, sender, receiver): every edge, none, two random halves of the edges
    (those from the input kept), and every edge out of one head cut.

    No receiver of the last three loses all its inputs: under zero ablation its input would be
    exactly 0, and the norm in front of it scales float32 rounding by up to 1/sqrt(eps); fast and
    plain agree there to 1e-13 in float64 but only to 1e-4 in float32, which tells neither apart."""
    g = graph.Graph.of(model)
    generator = torch.Generator().manual_seed(0)
    from_input = torch.zeros_like(g.exists)
    from_input[g.sender("input")] = True
    halves = [
        g.exists & (from_input | (torch.rand(g.exists.shape, generator=generator) < 0.5))
        for _ in range(2)
    ]
    cut = g.full()
    cut[g.sender("a0.h1")] = False
    return torch.stack([g.full(), torch.zeros_like(g.exists), *halves, cut])


@pytest.mark.parametrize("ablation", [None, "mean", "zero", "resample"])
@pytest.mark.parametrize("family", FAMILIES)
def test_edge_circuits_are_their_plain_runs_one_circuit_per_forward(family, ablation):
    model, pairs = tiny_task(family)
    circuits = edge_circuits(model)
    runs = graph.EdgeRuns.prepare(model, pairs, ablation=ablation, check_baseline=False)
    # The plain path: attention expanded per head, every position's MLP, one circuit per forward.
    plain = runs.logits(circuits, engine="reference", chunk=1)
    # The fast path: two circuits stacked per forward, the last chunk ragged.
    torch.testing.assert_close(runs.logits(circuits, chunk=2), plain, **EXACT)
    base = plain_baseline(model, pairs)
    for circuit, logits in zip(circuits, plain):
        got = graph.evaluate(model, pairs, circuit, ablation=ablation, check_baseline=False)
        np.testing.assert_allclose(got.values, averaged(logits, base), **EXACT)
    assert (plain[0] - plain[1]).abs().max() > 1e-2, (
        "the full and empty circuits alike: nothing was cut"
    )

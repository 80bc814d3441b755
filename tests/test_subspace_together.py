"""Several subspaces patched together in one forward, and patch_subspace's intervals.

The oracle for "together" is plain hooks patches of fixed values, built site by site in the order
the forward reaches them: each site's x_t is captured with the patches upstream of it in place,
then x_t + U Uᵀ (x_s − x_t) is written there."""

import numpy as np
import pytest
import torch

from actpatch import Bootstrap, Site, capture, hooks, patch
from actpatch.bases import vectors
from actpatch.bases.subspace import BasisError, Subspace
from actpatch.stats import intervals
from actpatch.subspace.patching import patch_subspace
from tiny import FAMILIES, tiny_task

# Where each kind sits inside a layer, in forward order (parallel families run attention and the
# MLP side by side, so their relative order there does not matter).
ORDER = ("resid_pre", "head", "attn_out", "resid_mid", "neuron", "mlp_out", "resid_post")
MIXED = [
    "head[layer=0, head=1, pos=END]",
    "neuron[layer=0, pos=END]",
    "attn_out[layer=1, pos=X]",
    "mlp_out[layer=1]",
    "resid_post[layer=1, pos=END]",
]


def random_basis(d: int, rank: int, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(d, d, generator=generator))[0][:, :rank]


def parts(model, site):
    if site.kind != "neuron":
        return [site]
    return [Site("neuron", site.layer, neuron=i, pos=site.pos) for i in range(model.dims.d_mlp)]


def read_by_hand(model, tokens, site, positions):
    found = capture(model, tokens, parts(model, site), positions=positions)
    if site.kind != "neuron":
        return found[site]
    return torch.stack([found[p] for p in parts(model, site)], -1)


def written(model, site, value):
    if site.kind != "neuron":
        return {site: value}
    return {p: value[..., i] for i, p in enumerate(parts(model, site))}


def together_by_hand(model, pairs, bases):
    """Fixed-value hooks patches, site by site in forward order (denoising)."""
    values = {}
    for basis in sorted(bases, key=lambda b: (b.site.layer, ORDER.index(b.site.kind))):
        x_s = read_by_hand(model, pairs.clean, basis.site, pairs.positions)
        with patch(model, values, positions=pairs.positions):
            x_t = read_by_hand(model, pairs.corrupt, basis.site, pairs.positions)
        values.update(written(model, basis.site, x_t + (x_s - x_t) @ basis.U @ basis.U.T))
    with patch(model, values, positions=pairs.positions):
        return hooks.last_logits(model, pairs.corrupt_run)


def as_metrics(model, pairs, logits):
    """patch_subspace's per-prompt rows for the given patched logits (denoising)."""
    from actpatch import metrics
    from actpatch.metrics import METRICS, Baseline

    baseline = Baseline(
        hooks.last_logits(model, pairs.clean_run),
        hooks.last_logits(model, pairs.corrupt_run),
        pairs.answers,
        pairs.wrong,
    )
    found = metrics.per_prompt(logits, baseline)
    return np.stack([found[m].numpy() for m in METRICS], -1)  # (batch, metric)


def mixed_bases(model, family):
    texts = MIXED + ([] if family == "pythia_parallel" else ["resid_mid[layer=0, pos=END]"])
    sites = [Site.parse(text) for text in texts]
    return [
        Subspace(site, random_basis(vectors.width(model, site), 2, seed=i))
        for i, site in enumerate(sites)
    ]


@pytest.mark.parametrize("family", FAMILIES)
def test_subspaces_patched_together_are_the_plain_patches_site_by_site(family):
    model, pairs = tiny_task(family)
    bases = mixed_bases(model, family)
    got = patch_subspace(model, pairs, bases, per_prompt=True)
    want = as_metrics(model, pairs, together_by_hand(model, pairs, bases))
    np.testing.assert_allclose(got.values, want, atol=1e-5, rtol=0)
    assert got.attrs["site"] == [str(b.site) for b in bases]
    # A shared basis at several layers (layers=) is the list of its copies, and the plain patches.
    line = Subspace(Site("resid_pre", 0, pos="END"), random_basis(32, 3, seed=9))
    shared = patch_subspace(model, pairs, line, layers=[0, 1], per_prompt=True)
    copies = [line.at(layer=0), line.at(layer=1)]
    want = as_metrics(model, pairs, together_by_hand(model, pairs, copies))
    np.testing.assert_allclose(shared.values, want, atol=1e-5, rtol=0)
    # The later patch reads what the earlier one left: it differs from a patch of the unpatched x_t.
    frozen = {}
    for basis in copies:
        x_s, x_t = (
            read_by_hand(model, t, basis.site, pairs.positions)
            for t in (pairs.clean, pairs.corrupt)
        )
        frozen[basis.site] = x_t + (x_s - x_t) @ basis.U @ basis.U.T
    with patch(model, frozen, positions=pairs.positions):
        stale = as_metrics(model, pairs, hooks.last_logits(model, pairs.corrupt_run))
    assert np.abs(stale - shared.values).max() > 1e-3
    assert hooks.attached_hooks(model) == 0


def test_one_site_is_the_interchange_patch_and_gradients_flow():
    """The edit path on one site is the patch of the captured x_t, and U gets a gradient."""
    from actpatch.subspace.patching import interchange, patched_logits

    model, pairs = tiny_task("llama")
    site = Site.parse("neuron[layer=1, pos=END]")
    U = random_basis(64, 2, seed=4).requires_grad_(True)
    run = interchange(model, pairs, site)
    with torch.no_grad():
        want = run.logits(model, run.subspace_value(U))
    basis = Subspace(site, U.detach())
    got = patched_logits(model, pairs.corrupt_run, [basis], [run.source])
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_intervals_hold_the_value_and_each_direction_has_its_own_baseline(family):
    model, pairs = tiny_task(family, batch=6)
    counterfactual = (pairs.answers + 5) % 101
    basis = Subspace("resid_pre[layer=1, pos=END]", random_basis(32, 2, seed=1))
    both = ["denoise", "noise"]
    plain = patch_subspace(model, pairs, basis, direction=both, counterfactual=counterfactual)
    found = patch_subspace(
        model,
        pairs,
        basis,
        direction=both,
        counterfactual=counterfactual,
        ci=Bootstrap(0.9, n_boot=200),
    )
    assert found.dims == ("direction", "metric", "stat")
    np.testing.assert_allclose(found.sel(stat="value").values, plain.values, atol=1e-6)
    lo, hi = found.sel(stat="lo").values, found.sel(stat="hi").values
    assert (lo <= plain.values + 1e-9).all() and (plain.values <= hi + 1e-9).all()
    assert (hi - lo).max() > 0
    assert found.attrs["interval"]["n_boot"] == 200
    # The same resamples as actpatch.stats.intervals on the per-prompt rows of one direction.
    rows = patch_subspace(
        model, pairs, basis, direction="noise", counterfactual=counterfactual, per_prompt=True
    )
    logits = (
        hooks.last_logits(model, pairs.corrupt_run),
        hooks.last_logits(model, pairs.clean_run),
    )
    diffs = [
        (x.gather(1, counterfactual[:, None]) - x.gather(1, pairs.answers[:, None])).squeeze(1)
        for x in logits
    ]
    rows.attrs["per_prompt_baseline_logit_diff"] = {
        "clean": diffs[0].tolist(),
        "corrupt": diffs[1].tolist(),
    }
    by_stats = intervals(rows, ci=Bootstrap(0.9, n_boot=200))
    np.testing.assert_allclose(found.sel(direction="noise").values, by_stats.values, atol=1e-6)
    # A full-rank patch of the last residual is the source run in either direction: exactly 1.
    whole = Subspace("resid_post[layer=1, pos=END]", random_basis(32, 32, seed=2))
    full = patch_subspace(
        model,
        pairs,
        whole,
        direction=both,
        counterfactual=counterfactual,
        ci=Bootstrap(0.9, n_boot=50),
    )
    np.testing.assert_allclose(full.sel(metric="norm_logit_diff").values, 1, atol=1e-4)


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda m, p, b: patch_subspace(m, p, [b, b.at(pos="END")]),
            "given two subspaces; join them",
        ),
        (lambda m, p, b: patch_subspace(m, p, [b, b], layers=[0]), "layers= places one basis"),
        (lambda m, p, b: patch_subspace(m, p, []), "non-empty list"),
        (lambda m, p, b: patch_subspace(m, p, b, layers=[]), "names no layer"),
        (
            lambda m, p, b: patch_subspace(
                m, p, [b, Subspace("head[layer=0, head=0]", random_basis(32, 1, 0))]
            ),
            "32 rows but .* 8 wide",
        ),
        (lambda m, p, b: patch_subspace(m, p, b, per_prompt=True, ci=0.9), "drop per_prompt"),
        (lambda m, p, b: patch_subspace(m, p, b, ci=1.5), "between 0 and 1"),
        (lambda m, p, b: patch_subspace(m, p, b, layers=[7]), "layer"),
    ],
)
def test_bad_inputs(call, message):
    model, pairs = tiny_task("llama")
    basis = Subspace("resid_pre[layer=1, pos=END]", random_basis(32, 2, 0))
    with pytest.raises((BasisError, ValueError, TypeError), match=message):
        call(model, pairs, basis)
    assert hooks.attached_hooks(model) == 0

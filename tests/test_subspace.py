"""A fixed subspace patch is x_t + U Uᵀ (x_s − x_t) at its site on every family; bad bases fail."""

import warnings

import pytest
import torch

from actpatch import PairsError, Site, capture, hooks, patch
from actpatch.bases import Basis, vectors
from actpatch.bases.subspace import BasisError, Subspace
from actpatch.subspace.patching import interchange, patch_subspace
from tiny import FAMILIES, tiny_task

SITES = [
    "resid_pre[layer=1, pos=END]",
    "resid_post[layer=0]",
    "attn_out[layer=0, pos=X]",
    "mlp_out[layer=0, pos=END]",
    "head[layer=1, head=2, pos=END]",
    "neuron[layer=0, pos=END]",
]


def random_basis(d: int, rank: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.linalg.qr(torch.randn(d, d, generator=generator))[0][:, :rank]


def by_hand(model, pairs, site, U):
    """The plain hooks patch of x_t + U Uᵀ (x_s − x_t), written out without the subspace code."""
    parts = (
        [site]
        if site.kind != "neuron"
        else [Site("neuron", site.layer, neuron=i, pos=site.pos) for i in range(model.dims.d_mlp)]
    )
    clean = capture(model, pairs.clean, parts, named_positions=pairs.positions)
    corrupt = capture(model, pairs.corrupt, parts, named_positions=pairs.positions)
    stack = (
        (lambda c: c[site])
        if site.kind != "neuron"
        else (lambda c: torch.stack([c[p] for p in parts], -1))
    )
    x_s, x_t = stack(clean), stack(corrupt)
    value = x_t + (x_s - x_t) @ U @ U.T
    values = (
        {site: value} if site.kind != "neuron" else {p: value[..., i] for i, p in enumerate(parts)}
    )
    with patch(model, values, named_positions=pairs.positions):
        return model.last_logits(pairs.corrupt)


def subspace_logits(model, pairs, basis):
    run = interchange(model, pairs, basis.site)
    with torch.no_grad():
        return run.logits(model, run.subspace_value(basis.U))


@pytest.mark.parametrize("family", FAMILIES)
def test_subspace_patch_is_the_plain_patch_of_its_formula(family):
    model, pairs = tiny_task(family)
    for text in SITES:
        site = Site.parse(text)
        U = random_basis(vectors.width(model, site), 3)
        got = subspace_logits(model, pairs, Subspace(site, U))
        torch.testing.assert_close(got, by_hand(model, pairs, site, U), atol=1e-5, rtol=0, msg=text)
        assert hooks.attached_hooks(model) == 0


@pytest.mark.parametrize("family", FAMILIES)
def test_full_rank_is_the_whole_site_and_rank_zero_is_nothing(family):
    model, pairs = tiny_task(family)
    corrupt_logits = model.last_logits(pairs.corrupt)
    for text in SITES:
        site = Site.parse(text)
        d = vectors.width(model, site)
        whole = vectors.read(model, pairs.clean_run, site)
        with vectors.patch(model, site, whole, pairs.positions):
            want = model.last_logits(pairs.corrupt)
        full = subspace_logits(model, pairs, Subspace(site, random_basis(d, d, seed=3)))
        torch.testing.assert_close(full, want, atol=1e-5, rtol=0, msg=text)
        nothing = subspace_logits(model, pairs, Subspace(site, torch.zeros(d, 0)))
        torch.testing.assert_close(nothing, corrupt_logits, atol=1e-5, rtol=0, msg=text)


def test_patch_subspace_labels_both_directions_and_is_a_basis():
    model, pairs = tiny_task("gpt2")
    site = Site.parse("resid_post[layer=1, pos=END]")
    basis = Subspace(site, random_basis(32, 32))
    assert isinstance(basis, Basis)
    x = torch.randn(5, 32)
    torch.testing.assert_close(basis.reconstruct(x), x, atol=1e-5, rtol=0)
    result = patch_subspace(
        model, pairs, basis, direction=["denoise", "noise"], counterfactual=pairs.wrong * 0 + 7
    )
    # A full-rank denoise patch of the last residual at the last position is the clean run.
    assert result.sel(direction="denoise", metric="norm_logit_diff") == pytest.approx(1, abs=1e-4)
    assert result.attrs["analysis"] == "patch_subspace" and result.attrs["rank"] == 32


def test_constructors():
    model, pairs = tiny_task("llama")
    site = "resid_pre[layer=1, pos=END]"
    line = Subspace.from_direction(site, torch.arange(32.0))
    assert line.rank == 1 and float(line.U.norm()) == pytest.approx(1)
    with pytest.warns(UserWarning, match="not orthonormal"):
        skew = Subspace.from_basis(site, torch.randn(32, 4))
    torch.testing.assert_close(skew.U.T @ skew.U, torch.eye(4), atol=1e-5, rtol=0)
    pca = Subspace.from_pca(model, pairs, site, 2)
    X = torch.cat(
        [vectors.read(model, run, Site.parse(site)) for run in (pairs.clean_run, pairs.corrupt_run)]
    )
    X = X - X.mean(0)
    # The top principal direction holds more variance than any other direction we try.
    top = float((X @ pca.U[:, 0]).pow(2).sum())
    assert all(top >= float((X @ u).pow(2).sum()) - 1e-4 for u in random_basis(32, 32).T)
    means = Subspace.from_class_means(model, pairs, site)
    clean, corrupt = (
        vectors.read(model, run, Site.parse(site)).mean(0)
        for run in (pairs.clean_run, pairs.corrupt_run)
    )
    assert torch.nn.functional.cosine_similarity(
        means.U[:, 0], clean - corrupt, dim=0
    ) == pytest.approx(1, abs=1e-5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        Subspace.from_basis(site, random_basis(32, 2))  # orthonormal already: no warning


@pytest.mark.parametrize(
    "call, message",
    [
        (
            lambda m, p: patch_subspace(m, p, Subspace("resid_pre[layer=1]", random_basis(16, 2))),
            "16 rows but .* 32 wide",
        ),
        (
            lambda m, p: Subspace("resid_pre[layer=1]", torch.randn(32, 2)),
            "not orthonormal.*from_basis",
        ),
        (
            lambda m, p: Subspace.from_basis("resid_pre[layer=1]", torch.ones(32, 2)),
            "linearly dependent",
        ),
        (
            lambda m, p: Subspace.from_pca(m, p, "resid_pre[layer=1]", 33),
            "rank must be .* 0 to the site's width 32",
        ),
        (
            lambda m, p: Subspace("neuron[layer=0, neuron=3]", random_basis(32, 1)),
            "whole neuron layer; drop neuron=",
        ),
        (
            lambda m, p: Subspace("k[layer=0, head=0]", random_basis(8, 1)),
            "a subspace sits at one of",
        ),
        (lambda m, p: Subspace.from_direction("resid_pre[layer=1]", torch.zeros(32)), "non-zero"),
        (
            lambda m, p: interchange(m, [p, p], "resid_pre[layer=1]"),
            "one PromptPairs of one token length",
        ),
        (
            lambda m, p: interchange(m, p, "resid_pre[layer=1]", direction="noise"),
            "pass counterfactual=",
        ),
        (
            lambda m, p: interchange(m, p, "resid_pre[layer=1]", counterfactual=p.wrong),
            "compared with",
        ),
        (
            lambda m, p: interchange(m, p, "resid_pre[layer=1]", counterfactual=p.wrong[:2]),
            r"shape \(3,\)",
        ),
    ],
)
def test_bad_inputs(call, message):
    model, pairs = tiny_task("llama")
    with pytest.raises((BasisError, PairsError, ValueError, TypeError), match=message):
        call(model, pairs)


@pytest.mark.parametrize("family", FAMILIES)
def test_a_subspace_sweeps_through_the_engines_as_patch_subspace_patches_it(family):
    """A Subspace is a Basis, so the sweep's feature sites take it: the one latent of a rank-1
    subspace, swept by the batched engine, is the subspace patched by patch_subspace (denoising:
    noising in patch_subspace measures a counterfactual answer, which a sweep has no word for)."""
    direction = "denoise"
    import actpatch as ap

    model, pairs = tiny_task(family)
    d_model = model.dims.d_model
    direction_vector = torch.randn(d_model, generator=torch.Generator().manual_seed(3))
    basis = Subspace(
        Site("resid_pre", 1, pos=-1), (direction_vector / direction_vector.norm())[:, None]
    )
    swept = ap.sweep(
        model,
        pairs,
        "feature",
        dictionary=basis,
        latents=[0],
        positions=[-1],
        direction=direction,
        check_baseline=False,
    )
    whole = patch_subspace(model, pairs, basis, direction=direction)
    for metric in ("norm_logit_diff", "logit_diff"):
        assert swept.sel(metric=metric).item() == pytest.approx(
            whole.sel(metric=metric).item(), abs=1e-5
        )

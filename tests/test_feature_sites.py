"""Feature sites: a dictionary's latents and error node, patched through hooks and every engine.

Random dictionaries of each kind (SAE, transcoder, skip-transcoder) and activation (ReLU, JumpReLU,
TopK) on every tiny family. The invariants: every latent plus the error node patched together is
the plain patch of the hook point; a latent equal in both runs changes nothing; a feature sweep
equals a loop of plain patches that encodes, moves one latent, decodes and adds the error back;
the batched engine equals the reference; and the model is left as it was.
"""

from __future__ import annotations

import pytest
import torch

import actpatch as ap
from actpatch.bases.dictionary import Dictionary
from actpatch.engine.sources import ablate
from actpatch.models.model import weights_fingerprint
from random_dictionaries import kinds_for, random_dictionary
from tiny import FAMILIES, tiny_model, tiny_task

ATOL = 1e-5  # float32 logits of O(1-10): a few ulps of the forward, far below any effect


def plain_value(model, basis, pairs, pos):
    """The clean run's activation where `basis` writes, at `pos`."""
    site = ap.Site(basis.writes, basis.layer, pos=pos)
    return site, ap.capture(model, pairs.clean, [site])[site]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("activation", ["relu", "jumprelu", "topk"])
def test_every_latent_and_the_error_patched_together_is_the_plain_patch(family, activation):
    model, pairs = tiny_task(family)
    before = weights_fingerprint(model)
    for reads, writes in kinds_for(family):
        basis = random_dictionary(model, reads, writes, activation)
        pos = 5  # the final position: layer 1 is the last, so an earlier one reaches no logit
        sites = [
            ap.Site("feature", 1, latent=i, basis=basis, pos=pos) for i in range(basis.n_latents)
        ]
        sites.append(ap.Site("feature_error", 1, basis=basis, pos=pos))
        clean = ap.capture(model, pairs.clean, sites)
        with ap.patch(model, clean):
            got = model.last_logits(pairs.corrupt)
        site, value = plain_value(model, basis, pairs, pos)
        with ap.patch(model, {site: value}):
            want = model.last_logits(pairs.corrupt)
        assert (got - want).abs().max() <= ATOL, (reads, writes)
        assert (
            want - model.last_logits(pairs.corrupt)
        ).abs().max() > 1e-3  # the patch does something
    assert ap.attached_hooks(model) == 0 and weights_fingerprint(model) == before


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_a_skip_transcoders_latents_and_error_leave_its_skip_path_at_the_target(family):
    # The skip path W_skip x is neither a latent nor the error: patching both moves the MLP output
    # by the plain patch's change less the skip path's.
    model, pairs = tiny_task(family)
    basis = random_dictionary(model, "mlp_in", "mlp_out", skip=True)
    pos = 5
    sites = [ap.Site("feature", 1, latent=i, basis=basis, pos=pos) for i in range(basis.n_latents)]
    sites.append(ap.Site("feature_error", 1, basis=basis, pos=pos))
    clean = ap.capture(model, pairs.clean, sites)
    with ap.patch(model, clean):
        got = model.last_logits(pairs.corrupt)
    read_site, written_site = ap.Site("mlp_in", 1, pos=pos), ap.Site("mlp_out", 1, pos=pos)
    clean_acts = ap.capture(model, pairs.clean, [read_site, written_site])
    corrupt_acts = ap.capture(model, pairs.corrupt, [read_site, written_site])
    skip_change = (clean_acts[read_site] - corrupt_acts[read_site]) @ basis.W_skip
    with ap.patch(model, {written_site: clean_acts[written_site] - skip_change}):
        want = model.last_logits(pairs.corrupt)
    assert (got - want).abs().max() <= ATOL


@pytest.mark.parametrize("family", FAMILIES)
def test_a_latent_equal_in_both_runs_changes_nothing(family):
    model, pairs = tiny_task(family)
    basis = random_dictionary(model, "resid_post", "resid_post")
    target = model.last_logits(pairs.corrupt)
    # Position 0 has the same token in both runs, so every latent there is equal in both.
    sites = [ap.Site("feature", 1, latent=i, basis=basis, pos=0) for i in range(basis.n_latents)]
    clean = ap.capture(model, pairs.clean, sites)
    corrupt = ap.capture(model, pairs.corrupt, sites)
    assert all(torch.equal(clean[s], corrupt[s]) for s in sites)
    for site in sites[:6]:
        with ap.patch(model, {site: clean[site]}):
            assert torch.equal(model.last_logits(pairs.corrupt), target)
    # And a latent given its target value at a position where the runs differ.
    site = ap.Site("feature", 1, latent=3, basis=basis, pos=4)
    with ap.patch(model, ap.capture(model, pairs.corrupt, [site])):
        assert (model.last_logits(pairs.corrupt) - target).abs().max() <= 1e-6


def hand_feature_sweep(model, pairs, basis, latents, positions):
    """Normalised logit difference of each (latent, pos) denoising patch, by plain patches of the
    written site: encode the target, move one latent to the clean value, decode, add the error."""
    read, written = ap.Site(basis.reads, basis.layer), ap.Site(basis.writes, basis.layer)
    clean = ap.capture(model, pairs.clean, [read, written])
    corrupt = ap.capture(model, pairs.corrupt, [read, written])
    clean_f, corrupt_f = basis.encode(clean[read]), basis.encode(corrupt[read])
    error = basis.error(corrupt[read], corrupt[written])
    rows = torch.zeros(len(latents), len(positions))
    for a, latent in enumerate(latents):
        for b, pos in enumerate(positions):
            edited = corrupt_f.clone()
            edited[:, pos, latent] = clean_f[:, pos, latent]
            decoded = edited @ basis.W_dec + basis.b_dec
            if basis.W_skip is not None:
                decoded = decoded + corrupt[read] @ basis.W_skip
            value = (decoded + error)[:, pos]
            with ap.patch(model, {ap.Site(basis.writes, basis.layer, pos=pos): value}):
                logits = model.last_logits(pairs.corrupt)
            rows[a, b] = ap.metrics.logit_diff(logits, pairs.answers, pairs.wrong).double().mean()
    return rows


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("engine", ["reference", "batched"])
def test_a_feature_sweep_is_a_loop_that_encodes_edits_one_latent_decodes_and_adds_the_error(
    family, engine
):
    model, pairs = tiny_task(family)
    reads, writes = ("mlp_in", "mlp_out") if family != "gpt2" else ("resid_post", "resid_post")
    basis = random_dictionary(model, reads, writes, "topk" if family == "llama" else "jumprelu")
    latents, positions = [0, 3, 7, 11], [1, 5]
    result = ap.sweep(
        model,
        pairs,
        "feature",
        dictionary=basis,
        latents=latents,
        positions=positions,
        engine=engine,
        progress=False,
        chunk=5,
    )
    assert result.dims == ("metric", "layer", "latent", "pos")
    got = torch.tensor(result.sel(metric="logit_diff", layer=1).values)
    want = hand_feature_sweep(model, pairs, basis, latents, positions).double()
    assert (got - want).abs().max() <= ATOL
    assert result.attrs["dictionary"]["name"] == basis.name
    assert ap.attached_hooks(model) == 0


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("site", ["feature", "feature_error"])
def test_batched_engine_equals_reference_on_feature_sites(family, site):
    model, pairs = tiny_task(family)
    before = weights_fingerprint(model)
    reads, writes = kinds_for(family)[-1]  # a transcoder
    basis = random_dictionary(model, reads, writes, "relu", skip=family == "gemma3")
    keywords = {"dictionary": basis, "progress": False, "direction": ["denoise", "noise"]}
    if site == "feature":
        keywords["latents"] = "active"
    want = ap.sweep(model, pairs, site, engine="reference", **keywords)
    got = ap.sweep(model, pairs, site, chunk=4, **keywords)
    assert float(abs(got - want).max()) <= ATOL
    cost = got.attrs["cost"]
    assert cost.get("denoise", cost)["noop_patches_skipped"] > 0  # position 0: equal in both runs
    assert ap.attached_hooks(model) == 0 and weights_fingerprint(model) == before


@pytest.mark.parametrize("ablation", ["zero", "mean", "resample"])
def test_feature_ablations_match_the_reference_engine(ablation):
    model, pairs = tiny_task("qwen2")
    basis = random_dictionary(model, "resid_mid", "resid_mid")
    keywords = {
        "dictionary": basis,
        "latents": [1, 2, 5],
        "direction": "noise",
        "ablation": ablation,
        "progress": False,
    }
    want = ap.sweep(model, pairs, "feature", engine="reference", **keywords)
    got = ap.sweep(model, pairs, "feature", chunk=3, **keywords)
    assert float(abs(got - want).max()) <= ATOL


def test_mean_ablating_every_latent_and_the_error_is_mean_ablating_the_site():
    # The patch rule is linear in the coordinates, so averaging each latent and the error over the
    # prompts averages what they sum to: the activation itself.
    model, pairs = tiny_task("llama")
    basis = random_dictionary(model, "resid_post", "resid_post", "jumprelu")
    sites = [ap.Site("feature", 1, latent=i, basis=basis) for i in range(basis.n_latents)]
    sites.append(ap.Site("feature_error", 1, basis=basis))
    with ap.patch(model, ablate(ap.capture(model, pairs.clean, sites), "mean")):
        got = model.last_logits(pairs.clean)
    site = ap.Site("resid_post", 1)
    with ap.patch(model, ablate(ap.capture(model, pairs.clean, [site]), "mean")):
        want = model.last_logits(pairs.clean)
    assert (got - want).abs().max() <= ATOL
    assert (want - model.last_logits(pairs.clean)).abs().max() > 1e-2


def test_active_latents_are_those_nonzero_in_either_run():
    model, pairs = tiny_task("gpt2")
    basis = random_dictionary(model, "resid_post", "resid_post", "topk")
    result = ap.sweep(model, pairs, "feature", dictionary=basis, latents="active", progress=False)
    site = ap.Site("resid_post", 1)
    fired = torch.zeros(basis.n_latents, dtype=torch.bool)
    for tokens in (pairs.clean, pairs.corrupt):
        fired |= (basis.encode(ap.capture(model, tokens, [site])[site]) != 0).flatten(0, 1).any(0)
    assert list(result["latent"].values) == fired.nonzero().flatten().tolist()
    assert 0 < len(result["latent"]) < basis.n_latents


def test_a_feature_site_prints_the_way_it_parses():
    model = tiny_model("llama")
    basis = random_dictionary(model, "resid_post", "resid_post")
    site = ap.Site("feature", 1, latent=7, basis=basis, pos="END")
    assert str(site) == "feature[layer=1, basis=test.resid_post.1, latent=7, pos=END]"
    assert ap.Site.parse(str(site), bases=[basis]) == site
    error = ap.Site("feature_error", 1, basis=basis, pos=2)
    assert ap.Site.parse(str(error), bases=[basis]) == error
    with pytest.raises(ap.SiteError, match="bases="):
        ap.Site.parse(str(site))


BAD = [
    (
        lambda m, p, b: ap.sweep(m, p, "feature", dictionary=b, latents=[24]),
        r"latent 24 is out of range.*0\.\.23",
    ),
    (lambda m, p, b: ap.sweep(m, p, "feature", dictionary=b), r"needs latents="),
    (lambda m, p, b: ap.sweep(m, p, "feature", latents=[1]), r"needs dictionary="),
    (lambda m, p, b: ap.sweep(m, p, "resid_pre", dictionary=b), r"belong to feature sweeps"),
    (
        lambda m, p, b: ap.sweep(m, p, "feature", dictionary=b, latents=[1], layers=[0]),
        r"sits at layer 1",
    ),
    (
        lambda m, p, b: ap.sweep(m, p, "feature", dictionary=b, latents=[1], heads=[0]),
        r"latents=, not heads=",
    ),
    (
        lambda m, p, b: ap.capture(m, p.clean, [ap.Site("feature", 1, latent=-1, basis=b)]),
        r"out of range",
    ),
    (
        lambda m, p, b: ap.capture(m, p.clean, [ap.Site("feature", 0, latent=1, basis=b)]),
        r"sits at layer 1",
    ),
    (
        lambda m, p, b: ap.capture(m, p.clean, [ap.Site("feature_error", 1, latent=1, basis=b)]),
        r"drop latent=",
    ),
    (
        lambda m, p, b: ap.capture(m, p.clean, [ap.Site("resid_pre", 1, latent=1)]),
        r"only feature sites",
    ),
]


@pytest.mark.parametrize("call, message", BAD)
def test_bad_feature_inputs_raise_clear_errors(call, message):
    model, pairs = tiny_task("llama")
    basis = random_dictionary(model, "resid_post", "resid_post")
    with pytest.raises((ap.SiteError, ValueError, TypeError), match=message):
        call(model, pairs, basis)
    assert ap.attached_hooks(model) == 0


def test_a_dictionary_of_another_width_is_refused_by_the_sweep():
    model, pairs = tiny_task("llama")
    wide = Dictionary(
        "wide",
        1,
        "resid_post",
        "resid_post",
        torch.zeros(48, 4),
        torch.zeros(4),
        torch.zeros(4, 48),
        torch.zeros(48),
    )
    assert wide.d_in == 48
    with pytest.raises(ap.DictionaryError, match=r"48-wide.*32 wide \(d_model\)"):
        ap.sweep(model, pairs, "feature", dictionary=wide, latents=[0])


class Subspace:
    """A basis that is not a dictionary: an orthonormal U (d_model × r), as the Basis contract
    describes one: encode x U, decoder Uᵀ, reconstruct x U Uᵀ. It needs no code of its own."""

    def __init__(self, model, kind: str, rank: int = 3, layer: int = 1):
        generator = torch.Generator().manual_seed(5)
        self.U = torch.linalg.qr(torch.randn(model.dims.d_model, rank, generator=generator))[0]
        self.name, self.layer = f"subspace.{kind}.{layer}", layer
        self.reads = self.writes = kind
        self.d_in = self.d_out = model.dims.d_model
        self.n_latents = rank

    def encode(self, x):
        return x @ self.U

    def decoder(self):
        return self.U.T

    def reconstruct(self, x):
        return x @ self.U @ self.U.T


@pytest.mark.parametrize("family", ["llama", "gpt_neox", "gemma3"])
def test_a_subspace_basis_plugs_into_the_same_sites_and_sweeps(family):
    model, pairs = tiny_task(family)
    subspace = Subspace(model, "resid_post")
    assert isinstance(subspace, ap.bases.Basis)
    sites = [ap.Site("feature", 1, latent=i, basis=subspace, pos=5) for i in range(3)]
    sites.append(ap.Site("feature_error", 1, basis=subspace, pos=5))
    with ap.patch(model, ap.capture(model, pairs.clean, sites)):
        got = model.last_logits(pairs.corrupt)
    site, value = plain_value(model, subspace, pairs, 5)
    with ap.patch(model, {site: value}):
        want = model.last_logits(pairs.corrupt)
    assert (got - want).abs().max() <= ATOL
    # Patching the subspace's coordinates alone is the patch of U Uᵀ (x_source − x_target).
    target = ap.capture(model, pairs.corrupt, [site])[site]
    with ap.patch(model, {site: target + (value - target) @ subspace.U @ subspace.U.T}):
        projected = model.last_logits(pairs.corrupt)
    with ap.patch(model, ap.capture(model, pairs.clean, sites[:3])):
        assert (model.last_logits(pairs.corrupt) - projected).abs().max() <= ATOL
    keywords = {"dictionary": subspace, "latents": [0, 1, 2], "progress": False}
    reference = ap.sweep(model, pairs, "feature", engine="reference", **keywords)
    batched = ap.sweep(model, pairs, "feature", chunk=4, **keywords)
    assert float(abs(batched - reference).max()) <= ATOL

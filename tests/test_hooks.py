"""Hooks read and write exactly their site, on every family, and never outlive their call."""
import re
from pathlib import Path

import pytest
import torch

from actpatch import PatchNotApplied, PatchShapeError, Site, SITE_KINDS, attached_hooks, capture, patch
from tiny import FAMILIES, tiny_model, tiny_pairs, with_answers

SEQUENTIAL = [f for f in FAMILIES if f != "pythia_parallel"]


def one_site(kind: str, layer: int = 1, pos=None) -> Site:
    extra = {"head": 0} if kind in ("head", "q", "k", "v", "pattern") else {"neuron": 3} if kind == "neuron" else {}
    return Site(kind, layer, pos=pos, **extra)


def kinds_for(family):
    return [k for k in SITE_KINDS if not (k == "resid_mid" and family == "pythia_parallel")]


@pytest.mark.parametrize("family", FAMILIES)
def test_noop_patch_changes_no_logit(family):
    model, pairs = with_answers(tiny_model(family), tiny_pairs())
    before = model.last_logits(pairs.corrupt)
    for kind in kinds_for(family):
        for pos in (None, 2, "X"):
            site = one_site(kind, pos=pos)
            own = capture(model, pairs.corrupt, [site], positions=pairs.positions)
            with patch(model, own, positions=pairs.positions):
                after = model.last_logits(pairs.corrupt)
            torch.testing.assert_close(after, before, atol=1e-5, rtol=0, msg=f"{site}")


@pytest.mark.parametrize("family", FAMILIES)
def test_every_site_kind_moves_the_logits(family):
    model, pairs = with_answers(tiny_model(family), tiny_pairs())
    before = model.last_logits(pairs.corrupt)
    for kind in kinds_for(family):
        site = one_site(kind, layer=0)
        source = capture(model, pairs.clean, [site])
        with patch(model, source):
            after = model.last_logits(pairs.corrupt)
        assert (after - before).abs().max() > 1e-4, f"{kind} patched nothing on {family}"


@pytest.mark.parametrize("family", FAMILIES)
def test_full_resid_pre_patch_at_layer_0_is_the_clean_run(family):
    model, pairs = with_answers(tiny_model(family), tiny_pairs())
    source = capture(model, pairs.clean, [Site("resid_pre", 0)])
    with patch(model, source):
        patched = model.last_logits(pairs.corrupt)
    torch.testing.assert_close(patched, model.last_logits(pairs.clean), atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", SEQUENTIAL)
def test_resid_mid_patch_sets_the_residual_stream_itself(family):
    """Written through attn_out, the patched resid_mid must be what the rest of the layer sees."""
    model, pairs = with_answers(tiny_model(family), tiny_pairs())
    site = Site("resid_mid", 1, pos=3)
    source = capture(model, pairs.clean, [site])
    after = Site("resid_post", 1)
    with patch(model, source):
        seen = capture(model, pairs.corrupt, [site, after])
    torch.testing.assert_close(seen[site], source[site], atol=1e-5, rtol=1e-5)
    reference = capture(model, pairs.corrupt, [after])[after]
    assert not torch.allclose(seen[after][:, 3], reference[:, 3])  # the MLP read the patched stream
    torch.testing.assert_close(seen[after][:, :3], reference[:, :3])  # and earlier positions are untouched


def test_named_position_patches_each_prompt_at_its_own_index():
    model, pairs = with_answers(tiny_model("llama"), tiny_pairs())
    named = Site("resid_pre", 1, pos="X")
    source = capture(model, pairs.clean, [named], positions=pairs.positions)
    with patch(model, source, positions=pairs.positions):
        got = model.last_logits(pairs.corrupt)
    for row, index in enumerate(pairs.positions["X"].tolist()):
        by_index = Site("resid_pre", 1, pos=index)
        value = capture(model, pairs.clean[row : row + 1], [by_index])
        with patch(model, value):
            want = model.last_logits(pairs.corrupt[row : row + 1])
        torch.testing.assert_close(got[row : row + 1], want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["resid_pre", "head", "k", "pattern"])
def test_hooks_are_removed_after_an_error_inside_a_patched_forward(kind):
    model, pairs = with_answers(tiny_model("llama"), tiny_pairs())
    site = one_site(kind, layer=1)
    values = capture(model, pairs.clean, [site])
    bomb = model.submodule(1, model.arch.mlp).register_forward_hook(lambda *a: (_ for _ in ()).throw(RuntimeError("boom")))
    try:
        with pytest.raises(RuntimeError, match="boom"):
            with patch(model, values):
                model.last_logits(pairs.corrupt)
    finally:
        bomb.remove()
    assert attached_hooks(model) == 0
    assert model.hf.config._attn_implementation == "sdpa"  # a pattern patch swaps attention back


def test_a_patch_that_never_ran_is_an_error():
    model, pairs = with_answers(tiny_model("llama"), tiny_pairs())
    values = capture(model, pairs.clean, [Site("resid_pre", 1)])
    with pytest.raises(PatchNotApplied, match=r"resid_pre\[layer=1\]"):
        with patch(model, values):
            pass


def test_a_value_of_the_wrong_shape_is_an_error():
    model, pairs = with_answers(tiny_model("llama"), tiny_pairs())
    values = capture(model, pairs.clean[:2], [Site("resid_pre", 1)])
    with pytest.raises(PatchShapeError, match=r"shape \(2, 6, 32\).*\(3, 6, 32\)"):
        with patch(model, values):
            model.last_logits(pairs.corrupt)
    assert attached_hooks(model) == 0


def test_no_other_module_registers_hooks():
    source = Path(__file__).parents[1] / "src" / "actpatch"
    pattern = re.compile(r"register_(forward|forward_pre|full_backward|full_backward_pre)_hook|AttentionInterface")
    offenders = [p.name for p in source.rglob("*.py") if "hooks" not in p.relative_to(source).parts and pattern.search(p.read_text())]
    assert offenders == []


@pytest.mark.parametrize("family", FAMILIES)
def test_q_k_v_are_what_attention_uses_them_for(family):
    """v never moves the pattern; k moves it for exactly the query heads of its group; q for its head only."""
    model, pairs = with_answers(tiny_model(family), tiny_pairs())
    dims = model.dims
    patterns = [Site("pattern", 0, head=h) for h in range(dims.n_heads)]
    before = capture(model, pairs.corrupt, patterns)
    group = dims.n_heads // dims.n_kv_heads

    def moved_heads(kind, head):
        source = capture(model, pairs.clean, [Site(kind, 0, head=head)])
        with patch(model, source):
            after = capture(model, pairs.corrupt, patterns)
        return {s.head for s in patterns if not torch.allclose(after[s], before[s], atol=1e-6)}

    last_kv = dims.n_kv_heads - 1
    assert moved_heads("v", last_kv) == set()
    assert moved_heads("k", last_kv) == set(range(last_kv * group, (last_kv + 1) * group))
    assert moved_heads("q", 1) == {1}

"""Hooks read and write exactly their site, on every family, and never outlive their call."""

import re
from pathlib import Path

import pytest
import torch

from actpatch import (
    SITE_KINDS,
    PatchNotApplied,
    PatchShapeError,
    Site,
    attached_hooks,
    capture,
    hooks,
    patch,
)
from tiny import FAMILIES, tiny_model, tiny_pairs, tiny_task

SEQUENTIAL = [f for f in FAMILIES if f != "pythia_parallel"]


def one_site(kind: str, layer: int = 1, pos=None) -> Site:
    extra = (
        {"head": 0}
        if kind in ("head", "q", "k", "v", "pattern")
        else {"neuron": 3}
        if kind == "neuron"
        else {}
    )
    return Site(kind, layer, pos=pos, **extra)


def kinds_for(family):
    return [k for k in SITE_KINDS if not (k == "resid_mid" and family == "pythia_parallel")]


@pytest.mark.parametrize("family", FAMILIES)
def test_noop_patch_changes_no_logit(family):
    model, pairs = tiny_task(family)
    before = model.last_logits(pairs.corrupt)
    for kind in kinds_for(family):
        for pos in (None, 2, "X"):
            site = one_site(kind, pos=pos)
            own = capture(model, pairs.corrupt, [site], named_positions=pairs.positions)
            with patch(model, own, named_positions=pairs.positions):
                after = model.last_logits(pairs.corrupt)
            torch.testing.assert_close(after, before, atol=1e-5, rtol=0, msg=f"{site}")


@pytest.mark.parametrize("family", FAMILIES)
def test_every_site_kind_moves_the_logits(family):
    model, pairs = tiny_task(family)
    before = model.last_logits(pairs.corrupt)
    for kind in kinds_for(family):
        site = one_site(kind, layer=0)
        source = capture(model, pairs.clean, [site])
        with patch(model, source):
            after = model.last_logits(pairs.corrupt)
        assert (after - before).abs().max() > 1e-4, f"{kind} patched nothing on {family}"


@pytest.mark.parametrize("family", FAMILIES)
def test_full_resid_pre_patch_at_layer_0_is_the_clean_run(family):
    model, pairs = tiny_task(family)
    source = capture(model, pairs.clean, [Site("resid_pre", 0)])
    with patch(model, source):
        patched = model.last_logits(pairs.corrupt)
    torch.testing.assert_close(patched, model.last_logits(pairs.clean), atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", SEQUENTIAL)
def test_resid_mid_patch_sets_the_residual_stream_itself(family):
    """Written through attn_out, the patched resid_mid must be what the rest of the layer sees."""
    model, pairs = tiny_task(family)
    site = Site("resid_mid", 1, pos=3)
    source = capture(model, pairs.clean, [site])
    after = Site("resid_post", 1)
    with patch(model, source):
        seen = capture(model, pairs.corrupt, [site, after])
    torch.testing.assert_close(seen[site], source[site], atol=1e-5, rtol=1e-5)
    reference = capture(model, pairs.corrupt, [after])[after]
    assert not torch.allclose(seen[after][:, 3], reference[:, 3])  # the MLP read the patched stream
    torch.testing.assert_close(
        seen[after][:, :3], reference[:, :3]
    )  # and earlier positions are untouched


@pytest.mark.parametrize("family", FAMILIES)
def test_an_edit_is_the_patch_of_its_function_of_the_unpatched_value(family):
    """edit() hands each site what it holds and writes what the function returns: on every kind
    (resid_mid through attn_out, a whole neuron layer as one vector), that is patch() of f(x)."""
    model, pairs = tiny_task(family)
    for kind in [*kinds_for(family), "neuron layer"]:
        site = one_site(kind, pos="X") if kind != "neuron layer" else Site("neuron", 1, pos="X")
        parts = (
            [site]
            if kind != "neuron layer"
            else [Site("neuron", 1, neuron=i, pos="X") for i in range(model.dims.d_mlp)]
        )
        own = capture(model, pairs.corrupt, parts, positions=pairs.positions)
        x = own[site] if kind != "neuron layer" else torch.stack([own[p] for p in parts], -1)
        seen: list[torch.Tensor] = []

        def f(current, seen=seen):
            seen.append(current)
            return current * 1.5 - 0.25

        with hooks.edit(model, {site: f}, named_positions=pairs.positions):
            got = hooks.last_logits(model, pairs.corrupt)
        torch.testing.assert_close(seen[0], x, atol=1e-5, rtol=0, msg=f"{family} {kind}")
        values = (
            {site: f(x)}
            if kind != "neuron layer"
            else {p: f(x)[..., i] for i, p in enumerate(parts)}
        )
        with patch(model, values, positions=pairs.positions):
            want = hooks.last_logits(model, pairs.corrupt)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0, msg=f"{family} {kind}")
    assert attached_hooks(model) == 0


def test_an_edit_refuses_values_and_says_when_it_never_ran():
    model, pairs = tiny_task("llama")
    site = Site("resid_pre", 1)
    value = capture(model, pairs.clean, [site])[site]
    with (
        pytest.raises(TypeError, match="write fixed values with patch"),
        hooks.edit(model, {site: value}),
    ):
        pass
    with (
        pytest.raises(PatchNotApplied, match=r"resid_pre\[layer=1\]"),
        hooks.edit(model, {site: lambda x: x}),
    ):
        pass
    assert attached_hooks(model) == 0


def test_named_position_patches_each_prompt_at_its_own_index():
    model, pairs = tiny_task("llama")
    named = Site("resid_pre", 1, pos="X")
    source = capture(model, pairs.clean, [named], named_positions=pairs.positions)
    with patch(model, source, named_positions=pairs.positions):
        got = model.last_logits(pairs.corrupt)
    for row, index in enumerate(pairs.positions["X"].tolist()):
        by_index = Site("resid_pre", 1, pos=index)
        value = capture(model, pairs.clean[row : row + 1], [by_index])
        with patch(model, value):
            want = model.last_logits(pairs.corrupt[row : row + 1])
        torch.testing.assert_close(got[row : row + 1], want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("kind", ["resid_pre", "head", "k", "pattern"])
def test_hooks_are_removed_after_an_error_inside_a_patched_forward(kind):
    model, pairs = tiny_task("llama")
    site = one_site(kind, layer=1)
    values = capture(model, pairs.clean, [site])
    bomb = model.submodule(1, model.arch.mlp).register_forward_hook(
        lambda *a: (_ for _ in ()).throw(RuntimeError("boom"))
    )
    try:
        with pytest.raises(RuntimeError, match="boom"), patch(model, values):
            model.last_logits(pairs.corrupt)
    finally:
        bomb.remove()
    assert attached_hooks(model) == 0
    assert model.hf.config._attn_implementation == "sdpa"  # a pattern patch swaps attention back


def test_a_patch_that_never_ran_is_an_error():
    model, pairs = tiny_task("llama")
    values = capture(model, pairs.clean, [Site("resid_pre", 1)])
    with pytest.raises(PatchNotApplied, match=r"resid_pre\[layer=1\]"), patch(model, values):
        pass


def test_a_value_of_the_wrong_shape_is_an_error():
    model, pairs = tiny_task("llama")
    values = capture(model, pairs.clean[:2], [Site("resid_pre", 1)])
    with (
        pytest.raises(PatchShapeError, match=r"shape \(2, 6, 32\).*\(3, 6, 32\)"),
        patch(model, values),
    ):
        model.last_logits(pairs.corrupt)
    assert attached_hooks(model) == 0


def test_no_other_module_registers_hooks():
    source = Path(__file__).parents[1] / "src" / "actpatch"
    pattern = re.compile(
        r"register_(forward|forward_pre|full_backward|full_backward_pre)_hook|AttentionInterface"
    )
    offenders = [
        p.name
        for p in source.rglob("*.py")
        if "hooks" not in p.relative_to(source).parts and pattern.search(p.read_text())
    ]
    assert offenders == []


@pytest.mark.parametrize("family", FAMILIES)
def test_q_k_v_are_what_attention_uses_them_for(family):
    """v never moves the pattern; k moves it for exactly the query heads of its group; q for its head only."""
    model, pairs = tiny_task(family)
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


def _registries() -> tuple[dict, dict]:
    """What transformers' attention and mask registries hold, class-wide (where `register` writes)."""
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS

    return dict(AttentionInterface._global_mapping), dict(
        type(ALL_MASK_ATTENTION_FUNCTIONS)._global_mapping
    )


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ["resid_pre", "head", "k", "pattern"])
def test_an_error_inside_a_patched_forward_leaves_no_hook_and_the_registries_as_they_were(
    family, kind
):
    model, pairs = tiny_task(family)
    values = capture(model, pairs.clean, [one_site(kind, layer=1)])
    registries = _registries()
    bomb = model.submodule(1, model.arch.mlp).register_forward_hook(
        lambda *a: (_ for _ in ()).throw(RuntimeError("boom"))
    )
    try:
        with pytest.raises(RuntimeError, match="boom"), patch(model, values):
            model.last_logits(pairs.corrupt)
    finally:
        bomb.remove()
    assert attached_hooks(model) == 0
    assert _registries() == registries
    assert model.hf.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("family", FAMILIES)
def test_a_pattern_capture_unregisters_its_attention(family):
    from transformers import AttentionInterface

    model, pairs = tiny_model(family), tiny_pairs()
    capture(model, pairs.clean, [Site("pattern", 0, head=1)])
    assert hooks.PATTERN_ATTENTION not in AttentionInterface._global_mapping
    assert hooks.PATTERN_ATTENTION not in _registries()[1]


def test_a_pattern_capture_puts_back_what_was_registered_under_its_name():
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    def theirs(*args, **kwargs):
        raise AssertionError("our pattern capture ran someone else's attention function")

    model, pairs = tiny_model("llama"), tiny_pairs()
    AttentionInterface.register(hooks.PATTERN_ATTENTION, theirs)
    ALL_MASK_ATTENTION_FUNCTIONS.register(hooks.PATTERN_ATTENTION, sdpa_mask)
    try:
        registries = _registries()
        capture(model, pairs.clean, [Site("pattern", 1, head=0)])
        assert _registries() == registries
        assert AttentionInterface._global_mapping[hooks.PATTERN_ATTENTION] is theirs
    finally:
        del AttentionInterface._global_mapping[hooks.PATTERN_ATTENTION]
        del type(ALL_MASK_ATTENTION_FUNCTIONS)._global_mapping[hooks.PATTERN_ATTENTION]


@pytest.mark.parametrize("family", FAMILIES)
def test_nested_eager_attention_is_one_call_until_the_outer_block_ends(family):
    model, pairs = tiny_model(family), tiny_pairs()
    site = Site("pattern", 1, head=2)
    alone = capture(model, pairs.clean, [site])[site]
    registries = _registries()
    with hooks.eager_attention(model) as outer:
        with hooks.eager_attention(model) as inner:
            assert inner is outer
            with hooks.attention_inputs(model, [0]) as records:
                torch.testing.assert_close(
                    capture(model, pairs.clean, [site])[site], alone, atol=0, rtol=0
                )
            assert records[0]["query"].shape[-2] == pairs.clean.shape[1]
        assert (
            model.hf.config._attn_implementation == hooks.PATTERN_ATTENTION
        )  # the inner exit left it on
        torch.testing.assert_close(capture(model, pairs.clean, [site])[site], alone, atol=0, rtol=0)
        assert attached_hooks(model) == 0
    assert _registries() == registries
    assert model.hf.config._attn_implementation == "sdpa"


def test_eager_attention_of_two_models_at_once_serves_each_its_own_taps():
    llama, gemma, pairs = tiny_model("llama"), tiny_model("gemma3"), tiny_pairs()
    site = Site("pattern", 1, head=0)
    alone = {m.name: capture(m, pairs.clean, [site])[site] for m in (llama, gemma)}
    registries = _registries()
    with hooks.eager_attention(llama):
        with hooks.eager_attention(gemma):
            for m in (llama, gemma):
                torch.testing.assert_close(
                    capture(m, pairs.clean, [site])[site], alone[m.name], atol=0, rtol=0
                )
        assert llama.hf.config._attn_implementation == hooks.PATTERN_ATTENTION
        assert gemma.hf.config._attn_implementation == "sdpa"
        torch.testing.assert_close(
            capture(llama, pairs.clean, [site])[site], alone[llama.name], atol=0, rtol=0
        )
    assert _registries() == registries


@pytest.mark.parametrize("family", FAMILIES)
def test_sites_written_as_transformerlens_names_or_our_text_are_the_same_sites(family):
    model, pairs = tiny_task(family)
    names = {
        "blocks.0.hook_resid_pre": Site("resid_pre", 0),
        "blocks.1.hook_resid_post": Site("resid_post", 1),
        "blocks.1.hook_attn_out": Site("attn_out", 1),
        "blocks.0.hook_mlp_out": Site("mlp_out", 0),
        "head[layer=1, head=2, pos=END]": Site("head", 1, head=2, pos="END"),
        "pattern[layer=0, head=1]": Site("pattern", 0, head=1),
    }
    by_name = capture(model, pairs.clean, list(names), named_positions=pairs.positions)
    by_site = capture(model, pairs.clean, list(names.values()), named_positions=pairs.positions)
    assert set(by_name) == set(by_site) == set(names.values())
    for site in by_site:
        torch.testing.assert_close(by_name[site], by_site[site], atol=0, rtol=0)
    for name, site in names.items():
        with patch(model, {name: by_site[site]}, named_positions=pairs.positions):
            named = model.last_logits(pairs.corrupt)
        with patch(model, {site: by_site[site]}, named_positions=pairs.positions):
            torch.testing.assert_close(
                named, model.last_logits(pairs.corrupt), atol=0, rtol=0, msg=name
            )
        assert not torch.allclose(named, model.last_logits(pairs.corrupt), atol=1e-6), (
            f"{name} patched nothing"
        )


@pytest.mark.parametrize("text", ["blocks.1.hook_nonsense", "head[layer=1, head=", "resid_pre"])
def test_a_site_string_that_does_not_parse_raises_the_parsers_error(text):
    from actpatch.sites import SiteError

    model, pairs = tiny_model("llama"), tiny_pairs()
    with pytest.raises(SiteError) as raised:
        Site.parse(text)
    with pytest.raises(SiteError, match=re.escape(str(raised.value))):
        capture(model, pairs.clean, [text])
    with (
        pytest.raises(SiteError, match=re.escape(str(raised.value))),
        patch(model, {text: torch.zeros(3, 6, 32)}),
    ):
        pass
    assert attached_hooks(model) == 0


def _noise(model, pairs, seed=3):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*pairs.clean.shape, model.dims.d_model, generator=generator)


@pytest.mark.parametrize("family", FAMILIES)
def test_capture_of_a_run_with_noise_is_capture_under_add_to_input(family):
    from actpatch.pairs import Run

    model, pairs = tiny_model(family), tiny_pairs()
    noise = _noise(model, pairs)
    sites = [Site("resid_pre", 0), Site("resid_post", 1, pos="X"), Site("pattern", 1, head=0)]
    with hooks.add_to_input(model, noise):
        want = capture(model, pairs.clean, sites, named_positions=pairs.positions)
    got = capture(model, Run(pairs.clean, noise, pairs.positions, "corrupt"), sites)
    plain = capture(model, pairs.clean, sites, named_positions=pairs.positions)
    for site in sites:
        torch.testing.assert_close(got[site], want[site], atol=0, rtol=0)
        assert not torch.allclose(got[site], plain[site]), f"{site}: the run's noise was not added"
    moved = capture(
        model,
        Run(pairs.clean, None, {"X": torch.tensor([0, 0, 0])}),
        [Site("resid_pre", 1, pos="X")],
        named_positions=pairs.positions,
    )  # named_positions= wins over the run's own
    torch.testing.assert_close(
        moved[Site("resid_pre", 1, pos="X")],
        capture(
            model, pairs.clean, [Site("resid_pre", 1, pos="X")], named_positions=pairs.positions
        )[Site("resid_pre", 1, pos="X")],
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_a_layer_0_resid_pre_patch_beats_input_noise_whichever_block_is_entered_first(family):
    model, pairs = tiny_model(family), tiny_pairs()
    noise = _noise(model, pairs)
    clean = capture(model, pairs.clean, [Site("resid_pre", 0)])
    want = model.last_logits(pairs.clean)
    with hooks.add_to_input(model, noise), patch(model, clean):
        noise_outside = model.last_logits(pairs.clean)
    with patch(model, clean), hooks.add_to_input(model, noise):
        noise_inside = model.last_logits(pairs.clean)
    torch.testing.assert_close(noise_outside, want, atol=1e-5, rtol=0)
    torch.testing.assert_close(noise_inside, want, atol=1e-5, rtol=0)
    with hooks.add_to_input(model, noise):
        assert not torch.allclose(
            model.last_logits(pairs.clean), want, atol=1e-4
        )  # the noise does move the run
    assert attached_hooks(model) == 0

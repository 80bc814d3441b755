"""The architecture table's comments are claims; these tests prove them on every family."""

import pytest
import torch
import transformers as tf

from actpatch import Model, Site, SiteError, UnsupportedArchitecture, capture
from actpatch.models.arch import ARCHS, dims_of
from tiny import FAMILIES, tiny_model, tiny_pairs


@pytest.mark.parametrize("family", FAMILIES)
def test_heads_through_output_projection_sum_to_its_output(family):
    """z split by head, each pushed through its slice of the output projection, sums to the projection's output."""
    model = tiny_model(family)
    tokens = tiny_pairs().clean
    z = capture(model, tokens, [Site("head", 1, head=h) for h in range(model.dims.n_heads)])
    o_proj = model.submodule(1, model.arch.o_proj)
    seen = {}
    handle = o_proj.register_forward_hook(lambda m, a, out: seen.setdefault("out", out.detach()))
    try:
        model.hf(tokens)
    finally:
        handle.remove()
    bias = o_proj.bias if o_proj.bias is not None else 0.0
    d_head = model.dims.d_head
    total = 0.0
    for h in range(model.dims.n_heads):
        zeros = torch.zeros(*tokens.shape, model.dims.n_heads * d_head)
        zeros[..., h * d_head : (h + 1) * d_head] = z[Site("head", 1, head=h)]
        total = total + o_proj(zeros) - bias
    torch.testing.assert_close(total, seen["out"] - bias, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "gemma3"])
def test_attn_out_is_the_output_projection_output(family):
    """Where attention adds its projection straight to the residual stream, attn_out is that projection."""
    model = tiny_model(family)
    tokens = tiny_pairs().clean
    got = capture(model, tokens, [Site("attn_out", 0)])[Site("attn_out", 0)]
    seen = {}
    o_proj = model.submodule(0, model.arch.o_proj)
    handle = o_proj.register_forward_hook(lambda m, a, out: seen.setdefault("out", out.detach()))
    try:
        model.hf(tokens)
    finally:
        handle.remove()
    torch.testing.assert_close(got, seen["out"])


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "pythia_parallel"])
def test_residual_sites_add_up(family):
    """resid_mid = resid_pre + attn_out and resid_post = resid_mid + mlp_out on sequential models."""
    model = tiny_model(family)
    sites = [Site(k, 1) for k in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out")]
    acts = {s.kind: v for s, v in capture(model, tiny_pairs().clean, sites).items()}
    torch.testing.assert_close(
        acts["resid_pre"] + acts["attn_out"], acts["resid_mid"], atol=1e-5, rtol=1e-5
    )
    torch.testing.assert_close(
        acts["resid_mid"] + acts["mlp_out"], acts["resid_post"], atol=1e-5, rtol=1e-5
    )


def test_parallel_model_adds_both_sublayers_to_resid_pre():
    model = tiny_model("pythia_parallel")
    sites = [Site(k, 0) for k in ("resid_pre", "resid_post", "attn_out", "mlp_out")]
    acts = {s.kind: v for s, v in capture(model, tiny_pairs().clean, sites).items()}
    torch.testing.assert_close(
        acts["resid_pre"] + acts["attn_out"] + acts["mlp_out"],
        acts["resid_post"],
        atol=1e-5,
        rtol=1e-5,
    )


def test_resid_mid_on_parallel_model_explains_why_not():
    with pytest.raises(SiteError, match=r"parallel.*no residual stream between them"):
        capture(tiny_model("pythia_parallel"), tiny_pairs().clean, [Site("resid_mid", 0)])


@pytest.mark.parametrize("family", FAMILIES)
def test_dims_match_the_modules(family):
    model = tiny_model(family)
    dims, config = model.dims, model.hf.config
    assert dims.n_layers == len(model.hf.get_submodule(model.arch.layers))
    o_proj = model.submodule(0, model.arch.o_proj)
    in_features = (
        o_proj.weight.shape[0] if family == "gpt2" else o_proj.in_features
    )  # Conv1D stores (in, out)
    assert in_features == dims.n_heads * dims.d_head
    k = capture(model, tiny_pairs().clean, [Site("k", 0, head=0)])[Site("k", 0, head=0)]
    assert k.shape[-1] == dims.d_head
    assert dims.n_kv_heads == getattr(config, "num_key_value_heads", dims.n_heads)


def test_unknown_family_names_the_class_and_the_table():
    config = tf.OPTConfig(
        num_hidden_layers=1,
        num_attention_heads=2,
        hidden_size=8,
        ffn_dim=16,
        vocab_size=50,
        max_position_embeddings=16,
        word_embed_proj_dim=8,
    )
    hf = tf.AutoModelForCausalLM.from_config(config)
    with pytest.raises(
        UnsupportedArchitecture, match=r"OPTForCausalLM.*models/arch\.py.*layers, attn, o_proj"
    ):
        Model.from_hf(hf)


def test_every_required_family_is_in_the_table():
    for name in (
        "GPT2LMHeadModel",
        "GPTNeoXForCausalLM",
        "LlamaForCausalLM",
        "Qwen2ForCausalLM",
        "MistralForCausalLM",
        "Gemma3ForCausalLM",
    ):
        assert name in ARCHS
    assert (
        dims_of(
            tf.LlamaConfig(num_attention_heads=9, num_key_value_heads=3, hidden_size=576)
        ).d_head
        == 64
    )

"""The architecture table: where each model family keeps the modules that our sites live on.

A family is data, not code. Every path is relative to one decoder layer (except `layers`), and its
comment says what that module's input or output *means* for activation patching. Sizes (heads,
KV heads, head dim) come from the HF config through `dims_of`, never from this table.
Adding a family is adding one entry to `ARCHS`; an unknown family raises `UnsupportedArchitecture`
naming the fields to fill.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Literal

from transformers import PretrainedConfig, PreTrainedModel

QkvLayout = Literal["separate", "concat", "interleaved"]


@dataclass(frozen=True)
class Arch:
    """Where one family's sites live. See the module docstring for the conventions."""

    family: str
    layers: str  # from the model root to the ModuleList of decoder layers (input = resid_pre, output = resid_post)
    attn_in_norm: str  # normalises the residual stream before attention: its input is resid_pre as attention reads it
    attn: str  # output (first element if a tuple) is what attention adds to the residual stream: attn_out
    o_proj: str  # its *input* is z, every head's output side by side: the `head` site
    qkv: tuple[str, str, str] | str  # three projections (outputs = q, k, v), or one fused module
    # its input is resid_mid (on sequential-residual models); its output is mlp_in, the MLP's input
    mlp_in_norm: str
    mlp: str  # output is what the MLP adds to the residual stream: mlp_out
    mlp_down: str  # its *input* is the MLP hidden units after the activation (and gate): the `neuron` site
    final_norm: str  # from the model root: the norm between the last resid_post and the unembedding
    qkv_layout: QkvLayout = (
        "separate"  # how a fused projection orders q, k, v (see `_fused_slices` in hooks)
    )
    parallel: bool | str = (
        False  # attention and MLP read the same resid_pre; or the config flag deciding it
    )

    def is_parallel(self, config: PretrainedConfig) -> bool:
        """Whether attention and MLP both read resid_pre, so that no resid_mid exists."""
        if isinstance(self.parallel, str):
            return bool(getattr(config, self.parallel))
        return self.parallel


@dataclass(frozen=True)
class Dims:
    """Sizes a sweep needs, read from the HF config."""

    n_layers: int
    n_heads: int
    n_kv_heads: (
        int  # < n_heads under grouped-query attention: one k/v head serves a group of query heads
    )
    d_head: int
    d_model: int
    d_mlp: int
    vocab: int


LLAMA = Arch(
    family="llama",
    layers="model.layers",
    attn_in_norm="input_layernorm",
    attn="self_attn",
    o_proj="self_attn.o_proj",
    qkv=("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
    mlp_in_norm="post_attention_layernorm",
    mlp="mlp",
    mlp_down="mlp.down_proj",
    final_norm="model.norm",
)
# Gemma 3 normalises each sublayer's output before adding it to the residual stream, so what
# attention and the MLP *add* is the output of those post-norms, not of the sublayers.
GEMMA3 = replace(
    LLAMA,
    family="gemma3",
    attn="post_attention_layernorm",
    mlp_in_norm="pre_feedforward_layernorm",
    mlp="post_feedforward_layernorm",
)
# GPT-2's c_attn emits [q | k | v], each d_model wide.
GPT2 = Arch(
    family="gpt2",
    layers="transformer.h",
    attn_in_norm="ln_1",
    attn="attn",
    o_proj="attn.c_proj",
    qkv="attn.c_attn",
    qkv_layout="concat",
    mlp_in_norm="ln_2",
    mlp="mlp",
    mlp_down="mlp.c_proj",
    final_norm="transformer.ln_f",
)
# GPT-NeoX's query_key_value emits, per head, [q_h | k_h | v_h]; Pythia runs attention and MLP in
# parallel (config.use_parallel_residual), and then there is no resid_mid.
GPT_NEOX = Arch(
    family="gpt_neox",
    layers="gpt_neox.layers",
    attn_in_norm="input_layernorm",
    attn="attention",
    o_proj="attention.dense",
    qkv="attention.query_key_value",
    qkv_layout="interleaved",
    mlp_in_norm="post_attention_layernorm",
    mlp="mlp",
    mlp_down="mlp.dense_4h_to_h",
    final_norm="gpt_neox.final_layer_norm",
    parallel="use_parallel_residual",
)

ARCHS: dict[str, Arch] = {
    "LlamaForCausalLM": LLAMA,
    "Qwen2ForCausalLM": replace(LLAMA, family="qwen2"),
    "MistralForCausalLM": replace(LLAMA, family="mistral"),
    "Gemma3ForCausalLM": GEMMA3,
    "GPT2LMHeadModel": GPT2,
    "GPTNeoXForCausalLM": GPT_NEOX,
}


class UnsupportedArchitecture(ValueError):
    """The model's class has no entry in the architecture table."""


def arch_of(model: PreTrainedModel) -> Arch:
    """The table entry for `model`'s class; raises with what to add when there is none."""
    name = type(model).__name__
    if name in ARCHS:
        return ARCHS[name]
    fields = "layers, attn, o_proj, qkv, mlp_in_norm, mlp, mlp_down, final_norm, attn_in_norm (and qkv_layout, parallel if they differ)"
    raise UnsupportedArchitecture(
        f"{name} is not in actpatch's architecture table. Add an entry for it to ARCHS in "
        f"src/actpatch/models/arch.py, giving the module paths {fields}; "
        f"supported classes: {', '.join(sorted(ARCHS))}."
    )


def dims_of(config: PretrainedConfig) -> Dims:
    """Layer, head and width sizes from an HF config, across the families' differing names."""
    n_heads = config.num_attention_heads
    d_model = config.hidden_size
    d_head = getattr(config, "head_dim", None) or d_model // n_heads
    d_mlp = (
        getattr(config, "intermediate_size", None)
        or getattr(config, "n_inner", None)
        or 4 * d_model
    )
    return Dims(
        n_layers=config.num_hidden_layers,
        n_heads=n_heads,
        n_kv_heads=getattr(config, "num_key_value_heads", None) or n_heads,
        d_head=d_head,
        d_model=d_model,
        d_mlp=d_mlp,
        vocab=config.vocab_size,
    )

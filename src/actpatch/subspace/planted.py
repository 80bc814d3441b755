"""Tiny models with a planted answer, for testing subspace searches and their guards.

Each is a real `transformers` GPT-2 (config class, modules and forward untouched) whose weights
are set by hand: attention and the second layer write nothing, so the final position's answer
depends only on its own token, A or B, through the first layer's MLP. The variable is "which of
A and B came last"; token P is the answer after A, Q after B.

- `genuine`: the MLP's neuron 0 stores the variable (1 or 3) and is the only neuron the down
  projection reads; the residual stream's own copy of the token is not read by the unembedding.
  Patching neuron 0 transfers the variable: a search should find it, and the guards pass.
- `illusion`: the residual stream carries the variable straight to the unembedding. Neuron 0
  varies with it but the down projection ignores it (null space); neuron 1 is read (it writes
  3·v) but is 0 on every input (dormant). Patching all neurons changes nothing, yet patching the
  line through (e0 + e1)/√2 flips the answer: Makelov et al.'s MLP-in-the-middle illusion.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import transformers as tf
from torch import Tensor

from actpatch.models.model import Model
from actpatch.pairs import PromptPairs
from actpatch.sites import Site

D_MODEL, D_MLP, VOCAB, SEQ = 8, 16, 12, 5
P, Q, A, B = 0, 1, 2, 3  # answer tokens, then the two values of the variable; the rest are fillers


@dataclass(frozen=True)
class Planted:
    """A planted model, prompt pairs for it, the site that holds the variable, and the direction
    a search should find there (the illusory one for `illusion`)."""

    model: Model
    pairs: PromptPairs
    site: Site
    direction: Tensor


def planted(kind: Literal["genuine", "illusion"], *, n_pairs: int = 32, seed: int = 0) -> Planted:
    """The planted model of `kind` with `n_pairs` pairs of random filler prompts (half ending in
    A with B in the corrupt prompt, half the other way round)."""
    if kind not in ("genuine", "illusion"):
        raise ValueError(f"kind is 'genuine' or 'illusion', got {kind!r}")
    hf = tf.GPT2LMHeadModel(
        tf.GPT2Config(
            n_layer=2,
            n_head=2,
            n_embd=D_MODEL,
            n_inner=D_MLP,
            n_positions=16,
            vocab_size=VOCAB,
            activation_function="relu",
            tie_word_embeddings=False,
            bos_token_id=0,
            eos_token_id=0,
        )
    )
    _set_weights(hf, kind)
    model = Model.from_hf(hf.eval().requires_grad_(False), name=f"planted-{kind}")
    site = Site("neuron", 0, pos="END")
    e = torch.eye(D_MLP)
    direction = e[0] if kind == "genuine" else (e[0] + e[1]) / math.sqrt(2)
    return Planted(model, _pairs(n_pairs, seed), site, direction)


def _set_weights(hf: tf.GPT2LMHeadModel, kind: str) -> None:
    e = torch.eye(D_MODEL)
    v, v_other, w, filler = e[0] - e[1], e[2] - e[3], e[4] - e[5], e[6] - e[7]  # all mean-zero
    # The token's copy of the variable: read by the unembedding (illusion) or only by the MLP.
    carrier = v if kind == "illusion" else v_other
    with torch.no_grad():
        for parameter in hf.parameters():
            parameter.zero_()
        for module in hf.modules():
            if isinstance(module, torch.nn.LayerNorm):
                module.weight.fill_(1.0)
        wte = hf.transformer.wte.weight
        wte[:] = w
        wte[A], wte[B] = carrier + w, -carrier + w
        for token in range(B + 1, VOCAB):
            wte[token] = w + (token - (B + 1 + VOCAB - 1) / 2) / 2 * filler
        mlp = hf.transformer.h[0].mlp  # GPT-2 Conv1D: weight is (in, out)
        # LayerNorm maps ±carrier + w (variance 1/2) to √2 times itself: neuron 0 = 2 ± 1.
        mlp.c_fc.weight[:, 0] = carrier / (2 * math.sqrt(2))
        mlp.c_fc.bias[0] = 2.0
        if kind == "genuine":
            mlp.c_proj.weight[0] = v  # writes (h0 − 2)·v: ±v
            mlp.c_proj.bias[:] = -2 * v
        else:
            mlp.c_proj.weight[1] = 3 * v  # the dormant neuron 1 (always 0) would write 3·h1·v
        hf.lm_head.weight[P], hf.lm_head.weight[Q] = 2 * v, -2 * v


def _pairs(n: int, seed: int) -> PromptPairs:
    generator = torch.Generator().manual_seed(seed)
    clean = torch.randint(B + 1, VOCAB, (n, SEQ), generator=generator)
    corrupt = clean.clone()
    ends_in_a = torch.arange(n) % 2 == 0
    clean[:, -1] = torch.where(ends_in_a, A, B)
    corrupt[:, -1] = torch.where(ends_in_a, B, A)
    answers = torch.where(ends_in_a, P, Q)
    return PromptPairs(
        clean,
        corrupt,
        answers,
        P + Q - answers,
        positions={"END": torch.full((n,), SEQ - 1)},
        task="planted",
        seed=seed,
    )

"""Tiny randomly initialised models of every family in the architecture table, for mechanics tests.

Two layers, a few heads, a small vocabulary, a fixed seed: each builds and runs in well under a
second. Weights are drawn wider than the families' defaults so that patches move logits visibly.

Models and solved pairs (`tiny_task`) are built once per session and shared by every test, so no
analysis may change them: `touched()` compares each with what it was when built, and conftest
runs it after every test module. A test that changes weights on purpose builds its own model."""

from __future__ import annotations

import dataclasses
import functools
import tempfile

import torch
import transformers as tf

from actpatch import Model, PromptPairs
from actpatch.engine.collect import baseline

VOCAB = 101
_COMMON = dict(vocab_size=VOCAB, max_position_embeddings=64, initializer_range=0.2)
CONFIGS = {
    "gpt2": lambda: tf.GPT2Config(
        n_layer=2,
        n_head=4,
        n_embd=32,
        n_positions=64,
        vocab_size=VOCAB,
        bos_token_id=0,
        eos_token_id=0,
        initializer_range=0.2,
    ),
    "gpt_neox": lambda: tf.GPTNeoXConfig(
        num_hidden_layers=2,
        num_attention_heads=4,
        hidden_size=32,
        intermediate_size=64,
        use_parallel_residual=False,
        **_COMMON,
    ),
    "pythia_parallel": lambda: tf.GPTNeoXConfig(
        num_hidden_layers=2,
        num_attention_heads=4,
        hidden_size=32,
        intermediate_size=64,
        use_parallel_residual=True,
        **_COMMON,
    ),
    "llama": lambda: tf.LlamaConfig(
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_size=32,
        intermediate_size=64,
        **_COMMON,
    ),
    "qwen2": lambda: tf.Qwen2Config(
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_size=32,
        intermediate_size=64,
        **_COMMON,
    ),
    "mistral": lambda: tf.MistralConfig(
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=1,
        hidden_size=32,
        intermediate_size=64,
        **_COMMON,
    ),
    "gemma3": lambda: tf.Gemma3TextConfig(
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_size=32,
        head_dim=8,
        intermediate_size=64,
        sliding_window=4,
        **_COMMON,
    ),
}
FAMILIES = tuple(CONFIGS)


# What each shared model and task was when built: (what it is, a flat copy of its numbers).
_BUILT: dict[str, tuple[object, torch.Tensor]] = {}


@functools.cache
def tiny_model(family: str, dtype: torch.dtype = torch.float32) -> Model:
    """The family's tiny model, shared by every test; in another dtype, the same float32 weights
    saved and loaded with `from_pretrained(dtype=...)`, as a real checkpoint would be: it keeps
    some buffers (rotary frequencies) in float32, where casting the whole module rounds them."""
    torch.manual_seed(0)
    hf = tf.AutoModelForCausalLM.from_config(CONFIGS[family]())
    if dtype != torch.float32:
        with tempfile.TemporaryDirectory() as folder:
            hf.save_pretrained(folder)
            hf = tf.AutoModelForCausalLM.from_pretrained(folder, dtype=dtype)
    model = Model.from_hf(hf.eval().requires_grad_(False), name=f"tiny-{family}")
    _BUILT[f"tiny_model({family!r}, {dtype})"] = (model, _numbers(model))
    return model


@functools.cache
def tiny_task(
    family: str = "llama",
    dtype: torch.dtype = torch.float32,
    *,
    batch: int = 3,
    seq: int = 6,
    seed: int = 1,
) -> tuple[Model, PromptPairs]:
    """`with_answers(tiny_model(family, dtype), tiny_pairs(batch, seq, seed))`, built once per
    session and shared: the model and the pairs every mechanics test starts from."""
    model, pairs = with_answers(tiny_model(family, dtype), tiny_pairs(batch, seq, seed))
    name = f"tiny_task({family!r}, {dtype}, batch={batch}, seq={seq}, seed={seed})"
    _BUILT[name] = (pairs, _numbers(pairs))
    return model, pairs


def touched() -> list[str]:
    """The shared models and pairs that no longer hold the numbers they were built with, or that
    still carry hooks: a test or an analysis changed what later tests read."""
    from actpatch import hooks

    found = []
    for name, (built, numbers) in _BUILT.items():
        if not torch.equal(_numbers(built), numbers):
            found.append(f"{name}: its numbers changed")
        if isinstance(built, Model) and hooks.attached_hooks(built):
            found.append(f"{name}: {hooks.attached_hooks(built)} hooks left attached")
    return found


def forget() -> None:
    """Build every model and task afresh on next use: after `touched()` found one changed, so that
    later modules do not fail for what an earlier one did."""
    tiny_model.cache_clear()
    tiny_task.cache_clear()
    _BUILT.clear()


def _numbers(built: Model | PromptPairs) -> torch.Tensor:
    """Every number a model (weights, buffers) or pairs (tokens, answers, positions, noise) hold."""
    if isinstance(built, Model):
        tensors = [*built.hf.parameters(), *built.hf.buffers()]
    else:
        tensors = [built.clean, built.corrupt, built.answers, built.wrong]
        tensors += list(built.positions.values())
        tensors += [] if built.corrupt_noise is None else [built.corrupt_noise]
    return torch.cat([t.detach().flatten().double().cpu() for t in tensors])


def tiny_pairs(batch: int = 3, seq: int = 6, seed: int = 1) -> PromptPairs:
    """Random clean/corrupt token ids that differ at every position but the first and the third."""
    generator = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, VOCAB, (batch, seq), generator=generator)
    corrupt = torch.randint(0, VOCAB, (batch, seq), generator=generator)
    corrupt[:, 0], corrupt[:, 2] = clean[:, 0], clean[:, 2]
    answers = torch.randint(0, VOCAB, (batch,), generator=generator)
    wrong = (answers + 1 + torch.randint(0, VOCAB - 1, (batch,), generator=generator)) % VOCAB
    named = {"X": torch.tensor([1, 3, 4, 1, 3, 4][:batch]), "END": torch.full((batch,), seq - 1)}
    return PromptPairs(clean, corrupt, answers, wrong, positions=named)


def random_pairs(
    model: Model, batch: int, *, seq: int = 6, seed: int = 1, changed: list[int] | None = None
) -> PromptPairs:
    """`batch` random pairs (any size, unlike tiny_pairs), answers chosen as in `with_answers`.

    The corrupt run differs from the clean one at `changed` positions only (default: all but 0
    and 2)."""
    generator = torch.Generator().manual_seed(seed)
    clean = torch.randint(0, VOCAB, (batch, seq), generator=generator)
    corrupt = clean.clone()
    for pos in [p for p in range(seq) if p not in (0, 2)] if changed is None else changed:
        shift = 1 + torch.randint(0, VOCAB - 1, (batch,), generator=generator)
        corrupt[:, pos] = (clean[:, pos] + shift) % VOCAB
    zeros = torch.zeros(batch, dtype=torch.long)
    named = {"END": torch.full((batch,), seq - 1)}
    pairs = PromptPairs(clean, corrupt, zeros, zeros + 1, positions=named)
    return with_answers(model, pairs)[1]


def with_answers(model: Model, pairs: PromptPairs) -> tuple[Model, PromptPairs]:
    """`model` and `pairs` with, per prompt, the answer the clean run favours most over the corrupt
    run and the wrong answer it favours least: random weights do no task, and sweeps refuse pairs
    whose clean run does not beat the corrupt one."""
    base = baseline(model, pairs, check=False)  # the corrupt run with its input noise, if any
    shift = base.clean_logits - base.corrupt_logits
    return model, dataclasses.replace(pairs, answers=shift.argmax(-1), wrong=shift.argmin(-1))


def linear_head_model(family: str) -> Model:
    """A tiny float64 model of its own (not shared) whose final norm is removed, so the logit
    difference is linear in the last resid_post and in the last mlp_out: there, AtP is exact."""
    torch.manual_seed(0)
    hf = (
        tf.AutoModelForCausalLM.from_config(CONFIGS[family]()).double().eval().requires_grad_(False)
    )
    model = Model.from_hf(hf, name=f"tiny-linear-{family}")
    parent, _, name = model.arch.final_norm.rpartition(".")
    setattr(hf.get_submodule(parent), name, torch.nn.Identity())
    return model

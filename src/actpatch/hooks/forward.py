"""Running the model on a `Run`: its final-position logits, with the run's input noise added.

The one place that calls the HF model's forward (`final_logits`, and `resid_post_only` for reads
that stop at a layer; the batched engine's resumed forwards aside): `last_logits` is what every unpatched or patched run of the library reads, and
`add_to_input` is how a Run's noise gets in.
Not here: what is patched (the taps in `taps.py`, attached by `attach.py`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from actpatch.hooks import attach
from actpatch.hooks.errors import PatchShapeError
from actpatch.models.model import Model, check_token_tensor
from actpatch.run import Run


@torch.no_grad()
def last_logits(model: Model, run: Run | Tensor) -> Tensor:
    """Logits at the final position, (batch, vocab), float32: the only position our metrics read.

    Takes a `Run` (`pairs.clean_run`, `pairs.corrupt_run`: a noise corruption's input noise is
    added) or token ids. `logits_to_keep=1` unembeds the final position alone, which is exact
    and skips most of the unembedding's cost."""
    tokens, noise = (run.tokens, run.noise) if isinstance(run, Run) else (run, None)
    check_token_tensor(tokens)
    with add_to_input(model, noise):
        return final_logits(model, tokens).float()


def final_logits(model: Model, tokens: Tensor | None = None, **forward: Any) -> Tensor:
    """The HF model's forward, unembedding the final position alone: logits (batch, vocab) in the
    model's dtype, with gradients where the caller enables them.

    `tokens` (batch, pos), or `inputs_embeds=`; other keywords go to the forward (a cache to fill;
    no cache by default). Every forward of the library runs through here, except the batched
    engine's, which resume layers and reuse a key/value prefix (`engine/batched.py`)."""
    if tokens is not None:
        forward["input_ids"] = tokens.to(model.device)
    forward.setdefault("use_cache", False)
    return model.hf(**forward, logits_to_keep=1).logits[:, -1]


@contextmanager
def add_to_input(model: Model, offset: Tensor | None) -> Iterator[None]:
    """Add `offset` (batch, pos, d_model) to the first decoder layer's input in every forward of
    the block; nothing when `offset` is None.

    This is how a Gaussian-noise corruption's corrupt run is made from its clean tokens. The
    offset is added before every other hook on that input, whichever block was entered first:
    a capture reads the noisy input, and a layer-0 `resid_pre` patch overrides it."""
    if offset is None:
        yield
        return

    def add(hidden: Tensor) -> Tensor:
        if hidden.shape != offset.shape:
            raise PatchShapeError(
                f"input noise of shape {tuple(offset.shape)} cannot be added to the first layer's "
                f"input {tuple(hidden.shape)}: the noise was made for other prompts"
            )
        return hidden + offset.to(device=hidden.device, dtype=hidden.dtype)

    with attach.pre_hook(model.layer(0), add, prepend=True):
        yield


class _Reached(Exception):
    """Raised by the tap of `resid_post_only`: nothing after its layer is needed."""


@torch.no_grad()
def resid_post_only(model: Model, tokens: Tensor, layer: int) -> Tensor:
    """`resid_post` of `layer` on `tokens`, (batch, pos, d_model), from a forward that stops there.

    For reading many activations (training a dictionary on text): the layers above `layer` and
    the unembedding never run, which halves the cost of a mid-depth read."""
    found: list[Tensor] = []

    def keep(hidden: Tensor) -> None:
        found.append(hidden.detach())
        raise _Reached

    with attach.output_hook(model.layer(layer), keep), contextlib.suppress(_Reached):
        model.hf(input_ids=tokens.to(model.device), use_cache=False)
    return found[0]

"""Running the model: `forward`, the one function that calls the HF model's forward or replays its
decoder layers, and returns final-position logits.

Every forward of the library goes through it: a run's input noise is added there, taps are
attached around it, stacked copies are laid out there, and a forward resumed at a layer calls the
real decoder layers with the arguments a recorded run gave them (masks, position embeddings and a
key/value prefix as the model itself built them, so none is re-implemented). `last_logits` and
`final_logits` are its two common uses; `resid_post_only` a read that stops at a layer.
Not here: what is patched (the taps in `taps.py`, attached by `attach.py`), and recording the runs a
forward resumes from (`recorded.py`).
"""

from __future__ import annotations

import contextlib
import copy
import inspect
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from transformers import DynamicCache

from actpatch.hooks import attach
from actpatch.hooks.errors import PatchShapeError
from actpatch.hooks.stack import stacked
from actpatch.models.model import Model, check_token_tensor
from actpatch.run import Run


@dataclass(eq=False)
class Recorded:
    """A run as a resumed forward replays it: each decoder layer's (args, kwargs) over the run's
    positions from some position p on (hidden states, masks, position embeddings), each put on its
    layer's device, and the key/value cache of the positions before p (None when p is 0).
    Made by `recorded.record` and `recorded.Recordings`."""

    calls: list[tuple[tuple, dict]]
    cache: DynamicCache | None = None


def forward(
    model: Model,
    run: Run | None,
    *,
    taps: Sequence[AbstractContextManager[Any]] = (),
    copies: int | Sequence[int] = 1,
    layer: int = 0,
    recorded: Recorded | None = None,
    trim: bool = False,
    cache: DynamicCache | None = None,
    embeds: Tensor | None = None,
) -> Tensor:
    """Final-position logits (copies·batch, vocab) of `run`, with gradients where the caller
    enables them: the only call of the HF model's forward and the only replay of its layers.
    In the model's dtype; float32 from a resumed forward (its unembedding is `Model.unembed`'s).

    - `taps`: context managers attaching this forward's hooks (`patch_copies`, edge taps, ...),
      entered in order inside the run's input noise, which is always added first.
    - `copies`: how many stacked copies of the run, copy-major (`stack.py`); resumed, the layer
      each copy joins the stack at instead (ascending, the first of them `layer`).
    - `layer` with `recorded` (a recording of `run`): resume at this decoder layer. Layers below
      it would only recompute the recorded run, so they do not run; the copies start from its
      recorded hidden states, and a recording that starts after position 0 brings its key/value
      prefix. A resumed forward adds no input noise: the recording carries it.
    - `trim`: the last layer's MLP at the final position only (`last_mlp_at_final_position`), when
      nothing in that MLP is read or written at other positions.
    - `cache`: a cache the HF forward fills (from what it already holds: a prefix); None runs
      without one. `embeds`: input embeddings in place of `run`'s tokens (`run` may be None)."""
    joins = [layer] * copies if isinstance(copies, int) else list(copies)
    if not joins or joins != sorted(joins) or joins[0] != layer:
        raise ValueError(
            f"copies join the stack at ascending layers from layer {layer} on, got {copies!r}"
        )
    if layer != 0 and recorded is None:
        raise ValueError(f"a forward resumed at layer {layer} needs the run's recording")
    noise = None if run is None or run.noise is None else stacked(run.noise, len(joins))
    with ExitStack() as stack:
        if recorded is None:
            stack.enter_context(add_to_input(model, noise))
        if trim:
            stack.enter_context(last_mlp_at_final_position(model))
        for tap in taps:
            stack.enter_context(tap)
        if recorded is not None:
            return _replay(model, len(run), recorded, joins)
        keywords: dict[str, Any] = (
            {"inputs_embeds": embeds}
            if embeds is not None
            else {"input_ids": stacked(run.tokens, len(joins)).to(model.device)}
        )
        if cache is not None:
            keywords.update(cache_argument(model.hf, cache))
        return model.hf(**keywords, use_cache=cache is not None, logits_to_keep=1).logits[:, -1]


@torch.no_grad()
def last_logits(model: Model, run: Run | Tensor) -> Tensor:
    """Logits at the final position, (batch, vocab), float32: the only position our metrics read.

    Takes a `Run` (`pairs.clean_run`, `pairs.corrupt_run`: a noise corruption's input noise is
    added) or token ids. Unembedding the final position alone is exact and skips most of the
    unembedding's cost."""
    if not isinstance(run, Run):
        run = Run(run)
    check_token_tensor(run.tokens)
    return forward(model, run).float()


def final_logits(
    model: Model,
    tokens: Tensor | None = None,
    *,
    inputs_embeds: Tensor | None = None,
    cache: DynamicCache | None = None,
) -> Tensor:
    """`forward` on token ids (batch, pos) or `inputs_embeds`: logits (batch, vocab) in the model's
    dtype, with gradients where the caller enables them; `cache` for the forward to fill."""
    run = None if tokens is None else Run(tokens)
    return forward(model, run, cache=cache, embeds=inputs_embeds)


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


@contextmanager
def last_mlp_at_final_position(model: Model) -> Iterator[None]:
    """Under the block the last decoder layer's MLP runs at the final position only (its output
    elsewhere is 0): for forwards that read nothing but the final-position logits, where its
    output at other positions reaches nothing. Not with sites in that MLP at other positions."""
    last_mlp = model.submodule(model.dims.n_layers - 1, model.arch.mlp)
    with attach.registered(final_position_only(last_mlp)):
        yield


def final_position_only(mlp: nn.Module) -> list[attach.Registration]:
    """Hooks that run `mlp` (which acts on each position alone) at the final position only and
    return its output there, zeros elsewhere: the last layer's MLP output at other positions
    reaches nothing the final-position logits (or their gradients) depend on."""
    shapes: list[torch.Size] = []

    def first(module, args, kwargs):
        shapes.append(args[0].shape)
        return (args[0][:, -1:], *args[1:]), kwargs

    def padded(module, args, output):
        last = output[0] if isinstance(output, tuple) else output
        full = last.new_zeros(*shapes.pop()[:2], last.shape[-1])
        full[:, -1:] = last
        return (full, *output[1:]) if isinstance(output, tuple) else full

    return [(mlp, first, "pre"), (mlp, padded, "out")]


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

    with contextlib.suppress(_Reached):
        forward(model, Run(tokens), taps=[attach.output_hook(model.layer(layer), keep)])
    return found[0]


def cache_argument(hf: Any, cache: DynamicCache | None) -> dict[str, Any]:
    """The cache keyword the installed transformers takes: `cache` (5.2x on), `past_key_values` before.

    Passing the old name to a release that renamed it floods every sweep with a FutureWarning."""
    takes_cache = "cache" in inspect.signature(hf.forward).parameters
    return {"cache" if takes_cache else "past_key_values": cache}


def layer_devices(model: Model) -> list[torch.device]:
    """Where each decoder layer computes (several devices under a `device_map`)."""
    return [_device_of(model.layer(i), model.device) for i in range(model.dims.n_layers)]


def head_device(model: Model) -> torch.device:
    """Where the final norm, and so the unembedding of a resumed forward, computes."""
    return _device_of(model.hf.get_submodule(model.arch.final_norm), model.device)


# --- the layer replay -------------------------------------------------------------------------


def _replay(model: Model, batch: int, recorded: Recorded, joins: list[int]) -> Tensor:
    """The decoder layers from `joins[0]` on, each copy joining the stack at its own layer with the
    recorded hidden states there; then the final position's unembedding."""
    n_layers = model.dims.n_layers
    present = [sum(1 for join in joins if join <= j) for j in range(n_layers)]  # copies at layer j
    cache = _repeated_cache(recorded.cache, present, batch)
    devices = layer_devices(model)
    hidden = None
    for index in range(joins[0], n_layers):
        args, kwargs = recorded.calls[index]
        if hidden is not None:
            hidden = hidden.to(
                devices[index]
            )  # the previous layer's output, to this layer's device
        joining = present[index] - (present[index - 1] if index > joins[0] else 0)
        hidden = _joined(hidden, _first(args, kwargs), joining)
        call_args, call_kwargs = _expanded(args, kwargs, hidden, batch, present[index], cache)
        output = model.layer(index)(*call_args, **call_kwargs)
        hidden = output[0] if isinstance(output, tuple) else output
    return model.unembed(hidden[:, -1].to(head_device(model)))


def _device_of(module: torch.nn.Module, fallback: torch.device) -> torch.device:
    """Where `module` computes: accelerate's execution device when a device map put a hook on it,
    else the device of its first parameter."""
    hook_device = getattr(getattr(module, "_hf_hook", None), "execution_device", None)
    if hook_device is not None:
        return torch.device(hook_device)  # an int means that CUDA device
    parameter = next(module.parameters(), None)
    # no parameters (an Identity norm): the model's
    return fallback if parameter is None else parameter.device


def _first(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _joined(hidden: Tensor | None, target_hidden: Tensor, new: int) -> Tensor:
    """`new` copies of the recorded hidden states appended to the stack (copy-major)."""
    if new == 0:
        return hidden
    joining = stacked(target_hidden, new)
    return joining if hidden is None else torch.cat([hidden, joining])


def _repeated_cache(
    cache: DynamicCache | None, present: list[int], batch: int
) -> DynamicCache | None:
    """A private copy of the prefix cache, layer j repeated for the copies present there
    (copy-major); layers append to it as they run, so each forward needs its own."""
    if cache is None:
        return None
    fresh = copy.deepcopy(cache)
    for layer, count in zip(fresh.layers, present):
        if count > 1:
            layer.batch_select_indices(stacked(torch.arange(batch), count))
    return fresh


def _expanded(
    args: tuple, kwargs: dict, hidden: Tensor, batch: int, k: int, cache: Any
) -> tuple[tuple, dict]:
    """A layer's recorded call, with our hidden states, per-prompt tensors repeated for k copies,
    and our cache."""

    def expand(value: Any) -> Any:
        if isinstance(value, DynamicCache) or (cache is None and value is None):
            return cache if isinstance(value, DynamicCache) else value
        if (
            isinstance(value, Tensor)
            and value.ndim > 0
            and value.shape[0] == batch
            and batch > 1
            and k > 1
        ):
            return stacked(value, k)
        if isinstance(value, tuple):
            return tuple(expand(v) for v in value)
        return value

    if args:
        return (hidden, *(expand(a) for a in args[1:])), {
            key: expand(v) for key, v in kwargs.items()
        }
    return args, {**{key: expand(v) for key, v in kwargs.items()}, "hidden_states": hidden}

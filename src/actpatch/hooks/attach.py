"""Where each site kind lives on the model, and the torch hooks that put a tap there.

Every hook is registered inside a context manager and removed in its `finally`, so a call removes
exactly what it attached, on success and on error. What a tap does is `taps.py`'s job; pattern
taps go through the attention function instead (`attention.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager

from torch import Tensor, nn

from actpatch.hooks import attention
from actpatch.models.model import Model

Tap = Callable[[Tensor], "Tensor | None"]


@contextmanager
def attached(model: Model, taps: Sequence[tuple[str, int, Tap]]) -> Iterator[None]:
    """Attach each (kind, layer, tap) where `kind` lives in decoder layer `layer`, for the block."""
    with ExitStack() as stack:
        for kind, layer, tap in taps:
            for hook in _hooks(model, kind, layer, tap):
                stack.enter_context(hook)
        yield


@contextmanager
def pre_hook(module: nn.Module, tap: Tap, *, prepend: bool = False) -> Iterator[None]:
    """Tap a module's first input (positional, or the `hidden_states` keyword); `prepend` runs it
    before every hook already on the module."""

    def hook(mod, args, kwargs):
        if args:
            new = tap(args[0])
            return None if new is None else ((new, *args[1:]), kwargs)
        new = tap(kwargs["hidden_states"])
        return None if new is None else (args, {**kwargs, "hidden_states": new})

    handle = module.register_forward_pre_hook(hook, with_kwargs=True, prepend=prepend)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def output_hook(module: nn.Module, tap: Tap) -> Iterator[None]:
    """Tap a module's output, or its first element when the module returns a tuple."""

    def hook(mod, args, output):
        if isinstance(output, tuple):
            new = tap(output[0])
            return None if new is None else (new, *output[1:])
        return tap(output)

    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def call_hook(module: nn.Module, see: Callable[[tuple, dict], None]) -> Iterator[None]:
    """Show `see` the (args, kwargs) of every call of `module`; it changes nothing."""
    handle = module.register_forward_pre_hook(
        lambda mod, args, kwargs: see(args, kwargs), with_kwargs=True
    )
    try:
        yield
    finally:
        handle.remove()


def _hooks(model: Model, kind: str, layer: int, tap: Tap) -> list[AbstractContextManager[None]]:
    """Context managers that attach `tap` where `kind` lives in decoder layer `layer`."""
    arch = model.arch
    if kind == "pattern":
        return [attention.pattern_tap(model, layer, tap)]
    # A WriteTap, or a feature tap whose basis writes resid_mid.
    if kind == "resid_mid" and hasattr(tap, "remember_resid_pre"):
        # Written through attn_out, which needs the layer's input seen earlier in the same forward.
        return [
            pre_hook(model.layer(layer), tap.remember_resid_pre),
            output_hook(model.submodule(layer, arch.attn), tap),
        ]
    where: dict[str, tuple[str | None, Callable]] = {
        "resid_pre": (None, pre_hook),
        "resid_post": (None, output_hook),
        "resid_mid": (arch.mlp_in_norm, pre_hook),
        "attn_out": (arch.attn, output_hook),
        "mlp_out": (arch.mlp, output_hook),
        "mlp_in": (arch.mlp_in_norm, output_hook),
        "head": (arch.o_proj, pre_hook),
        "neuron": (arch.mlp_down, pre_hook),
        "q": (_qkv_path(arch, 0), output_hook),
        "k": (_qkv_path(arch, 1), output_hook),
        "v": (_qkv_path(arch, 2), output_hook),
    }
    path, hook = where[kind]
    module = model.layer(layer) if path is None else model.submodule(layer, path)
    return [hook(module, tap)]


def _qkv_path(arch, which: int) -> str:
    return arch.qkv if isinstance(arch.qkv, str) else arch.qkv[which]

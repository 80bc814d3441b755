"""The one place hooks are registered: torch hooks on modules, and our entry in transformers'
registries (the attention function pattern sites run under).

Every registration is made inside a context manager and removed in its `finally`, so a call
removes exactly what it attached, on success and on error; no other module registers anything
(a test scans the tree). Where each site kind lives is `placement.py`'s job, what a tap does
`taps.py`'s.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from typing import Any, Literal

from torch import Tensor, nn

Tap = Callable[[Tensor], "Tensor | None"]
# A torch hook and when it runs: "pre" before the module, hook(module, args, kwargs) returning
# None or new (args, kwargs); "out" after it, hook(module, args, output) returning None or a new output.
Registration = tuple[nn.Module, Callable[..., Any], Literal["pre", "out"]]


@contextmanager
def registered(registrations: Sequence[Registration], *, prepend: bool = False) -> Iterator[None]:
    """Register each (module, hook, "pre" | "out") for the block, in order; remove exactly those
    after it. `prepend` puts pre-hooks before every hook already on their module."""
    with ExitStack() as stack:
        for module, hook, when in registrations:
            if when == "pre":
                handle = module.register_forward_pre_hook(hook, with_kwargs=True, prepend=prepend)
            else:
                handle = module.register_forward_hook(hook)
            stack.callback(handle.remove)
        yield


def pre_hook(module: nn.Module, tap: Tap, *, prepend: bool = False) -> AbstractContextManager:
    """Tap a module's first input (positional, or the `hidden_states` keyword); `prepend` runs it
    before every hook already on the module."""

    def hook(mod, args, kwargs):
        if args:
            new = tap(args[0])
            return None if new is None else ((new, *args[1:]), kwargs)
        new = tap(kwargs["hidden_states"])
        return None if new is None else (args, {**kwargs, "hidden_states": new})

    return registered([(module, hook, "pre")], prepend=prepend)


def output_hook(module: nn.Module, tap: Tap) -> AbstractContextManager:
    """Tap a module's output, or its first element when the module returns a tuple."""

    def hook(mod, args, output):
        if isinstance(output, tuple):
            new = tap(output[0])
            return None if new is None else (new, *output[1:])
        return tap(output)

    return registered([(module, hook, "out")])


def call_hook(module: nn.Module, see: Callable[[tuple, dict], None]) -> AbstractContextManager:
    """Show `see` the (args, kwargs) of every call of `module`; it changes nothing."""
    return registered([(module, lambda mod, args, kwargs: see(args, kwargs), "pre")])


def on_gradient(tensor: Tensor, hook: Callable[[Tensor], Tensor | None]) -> None:
    """Call `hook` with `tensor`'s gradient in the backward (returning None, or the gradient to
    pass on instead). A tensor hook belongs to that tensor and goes with its graph: nothing
    stays on the model to remove."""
    tensor.register_hook(hook)


@contextmanager
def registry_entry(interface: type, name: str, function: Callable) -> Iterator[None]:
    """Register `function` under `name` with a transformers registry class (`AttentionInterface`,
    the mask functions), and put back on exit exactly what it held under that name before.
    `register` writes the class-wide `_global_mapping` (transformers.utils.generic.GeneralInterface),
    so that is what is restored."""
    mapping = interface._global_mapping
    had, before = name in mapping, mapping.get(name)
    interface.register(name, function)
    try:
        yield
    finally:
        if had:
            interface._global_mapping[name] = before
        else:
            interface._global_mapping.pop(name, None)

"""Where each site kind lives on the model: a (kind, layer, tap) triple becomes hooks on the
modules the architecture table names, registered through `attach.py`.

`resid_pre` is a decoder layer's input and `resid_post` its output; `head` the input of the output
projection, `q/k/v` the projections' outputs, `neuron` the down projection's input, and so on
(docs/ARCHITECTURE.md). Pattern taps go through the attention function instead (`attention.py`).
Not here: what a tap does with what it sees (`taps.py`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager

from actpatch.hooks import attention
from actpatch.hooks.attach import Tap, output_hook, pre_hook
from actpatch.models.model import Model


@contextmanager
def attached(model: Model, taps: Sequence[tuple[str, int, Tap]]) -> Iterator[None]:
    """Attach each (kind, layer, tap) where `kind` lives in decoder layer `layer`, for the block."""
    with ExitStack() as stack:
        for kind, layer, tap in taps:
            for hook in _hooks(model, kind, layer, tap):
                stack.enter_context(hook)
        yield


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

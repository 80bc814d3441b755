"""The temporary eager attention that exposes attention probabilities, for one call.

Probabilities (`pattern` sites) and the post-rotary query and key (`attention_inputs`) live inside
the attention function, not at any module's input or output, so no module hook can reach them.
For the length of a call, `eager_attention` registers with transformers' `AttentionInterface` the
bound method of a per-call `EagerAttention`, which runs the family's own eager attention and lets
that call's taps read or rewrite the probabilities. On exit it restores exactly what the attention
and mask registries held under our name before (nothing, usually) and the model's own attention
implementation. Nested calls on the same model find the active call through what is registered.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from actpatch.hooks.attach import registry_entry
from actpatch.models.arch import UnsupportedArchitecture
from actpatch.models.model import Model

log = logging.getLogger(__name__)

PATTERN_ATTENTION = "actpatch_eager"  # the attention function pattern sites run under
Tap = Callable[[Tensor], "Tensor | None"]


class EagerAttention:
    """One call's eager attention: its bound `forward` is what `AttentionInterface` holds meanwhile.

    It holds the call's pattern taps and q/k records, keyed by attention module. `outer` is the
    one that was registered when this one was made (another model's call), which still serves
    that model's attention modules."""

    def __init__(self, model: Model, outer: EagerAttention | None):
        self.model, self.outer = model, outer
        self.eager = _family_eager(model)
        self.pattern_taps: dict[nn.Module, list[Tap]] = {}
        self.qk_records: dict[nn.Module, dict[str, Any]] = {}

    def serving(self, model: Model) -> EagerAttention | None:
        """The call in this chain that serves `model`, if one does."""
        call: EagerAttention | None = self
        while call is not None and call.model is not model:
            call = call.outer
        return call

    def forward(self, module: nn.Module, query, key, value, attention_mask, **kwargs):
        """The family's own eager attention, with its probabilities read or rewritten by the taps.

        Rewriting recomputes `probabilities @ values` exactly as eager attention does, so heads we
        do not touch come out bit for bit the same."""
        call = self._owner(module)
        if (record := call.qk_records.get(module)) is not None:
            scaling = (
                kwargs.get("scaling") or query.shape[-1] ** -0.5
            )  # eager's own default when None
            record.update(
                query=query.detach(),
                key=key.detach(),
                scaling=scaling,
                softcap=kwargs.get("softcap"),
            )
        output, probabilities = call.eager[module](
            module, query, key, value, attention_mask, **kwargs
        )
        new = None
        for tap in call.pattern_taps.get(module, []):
            rewritten = tap(probabilities if new is None else new)
            new = new if rewritten is None else rewritten
        if new is None:
            return output, probabilities
        repeated = value.repeat_interleave(
            new.shape[1] // value.shape[1], dim=1
        )  # KV heads -> query heads
        output = torch.matmul(new.to(repeated.dtype), repeated).transpose(1, 2).contiguous()
        return output, new

    def attached(self, model: Model) -> int:
        """How many of `model`'s attention modules carry pattern taps or q/k records now."""
        call = self.serving(model)
        if call is None:
            return 0
        return sum(
            module in call.pattern_taps or module in call.qk_records
            for module in model.hf.modules()
        )

    def _owner(self, module: nn.Module) -> EagerAttention:
        call: EagerAttention | None = self
        while call is not None and module not in call.eager:
            call = call.outer
        if call is None:
            raise RuntimeError(
                f"{type(module).__name__} runs under {PATTERN_ATTENTION!r} attention outside "
                "hooks.eager_attention(); set the model's attention back with set_attn_implementation"
            )
        return call


def active() -> EagerAttention | None:
    """The eager attention call registered now, if any: found through the registry, not a global."""
    from transformers import AttentionInterface

    registered = AttentionInterface._global_mapping.get(PATTERN_ATTENTION)
    call = getattr(registered, "__self__", None)
    return call if isinstance(call, EagerAttention) else None


@contextmanager
def eager_attention(model: Model) -> Iterator[EagerAttention]:
    """Switch the model to our eager attention (re-entrant), and back to what it had.

    Pattern patches need it; an engine that records layer calls for replay records them under it
    too, since attention masks are built in the format of the attention function in use."""
    outer = active()
    if (
        model.hf.config._attn_implementation == PATTERN_ATTENTION
        and outer is not None
        and (serving := outer.serving(model)) is not None
    ):
        yield serving
        return
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    call = EagerAttention(model, outer)
    previous = model.hf.config._attn_implementation
    log.info(
        "pattern sites need attention probabilities: %s runs eager attention during this call",
        model.name,
    )
    with ExitStack() as stack:
        # Exits run last-in first-out: the model leaves our attention before our name is unregistered.
        stack.enter_context(registry_entry(AttentionInterface, PATTERN_ATTENTION, call.forward))
        stack.enter_context(
            registry_entry(type(ALL_MASK_ATTENTION_FUNCTIONS), PATTERN_ATTENTION, eager_mask)
        )
        model.hf.set_attn_implementation(PATTERN_ATTENTION)
        stack.callback(model.hf.set_attn_implementation, previous)
        yield call


@contextmanager
def pattern_tap(model: Model, layer: int, tap: Tap) -> Iterator[None]:
    """Expose layer `layer`'s attention probabilities to `tap` for the duration of the block."""
    attention = attention_module(model, layer)
    with eager_attention(model) as call:
        call.pattern_taps.setdefault(attention, []).append(tap)
        try:
            yield
        finally:
            call.pattern_taps[attention].remove(tap)
            if not call.pattern_taps[attention]:
                del call.pattern_taps[attention]


@contextmanager
def qk_records(model: Model, layers: list[int]) -> Iterator[dict[int, dict[str, Any]]]:
    """Per layer, the query and key the attention function receives, with its scaling and soft-cap."""
    records: dict[int, dict[str, Any]] = {layer: {} for layer in layers}
    with eager_attention(model) as call:
        modules = {attention_module(model, layer): layer for layer in layers}
        call.qk_records.update({module: records[layer] for module, layer in modules.items()})
        try:
            yield records
        finally:
            for module in modules:
                call.qk_records.pop(module, None)


def attention_module(model: Model, layer: int) -> nn.Module:
    """The module that calls the attention function: the output projection's parent."""
    return model.submodule(layer, model.arch.o_proj.rsplit(".", 1)[0])


def _family_eager(model: Model) -> dict[nn.Module, Callable]:
    """Each attention module's eager attention function: the one its own modeling file defines,
    found once per call from the module's class."""
    by_class: dict[type, Callable] = {}
    eager: dict[nn.Module, Callable] = {}
    for layer in range(model.dims.n_layers):
        module = attention_module(model, layer)
        cls = type(module)
        if cls not in by_class:
            modeling = inspect.getmodule(cls)
            function = getattr(modeling, "eager_attention_forward", None)
            if not callable(function):
                where = modeling.__name__ if modeling is not None else "an unknown module"
                raise UnsupportedArchitecture(
                    f"{model.arch.family}: its attention class {cls.__qualname__} ({where}) defines no "
                    "eager_attention_forward, which pattern sites and attention_inputs run under. Sweep other "
                    "site kinds on this model, or teach src/actpatch/hooks/attention.py its eager attention."
                )
            by_class[cls] = function
        eager[module] = by_class[cls]
    return eager

"""Hooks: the only code that attaches to a model. Read activations at sites, or overwrite them.

`capture` runs one forward and returns each site's activation; `patch` is a context manager
under which every forward has the given values written into their sites. Both attach only for
their own duration and remove exactly what they attached, on success and on error. Attention
probabilities (`pattern`) are not a module's input or output, so for them the model's attention
function is swapped for an eager one that exposes them, and swapped back afterwards.
No other module in actpatch registers hooks (a test scans the tree).
"""
from __future__ import annotations

import logging
import sys
from collections import Counter, defaultdict
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

import torch
from torch import Tensor, nn

from actpatch.metrics import NonFiniteError
from actpatch.models.model import Model, check_token_tensor
from actpatch.sites import KV_KINDS, Site, SiteError, validate

log = logging.getLogger(__name__)

Positions = Mapping[str, Tensor]  # a named position -> its index in each prompt, (batch,)
PATTERN_ATTENTION = "actpatch_eager"  # the attention function pattern sites run under


class PatchNotApplied(RuntimeError):
    """A patch whose site was never reached: it would have silently changed nothing."""

    def __init__(self, sites: Sequence[Site]):
        names = ", ".join(map(str, sites))
        super().__init__(
            f"these sites were never reached in the forward pass, so nothing was patched: {names}. "
            "The model's forward does not call the module the architecture table names for them."
        )


class PatchShapeError(ValueError):
    """A patch value whose shape does not match the activation it replaces."""


def capture(
    model: Model, tokens: Tensor, sites: Sequence[Site], *, positions: Positions | None = None
) -> dict[Site, Tensor]:
    """Each site's activation on `tokens`, from one forward pass.

    Shapes: `(batch, [pos,] [d])` where pos is present when `site.pos` is None and `d` is the
    site's width (d_model, d_head, or src_pos for a pattern; none for a neuron)."""
    check_token_tensor(tokens)
    store: dict[Site, Tensor] = {}
    fired: Counter = Counter()
    with _attached(model, [(s, None, slice(None), 0) for s in sites], positions, store, fired):
        with torch.no_grad():
            model.hf(input_ids=tokens.to(model.device), use_cache=False, logits_to_keep=1)
    if missing := [s for s in sites if s not in store]:
        raise PatchNotApplied(missing)
    return store


@contextmanager
def patch(model: Model, values: Mapping[Site, Tensor], *, positions: Positions | None = None) -> Iterator[None]:
    """Run forwards with `values` written into their sites; always unhook.

    Each value has the shape `capture` returns for its site (the batch must match the run's).
    Raises `PatchNotApplied` if a site was never reached: a silent no-op patch looks like an
    unimportant site; and `NonFiniteError` for a value holding NaN or inf, which would make every
    logit after it NaN."""
    for site, value in values.items():
        if not isinstance(value, Tensor):
            raise TypeError(f"{site}: a patch value is a tensor shaped like what capture() returns, not {type(value).__name__}")
        if not bool(torch.isfinite(value).all()):
            raise NonFiniteError(f"{site}: the patch value holds NaN or inf, so every logit after it would be NaN; "
                                 "patch a value captured from a finite run")
    with patch_copies(model, [values], positions=positions):
        yield


@contextmanager
def patch_copies(
    model: Model,
    copies: Sequence[Mapping[Site, Tensor]],
    *,
    copies_at: Sequence[int] | None = None,
    positions: Positions | None = None,
) -> Iterator[None]:
    """Patch k stacked copies of a run at once, each with its own values.

    The batch is prompt-major, as `Tensor.repeat_interleave` lays it out: with m copies present
    when copy i's site runs, its rows are i, i + m, i + 2m, ... (prompts in their original order).
    `copies_at[i]` is that m (default: all k copies, the whole way through)."""
    k = len(copies)
    strides = list(copies_at) if copies_at is not None else [k] * k
    fired: Counter[tuple[int, Site]] = Counter()
    items = [(site, value, slice(i, None, strides[i]), i) for i, values in enumerate(copies) for site, value in values.items()]
    with _attached(model, items, positions, {}, fired):
        yield
    if missing := [site for site, _, _, i in items if not fired[(i, site)]]:
        raise PatchNotApplied(missing)


@contextmanager
def add_to_input(model: Model, offset: Tensor | None) -> Iterator[None]:
    """Add `offset` (batch, pos, d_model) to the first decoder layer's input in every forward of
    the block; nothing when `offset` is None.

    This is how a Gaussian-noise corruption's corrupt run is made from its clean tokens. Enter it
    before any capture or patch of the same forward: hooks run in the order they were attached,
    so a capture then reads the noisy input and a layer-0 `resid_pre` patch overrides it."""
    if offset is None:
        yield
        return

    def add(hidden: Tensor) -> Tensor:
        if hidden.shape != offset.shape:
            raise PatchShapeError(f"input noise of shape {tuple(offset.shape)} cannot be added to the first layer's "
                                  f"input {tuple(hidden.shape)}: the noise was made for other prompts")
        return hidden + offset.to(device=hidden.device, dtype=hidden.dtype)

    with _pre_hook(model.layer(0), add):
        yield


@contextmanager
def layer_inputs(model: Model) -> Iterator[list[tuple[tuple, dict]]]:
    """Record the (args, kwargs) each decoder layer is called with during the block.

    Engines that resume a forward at layer l call the real layers with these arguments
    (attention masks, position embeddings, caches) instead of rebuilding them."""
    calls: list[tuple[tuple, dict]] = []

    def record(module, args, kwargs):
        calls.append((args, dict(kwargs)))

    with ExitStack() as stack:
        for index in range(model.dims.n_layers):
            handle = model.layer(index).register_forward_pre_hook(record, with_kwargs=True)
            stack.callback(handle.remove)
        yield calls


class Watched:
    """Activations and the metric's gradients at sites, filled in by a forward and a backward under `watch`."""

    def __init__(self) -> None:
        self.values: dict[Site, Tensor] = {}
        self.grads: dict[Site, Tensor] = {}


@contextmanager
def watch(model: Model, sites: Sequence[Site], *, positions: Positions | None = None) -> Iterator[Watched]:
    """Record each site's activation in the forward and its gradient in the backward run inside the block.

    The forward must run with gradients enabled from the inputs on (e.g. embeddings that require
    grad); the gradient hooks sit on that forward's own tensors, so they go when its graph is freed."""
    watched = Watched()
    fired: Counter = Counter()
    items = [(s, _WATCH, slice(None), 0) for s in sites]
    with _attached(model, items, positions, watched, fired):
        yield watched
    if missing := [s for s in sites if s not in watched.values]:
        raise PatchNotApplied(missing)


class GradientDrop:
    """Which layer's attention and MLP outputs pass no gradient back (None: every layer passes)."""

    def __init__(self) -> None:
        self.layer: int | None = None


@contextmanager
def drop_gradients(model: Model) -> Iterator[GradientDrop]:
    """In forwards run inside the block, gradients through the sublayers of layer `.layer` are zeroed
    on the way back (GradDrop, Kramár et al. 2024); the residual stream still carries them past it."""
    control = GradientDrop()

    def make(layer: int) -> Callable:
        def hook(module, args, output):
            tensor = output[0] if isinstance(output, tuple) else output
            if tensor.requires_grad:
                tensor.register_hook(lambda grad: torch.zeros_like(grad) if control.layer == layer else None)
        return hook

    with ExitStack() as stack:
        for layer in range(model.dims.n_layers):
            for path in (model.arch.attn, model.arch.mlp):
                handle = model.submodule(layer, path).register_forward_hook(make(layer))
                stack.callback(handle.remove)
        yield control


@contextmanager
def attention_inputs(model: Model, layers: Sequence[int]) -> Iterator[dict[int, dict[str, Any]]]:
    """Record, per layer, the query and key as the attention function receives them (after rotary
    embeddings and q/k norms), with its score scaling and soft-cap: what attention scores are made of."""
    records: dict[int, dict[str, Any]] = {layer: {} for layer in layers}
    modules = {_attention_module(model, layer): layer for layer in layers}
    try:
        with eager_attention(model):
            _QK_RECORDS.update({module: records[layer] for module, layer in modules.items()})
            yield records
    finally:
        for module in modules:
            _QK_RECORDS.pop(module, None)


def attached_hooks(model: Model) -> int:
    """How many hooks (and pattern taps) are on the model now; zero outside `capture`/`patch`."""
    torch_hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.hf.modules())
    return torch_hooks + sum(module in _PATTERN_TAPS or module in _QK_RECORDS for module in model.hf.modules())


# --- attaching -------------------------------------------------------------------------------

_WATCH = torch.empty(0)  # an action value meaning "record the activation and its gradient"


@dataclass(frozen=True)
class _Action:
    site: Site
    value: Tensor | None  # None: read the site into the store
    rows: slice  # the batch rows it applies to (one copy of a stacked run)
    copy: int


@contextmanager
def _attached(
    model: Model,
    items: list[tuple[Site, Tensor | None, slice, int]],
    positions: Positions | None,
    store: dict[Site, Tensor],
    fired: Counter,
) -> Iterator[None]:
    parallel = model.arch.is_parallel(model.hf.config)
    groups: dict[tuple[str, int, bool], list[_Action]] = defaultdict(list)
    for site, value, rows, copy in items:
        if not isinstance(site, Site):
            raise SiteError(f"expected a Site, got {type(site).__name__}: {site!r}")
        validate(site, model.arch, model.dims, parallel=parallel)
        layer_site = _normalised(site, model.dims.n_layers)
        writes = value is not None and value is not _WATCH
        groups[(layer_site.kind, layer_site.layer, writes)].append(_Action(site, value, rows, copy))
    with ExitStack() as stack:
        for (kind, layer, writes), actions in groups.items():
            tap = _Tap(kind, model, actions, positions or {}, store, fired)
            for register in _registrations(model, kind, layer, writes, tap):
                stack.enter_context(register())
        yield


def _normalised(site: Site, n_layers: int) -> Site:
    if site.layer < 0:
        return Site(site.kind, site.layer + n_layers, site.head, site.neuron, site.pos)
    return site


class _Tap:
    """Reads or writes one (kind, layer)'s sites on the raw tensor a hook sees."""

    def __init__(self, kind, model, actions, positions, store, fired):
        self.kind, self.model, self.actions = kind, model, actions
        self.positions, self.store, self.fired = positions, store, fired
        self.resid_pre: Tensor | None = None  # for resid_mid writes, see `_registrations`

    def __call__(self, raw: Tensor) -> Tensor | None:
        """Return the replacement tensor, or None to leave `raw` as it is."""
        writes = any(a.value is not None and a.value is not _WATCH for a in self.actions)
        if any(a.value is _WATCH for a in self.actions):
            self._watch(raw)
            return None
        if writes:
            raw = raw.clone()
        full_view = _canonical(self.kind, self.model, raw)
        for action in self.actions:
            view = full_view[action.rows]
            index = _index(action.site, view, self.positions)
            if action.value is None:
                self.store[action.site] = view[index].detach().clone()
            else:
                value = action.value.to(device=view.device, dtype=view.dtype)
                if self.kind == "resid_mid":
                    # resid_mid = resid_pre + attn_out is a sum inside the layer's forward, not a
                    # module's output; so we write it through attn_out: attn_out := wanted − resid_pre.
                    value = value - _canonical("resid_pre", self.model, self.resid_pre)[action.rows][index]
                _check_shape(action.site, view[index], value)
                view[index] = value
            self.fired[(action.copy, action.site)] += 1
        return raw if writes else None


    def _watch(self, raw: Tensor) -> None:
        if not raw.requires_grad:
            raise RuntimeError("watch() needs a forward with gradients enabled from the inputs on")
        view = _canonical(self.kind, self.model, raw)
        indices = [(action, _index(action.site, view, self.positions)) for action in self.actions]
        for action, index in indices:
            self.store.values[action.site] = view[index].detach().clone()
            self.fired[action.site] += 1

        def on_grad(grad: Tensor) -> None:
            grad_view = _canonical(self.kind, self.model, grad)
            for action, index in indices:
                self.store.grads[action.site] = grad_view[index].detach().clone()

        raw.register_hook(on_grad)


def _registrations(model: Model, kind: str, layer: int, writes: bool, tap: _Tap) -> list[Callable]:
    """Context managers that attach `tap` where `kind` lives in decoder layer `layer`."""
    arch = model.arch
    if kind == "pattern":
        return [lambda: _pattern_tap(model, layer, tap)]
    if kind == "resid_mid" and writes:
        def remember(raw: Tensor) -> None:
            tap.resid_pre = raw
        return [lambda: _pre_hook(model.layer(layer), remember), lambda: _output_hook(model.submodule(layer, arch.attn), tap)]
    where: dict[str, tuple[str | None, Callable]] = {
        "resid_pre": (None, _pre_hook),
        "resid_post": (None, _output_hook),
        "resid_mid": (arch.mlp_in_norm, _pre_hook),
        "attn_out": (arch.attn, _output_hook),
        "mlp_out": (arch.mlp, _output_hook),
        "head": (arch.o_proj, _pre_hook),
        "neuron": (arch.mlp_down, _pre_hook),
        "q": (_qkv_path(arch, 0), _output_hook),
        "k": (_qkv_path(arch, 1), _output_hook),
        "v": (_qkv_path(arch, 2), _output_hook),
    }
    path, hook = where[kind]
    module = model.layer(layer) if path is None else model.submodule(layer, path)
    return [lambda: hook(module, tap)]


def _qkv_path(arch, which: int) -> str:
    return arch.qkv if isinstance(arch.qkv, str) else arch.qkv[which]


@contextmanager
def _pre_hook(module: nn.Module, tap: Callable[[Tensor], Tensor | None]) -> Iterator[None]:
    """Tap a module's first input (positional, or the `hidden_states` keyword)."""

    def hook(mod, args, kwargs):
        if args:
            new = tap(args[0])
            return None if new is None else ((new, *args[1:]), kwargs)
        new = tap(kwargs["hidden_states"])
        return None if new is None else (args, {**kwargs, "hidden_states": new})

    handle = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


@contextmanager
def _output_hook(module: nn.Module, tap: Callable[[Tensor], Tensor | None]) -> Iterator[None]:
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


# --- layouts ---------------------------------------------------------------------------------

def _canonical(kind: str, model: Model, raw: Tensor) -> Tensor:
    """A view of `raw` laid out as (batch, pos, [unit,] d); writes through it land in `raw`.

    Patterns keep the attention layout (batch, head, dest_pos, src_pos)."""
    dims = model.dims
    if kind in ("head", "q"):
        if kind == "q" and isinstance(model.arch.qkv, str):
            return _fused_slice(model, raw, 0)
        return raw.unflatten(-1, (dims.n_heads, dims.d_head))
    if kind in KV_KINDS:
        if isinstance(model.arch.qkv, str):
            return _fused_slice(model, raw, 1 if kind == "k" else 2)
        return raw.unflatten(-1, (dims.n_kv_heads, dims.d_head))
    return raw


def _fused_slice(model: Model, raw: Tensor, which: int) -> Tensor:
    dims = model.dims
    if model.arch.qkv_layout == "concat":  # [q | k | v], each n_heads × d_head wide
        width = dims.n_heads * dims.d_head
        return raw[..., which * width : (which + 1) * width].unflatten(-1, (dims.n_heads, dims.d_head))
    # interleaved: per head [q_h | k_h | v_h]
    per_head = raw.unflatten(-1, (dims.n_heads, 3 * dims.d_head))
    return per_head[..., which * dims.d_head : (which + 1) * dims.d_head]


def _index(site: Site, view: Tensor, positions: Positions) -> tuple:
    """The index of `site` in its canonical view, resolving named positions prompt by prompt."""
    batch = view.shape[0]
    pos_dim = 2 if site.kind == "pattern" else 1
    seq = view.shape[pos_dim]
    pos = site.pos
    every = slice(None)
    if pos is None:
        rows, where = every, every
    elif isinstance(pos, str):
        if pos not in positions:
            known = ", ".join(positions) or "none"
            raise SiteError(f"{site}: no named position {pos!r} in these prompts (named positions: {known})")
        rows, where = torch.arange(batch), torch.as_tensor(positions[pos]).to(torch.long)
        if where.shape != (batch,):
            raise SiteError(f"{site}: named position {pos!r} has {tuple(where.shape)} entries for {batch} prompts")
    else:
        if not -seq <= pos < seq:
            raise SiteError(f"{site}: position {pos} is out of range for prompts of {seq} tokens")
        rows, where = every, pos % seq
    unit = site.head if site.head is not None else site.neuron
    if site.kind == "pattern":
        return (rows, unit, where)
    return (rows, where) if unit is None else (rows, where, unit)


def _check_shape(site: Site, current: Tensor, value: Tensor) -> None:
    if value.shape != current.shape:
        raise PatchShapeError(
            f"{site}: patch value has shape {tuple(value.shape)} but the activation there has shape "
            f"{tuple(current.shape)}; capture the source with the same site and a batch of the same size."
        )


# --- attention patterns ------------------------------------------------------------------------

_PATTERN_TAPS: dict[nn.Module, list[_Tap]] = {}
_QK_RECORDS: dict[nn.Module, dict[str, Any]] = {}


def _attention_module(model: Model, layer: int) -> nn.Module:
    """The module that calls the attention function: the output projection's parent."""
    return model.submodule(layer, model.arch.o_proj.rsplit(".", 1)[0])


@contextmanager
def _pattern_tap(model: Model, layer: int, tap: _Tap) -> Iterator[None]:
    """Expose layer `layer`'s attention probabilities to `tap` for the duration of the block."""
    attention = _attention_module(model, layer)
    _PATTERN_TAPS.setdefault(attention, []).append(tap)
    try:
        with eager_attention(model):
            yield
    finally:
        _PATTERN_TAPS[attention].remove(tap)
        if not _PATTERN_TAPS[attention]:
            del _PATTERN_TAPS[attention]


@contextmanager
def eager_attention(model: Model) -> Iterator[None]:
    """Switch the model to our eager attention (re-entrant), and back to what it had.

    Pattern patches need it; an engine that records layer calls for replay records them under it
    too, since attention masks are built in the format of the attention function in use."""
    previous = model.hf.config._attn_implementation
    if previous == PATTERN_ATTENTION:
        yield
        return
    _register_pattern_attention()
    log.info("pattern sites need attention probabilities: %s runs eager attention during this call", model.name)
    model.hf.set_attn_implementation(PATTERN_ATTENTION)
    try:
        yield
    finally:
        model.hf.set_attn_implementation(previous)


def _register_pattern_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, eager_mask

    AttentionInterface.register(PATTERN_ATTENTION, _pattern_attention)
    ALL_MASK_ATTENTION_FUNCTIONS.register(PATTERN_ATTENTION, eager_mask)


def _pattern_attention(module: nn.Module, query, key, value, attention_mask, **kwargs):
    """The family's own eager attention, with its probabilities read or rewritten by our taps.

    Rewriting recomputes `probabilities @ values` exactly as eager attention does, so heads we do
    not touch come out bit for bit the same."""
    if (record := _QK_RECORDS.get(module)) is not None:
        scaling = kwargs.get("scaling") or query.shape[-1] ** -0.5  # eager's own default when None
        record.update(query=query.detach(), key=key.detach(), scaling=scaling, softcap=kwargs.get("softcap"))
    eager = sys.modules[type(module).__module__].eager_attention_forward
    output, probabilities = eager(module, query, key, value, attention_mask, **kwargs)
    new = None
    for tap in _PATTERN_TAPS.get(module, []):
        rewritten = tap(probabilities if new is None else new)
        new = new if rewritten is None else rewritten
    if new is None:
        return output, probabilities
    repeated = value.repeat_interleave(new.shape[1] // value.shape[1], dim=1)  # KV heads -> query heads
    output = torch.matmul(new.to(repeated.dtype), repeated).transpose(1, 2).contiguous()
    return output, new

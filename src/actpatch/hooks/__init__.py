"""Hooks: the only code that runs or attaches to a model: read activations at sites, or write them.

`capture` runs one forward and returns each site's activation; `patch` is a context manager
under which every forward has the given values written into their sites. Both attach only for
their own duration and remove exactly what they attached, on success and on error. Attention
probabilities (`pattern`) are not a module's input or output, so for them the model's attention
function is swapped for an eager one that exposes them, and swapped back afterwards.
No module outside `attach.py` registers hooks, and none outside `forward.py` runs the model
(tests scan the tree).

This file is the public surface of node sites. Below it: `forward.py` (`forward`, the one
function that runs the model: taps, stacked copies, a layer to resume from), `recorded.py` (the
runs a resumed forward replays), `stack.py` (the row order of stacked copies), `taps.py` (what a
hook does with what it sees: read, write, or read with the gradient), `layout.py` (where a site
sits in that tensor), `placement.py` (where each site kind lives on the model), `attach.py` (the
hooks themselves, registered and removed), `attention.py` (the
temporary eager attention for pattern sites and `attention_inputs`), `linear.py` (a projection's
matrix and its rows per head). Edge circuits have taps of their own: `edges.py` (receivers'
inputs, senders' outputs), `edge_gradients.py` (receiver gradients from one ordinary backward)
and `edge_removal.py` (one removed edge per copy, resumed at its receiver's layer).
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

import torch
from torch import Tensor
from transformers import DynamicCache

from actpatch import deprecation
from actpatch.hooks import attach, attention, features, placement
from actpatch.hooks.attention import PATTERN_ATTENTION, eager_attention
from actpatch.hooks.errors import PatchNotApplied, PatchShapeError
from actpatch.hooks.forward import (
    Recorded,
    add_to_input,
    final_logits,
    forward,
    head_device,
    last_logits,
    last_mlp_at_final_position,
    layer_devices,
    resid_post_only,
)
from actpatch.hooks.layout import NamedPositions, normalised
from actpatch.hooks.recorded import Recording, Recordings, layer_inputs, record, recording
from actpatch.hooks.stack import copy_rows, per_copy, stacked
from actpatch.hooks.taps import GradTap, ReadTap, Write, WriteTap
from actpatch.metrics import NonFiniteError
from actpatch.models.model import Model, check_token_tensor
from actpatch.run import Run
from actpatch.sites import Site, SiteError, validate

__all__ = [
    "PATTERN_ATTENTION",
    "GradientDrop",
    "PatchNotApplied",
    "PatchShapeError",
    "Recorded",
    "Recording",
    "Recordings",
    "Watched",
    "add_to_input",
    "attached_hooks",
    "attention_inputs",
    "capture",
    "capture_with_logits",
    "drop_gradients",
    "eager_attention",
    "edit",
    "final_logits",
    "forward",
    "head_device",
    "last_logits",
    "last_mlp_at_final_position",
    "layer_devices",
    "layer_inputs",
    "patch",
    "patch_copies",
    "per_copy",
    "record",
    "recording",
    "resid_post_only",
    "stacked",
    "watch",
]

SiteLike = (
    Site | str
)  # a Site, or text Site.parse reads: `head[layer=9, head=6]`, `blocks.9.attn.hook_z`


@deprecation.renamed(positions="named_positions")
def capture(
    model: Model,
    tokens: Tensor | Run,
    sites: Sequence[SiteLike],
    *,
    named_positions: NamedPositions | None = None,
) -> dict[Site, Tensor]:
    """Each site's activation on `tokens` (a token tensor, or a `Run` with its input noise and
    named positions), from one forward pass; keyed by `Site`, however the sites were written.

    Shapes: `(batch, [pos,] [d])` where pos is present when `site.pos` is None and `d` is the
    site's width (d_model, d_head, or src_pos for a pattern; none for a neuron).
    `named_positions` (name → each prompt's index) overrides a Run's own."""
    return capture_with_logits(model, tokens, sites, named_positions=named_positions)[0]


def capture_with_logits(
    model: Model,
    tokens: Tensor | Run,
    sites: Sequence[SiteLike],
    *,
    named_positions: NamedPositions | None = None,
    cache: DynamicCache | None = None,
) -> tuple[dict[Site, Tensor], Tensor]:
    """`capture`, and the same forward's final-position logits (batch, vocab) in float32: a run
    whose logits are needed anyway (a baseline) gives its activations for free. `cache`: a cache
    for the forward to fill (`recorded.recording`; default none)."""
    run = tokens if isinstance(tokens, Run) else Run(tokens)
    check_token_tensor(run.tokens)
    wanted = _sites(sites)
    named = (run.positions if named_positions is None else named_positions) or {}
    store: dict[Site, Tensor] = {}
    plain = [site for site in wanted if not features.is_feature(site)]
    groups = _by_layer(model, ((site, site) for site in plain))
    readers = [
        (kind, layer, ReadTap(kind, model, group, named, store))
        for (kind, layer), group in groups.items()
    ]
    feature_sites = [site for site in wanted if features.is_feature(site)]
    readers += features.readers(model, feature_sites, named, store)
    with torch.no_grad():
        logits = forward(model, run, taps=[placement.attached(model, readers)], cache=cache).float()
    if missing := [s for s in wanted if s not in store]:
        raise PatchNotApplied(missing)
    return store, logits


@deprecation.renamed(positions="named_positions")
@contextmanager
def patch(
    model: Model,
    values: Mapping[SiteLike, Tensor],
    *,
    named_positions: NamedPositions | None = None,
) -> Iterator[None]:
    """Run forwards with `values` written into their sites; always unhook.

    Each value has the shape `capture` returns for its site (the batch must match the run's).
    Raises `PatchNotApplied` if a site was never reached: a silent no-op patch looks like an
    unimportant site; and `NonFiniteError` for a value holding NaN or inf, which would make every
    logit after it NaN. `named_positions` (name → each prompt's index) resolves sites at named
    positions (`pos="S2"`)."""
    values = _keyed(values)
    for site, value in values.items():
        if not isinstance(value, Tensor):
            raise TypeError(
                f"{site}: a patch value is a tensor shaped like what capture() returns, not {type(value).__name__}"
            )
        if not bool(torch.isfinite(value).all()):
            raise NonFiniteError(
                f"{site}: the patch value holds NaN or inf, so every logit after it would be NaN; "
                "patch a value captured from a finite run"
            )
    with patch_copies(model, [values], named_positions=named_positions):
        yield


@contextmanager
def patch_copies(
    model: Model,
    copies: Sequence[Mapping[SiteLike, Tensor]],
    *,
    named_positions: NamedPositions | None = None,
) -> Iterator[None]:
    """Patch k stacked copies of a run at once, each with its own values.

    The batch is copy-major (`stack.py`): copy i's rows are i·batch … (i+1)·batch − 1, where
    `batch` is its values' first dimension, whatever copies are stacked after it. A single copy
    is the whole batch."""
    fired: Counter[tuple[int, Site]] = Counter()
    writes = [
        Write(site, value, copy_rows(i, len(value)) if len(copies) > 1 else slice(None), i)
        for i, values in enumerate(copies)
        for site, value in _keyed(values).items()
    ]
    plain = [write for write in writes if not features.is_feature(write.site)]
    groups = _by_layer(model, ((write.site, write) for write in plain))
    writers = [
        (kind, layer, WriteTap(kind, model, group, named_positions or {}, fired))
        for (kind, layer), group in groups.items()
    ]
    feature_writes = [write for write in writes if features.is_feature(write.site)]
    writers += features.writers(model, feature_writes, named_positions or {}, fired)
    with placement.attached(model, writers):
        yield
    if missing := [write.site for write in writes if not fired[(write.copy, write.site)]]:
        raise PatchNotApplied(missing)


@contextmanager
def edit(
    model: Model,
    edits: Mapping[SiteLike, Callable[[Tensor], Tensor]],
    *,
    named_positions: NamedPositions | None = None,
) -> Iterator[None]:
    """Run forwards with each site's activation replaced by a function of itself; always unhook.

    Each function is given what its site holds in that forward (the shape `capture` returns,
    earlier edits of the same forward included) and returns what to write there; gradients flow
    through it. A neuron site without `neuron=` is the whole neuron layer, (batch, [pos,] d_mlp).
    Raises `PatchNotApplied` if a site was never reached."""
    edits = _keyed(edits)
    for site, function in edits.items():
        if features.is_feature(site) or not callable(function):
            raise TypeError(
                f"{site}: edit() takes a node site and a function of its activation; "
                "write fixed values with patch()"
            )
    fired: Counter[tuple[int, Site]] = Counter()
    writes = [Write(site, function, slice(None), 0) for site, function in edits.items()]
    groups = _by_layer(model, ((_one_neuron(write.site), write) for write in writes))
    writers = [
        (kind, layer, WriteTap(kind, model, group, named_positions or {}, fired))
        for (kind, layer), group in groups.items()
    ]
    with placement.attached(model, writers):
        yield
    if missing := [write.site for write in writes if not fired[(0, write.site)]]:
        raise PatchNotApplied(missing)


def _one_neuron(site: Site) -> Site:
    """A whole neuron layer checked and grouped as its first neuron (it lives where they do)."""
    whole = site.kind == "neuron" and site.neuron is None
    return dataclasses.replace(site, neuron=0) if whole else site


class Watched:
    """Activations and the metric's gradients at sites, filled in by a forward and a backward under `watch`."""

    def __init__(self) -> None:
        self.values: dict[Site, Tensor] = {}
        self.grads: dict[Site, Tensor] = {}


@deprecation.renamed(positions="named_positions")
@contextmanager
def watch(
    model: Model, sites: Sequence[SiteLike], *, named_positions: NamedPositions | None = None
) -> Iterator[Watched]:
    """Record each site's activation in the forward and its gradient in the backward run inside the block.

    The forward must run with gradients enabled from the inputs on (e.g. embeddings that require
    grad); the gradient hooks sit on that forward's own tensors, so they go when its graph is freed."""
    wanted = _sites(sites)
    watched = Watched()
    plain = [site for site in wanted if not features.is_feature(site)]
    groups = _by_layer(model, ((site, site) for site in plain))
    watchers = [
        (
            kind,
            layer,
            GradTap(kind, model, group, named_positions or {}, watched.values, watched.grads),
        )
        for (kind, layer), group in groups.items()
    ]
    feature_sites = [site for site in wanted if features.is_feature(site)]
    watchers += features.watchers(
        model, feature_sites, named_positions or {}, watched.values, watched.grads
    )
    with placement.attached(model, watchers):
        yield watched
    if missing := [s for s in wanted if s not in watched.values]:
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

    def gate(layer: int):
        def tap(output: Tensor) -> None:
            if output.requires_grad:
                attach.on_gradient(
                    output, lambda grad: torch.zeros_like(grad) if control.layer == layer else None
                )

        return tap

    gates = [
        (kind, layer, gate(layer))
        for layer in range(model.dims.n_layers)
        for kind in ("attn_out", "mlp_out")
    ]
    with placement.attached(model, gates):
        yield control


@contextmanager
def attention_inputs(model: Model, layers: Sequence[int]) -> Iterator[dict[int, dict[str, Any]]]:
    """Record, per layer, the query and key as the attention function receives them (after rotary
    embeddings and q/k norms), with its score scaling and soft-cap: what attention scores are made of.

    The block runs under our eager attention even for no layers, so that the forwards it holds
    are computed the same way whichever layers are recorded."""
    with attention.qk_records(model, list(layers)) as records:
        yield records


def attached_hooks(model: Model) -> int:
    """How many hooks (and pattern taps) are on the model now; zero outside `capture`/`patch`."""
    torch_hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.hf.modules())
    call = attention.active()
    return torch_hooks + (call.attached(model) if call is not None else 0)


# --- sites as callers write them -------------------------------------------------------------

T = TypeVar("T")


def _sites(sites: Sequence[SiteLike]) -> list[Site]:
    if isinstance(sites, (str, Site)):
        raise TypeError(f"sites is a list of sites; wrap the one you have: [{sites!r}]")
    return [_site(site) for site in sites]


def _site(site: SiteLike) -> Site:
    if isinstance(site, str):
        return Site.parse(site)  # raises SiteError naming what it could not read
    if not isinstance(site, Site):
        raise SiteError(f"expected a Site, got {type(site).__name__}: {site!r}")
    return site


def _keyed(values: Mapping[SiteLike, T]) -> dict[Site, T]:
    """`values` keyed by Site; two keys naming the same site would leave one value unused."""
    keyed: dict[Site, T] = {}
    for key, value in values.items():
        site = _site(key)
        if site in keyed:
            raise SiteError(
                f"{site} is given twice (as {key!r} and another name); give each site one value"
            )
        keyed[site] = value
    return keyed


def _by_layer(model: Model, items: Iterable[tuple[Site, T]]) -> dict[tuple[str, int], list[T]]:
    """Each item under its site's (kind, layer), once the site is checked against the model; a
    layer counted from the end meets the same layer counted from the start."""
    parallel = model.arch.is_parallel(model.hf.config)
    groups: dict[tuple[str, int], list[T]] = defaultdict(list)
    for site, item in items:
        validate(site, model.arch, model.dims, parallel=parallel)
        layer_site = normalised(site, model.dims.n_layers)
        groups[(layer_site.kind, layer_site.layer)].append(item)
    return groups

"""Hooks: the only code that attaches to a model. Read activations at sites, or overwrite them.

`capture` runs one forward and returns each site's activation; `patch` is a context manager
under which every forward has the given values written into their sites. Both attach only for
their own duration and remove exactly what they attached, on success and on error. Attention
probabilities (`pattern`) are not a module's input or output, so for them the model's attention
function is swapped for an eager one that exposes them, and swapped back afterwards.
No module outside this package registers hooks (a test scans the tree).

This file is the public surface of node sites. Below it: `taps.py` (what a hook does with what it
sees: read, write, or read with the gradient), `layout.py` (where a site sits in that tensor),
`attach.py` (where each site kind lives on the model, and the torch hooks), `attention.py` (the
temporary eager attention for pattern sites and `attention_inputs`), `linear.py` (a projection's
matrix and its rows per head). Edge circuits have taps of their own: `edges.py` (receivers'
inputs, senders' outputs), `edge_gradients.py` (receiver gradients from one ordinary backward)
and `edge_removal.py` (one removed edge per copy, resumed at its receiver's layer).
"""

from __future__ import annotations

import dataclasses
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any, TypeVar

import torch
from torch import Tensor

from actpatch.hooks import attach, attention, features
from actpatch.hooks.attention import PATTERN_ATTENTION, eager_attention
from actpatch.hooks.errors import PatchNotApplied, PatchShapeError
from actpatch.hooks.forward import add_to_input, final_logits, last_logits, resid_post_only
from actpatch.hooks.layout import Positions, normalised
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
    "last_logits",
    "last_mlp_at_final_position",
    "layer_inputs",
    "patch",
    "patch_copies",
    "resid_post_only",
    "watch",
]

SiteLike = (
    Site | str
)  # a Site, or text Site.parse reads: `head[layer=9, head=6]`, `blocks.9.attn.hook_z`


def capture(
    model: Model,
    tokens: Tensor | Run,
    sites: Sequence[SiteLike],
    *,
    positions: Positions | None = None,
) -> dict[Site, Tensor]:
    """Each site's activation on `tokens` (a token tensor, or a `Run` with its input noise and
    named positions), from one forward pass; keyed by `Site`, however the sites were written.

    Shapes: `(batch, [pos,] [d])` where pos is present when `site.pos` is None and `d` is the
    site's width (d_model, d_head, or src_pos for a pattern; none for a neuron). `positions`
    overrides a Run's own named positions."""
    return capture_with_logits(model, tokens, sites, positions=positions)[0]


def capture_with_logits(
    model: Model,
    tokens: Tensor | Run,
    sites: Sequence[SiteLike],
    *,
    positions: Positions | None = None,
    forward: Mapping[str, Any] | None = None,
) -> tuple[dict[Site, Tensor], Tensor]:
    """`capture`, and the same forward's final-position logits (batch, vocab) in float32: a run
    whose logits are needed anyway (a baseline) gives its activations for free. `forward`: more
    keyword arguments for the model's forward (a cache for it to fill; default no cache)."""
    run = tokens if isinstance(tokens, Run) else Run(tokens)
    check_token_tensor(run.tokens)
    wanted = _sites(sites)
    named = (run.positions if positions is None else positions) or {}
    store: dict[Site, Tensor] = {}
    plain = [site for site in wanted if not features.is_feature(site)]
    groups = _by_layer(model, ((site, site) for site in plain))
    readers = [
        (kind, layer, ReadTap(kind, model, group, named, store))
        for (kind, layer), group in groups.items()
    ]
    feature_sites = [site for site in wanted if features.is_feature(site)]
    readers += features.readers(model, feature_sites, named, store)
    with add_to_input(model, run.noise), attach.attached(model, readers), torch.no_grad():
        logits = final_logits(model, run.tokens, **(forward or {})).float()
    if missing := [s for s in wanted if s not in store]:
        raise PatchNotApplied(missing)
    return store, logits


@contextmanager
def patch(
    model: Model, values: Mapping[SiteLike, Tensor], *, positions: Positions | None = None
) -> Iterator[None]:
    """Run forwards with `values` written into their sites; always unhook.

    Each value has the shape `capture` returns for its site (the batch must match the run's).
    Raises `PatchNotApplied` if a site was never reached: a silent no-op patch looks like an
    unimportant site; and `NonFiniteError` for a value holding NaN or inf, which would make every
    logit after it NaN."""
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
    with patch_copies(model, [values], positions=positions):
        yield


@contextmanager
def patch_copies(
    model: Model,
    copies: Sequence[Mapping[SiteLike, Tensor]],
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
    writes = [
        Write(site, value, slice(i, None, strides[i]), i)
        for i, values in enumerate(copies)
        for site, value in _keyed(values).items()
    ]
    plain = [write for write in writes if not features.is_feature(write.site)]
    groups = _by_layer(model, ((write.site, write) for write in plain))
    writers = [
        (kind, layer, WriteTap(kind, model, group, positions or {}, fired))
        for (kind, layer), group in groups.items()
    ]
    feature_writes = [write for write in writes if features.is_feature(write.site)]
    writers += features.writers(model, feature_writes, positions or {}, fired)
    with attach.attached(model, writers):
        yield
    if missing := [write.site for write in writes if not fired[(write.copy, write.site)]]:
        raise PatchNotApplied(missing)


@contextmanager
def edit(
    model: Model,
    edits: Mapping[SiteLike, Callable[[Tensor], Tensor]],
    *,
    positions: Positions | None = None,
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
        (kind, layer, WriteTap(kind, model, group, positions or {}, fired))
        for (kind, layer), group in groups.items()
    ]
    with attach.attached(model, writers):
        yield
    if missing := [write.site for write in writes if not fired[(0, write.site)]]:
        raise PatchNotApplied(missing)


def _one_neuron(site: Site) -> Site:
    """A whole neuron layer checked and grouped as its first neuron (it lives where they do)."""
    whole = site.kind == "neuron" and site.neuron is None
    return dataclasses.replace(site, neuron=0) if whole else site


@contextmanager
def last_mlp_at_final_position(model: Model) -> Iterator[None]:
    """Under the block the last decoder layer's MLP runs at the final position only (its output
    elsewhere is 0): for forwards that read nothing but the final-position logits, where its
    output at other positions reaches nothing. Not with sites in that MLP at other positions."""
    from types import SimpleNamespace

    from actpatch.hooks.edges import final_position_only, registered

    found = final_position_only(model.submodule(model.dims.n_layers - 1, model.arch.mlp))
    with registered(SimpleNamespace(registrations=lambda: found)):
        yield


@contextmanager
def layer_inputs(model: Model) -> Iterator[list[tuple[tuple, dict]]]:
    """Record the (args, kwargs) each decoder layer is called with during the block.

    Engines that resume a forward at layer l call the real layers with these arguments
    (attention masks, position embeddings, caches) instead of rebuilding them."""
    calls: list[tuple[tuple, dict]] = []
    with ExitStack() as stack:
        for index in range(model.dims.n_layers):
            stack.enter_context(
                attach.call_hook(
                    model.layer(index), lambda args, kwargs: calls.append((args, dict(kwargs)))
                )
            )
        yield calls


class Watched:
    """Activations and the metric's gradients at sites, filled in by a forward and a backward under `watch`."""

    def __init__(self) -> None:
        self.values: dict[Site, Tensor] = {}
        self.grads: dict[Site, Tensor] = {}


@contextmanager
def watch(
    model: Model, sites: Sequence[SiteLike], *, positions: Positions | None = None
) -> Iterator[Watched]:
    """Record each site's activation in the forward and its gradient in the backward run inside the block.

    The forward must run with gradients enabled from the inputs on (e.g. embeddings that require
    grad); the gradient hooks sit on that forward's own tensors, so they go when its graph is freed."""
    wanted = _sites(sites)
    watched = Watched()
    plain = [site for site in wanted if not features.is_feature(site)]
    groups = _by_layer(model, ((site, site) for site in plain))
    watchers = [
        (kind, layer, GradTap(kind, model, group, positions or {}, watched.values, watched.grads))
        for (kind, layer), group in groups.items()
    ]
    feature_sites = [site for site in wanted if features.is_feature(site)]
    watchers += features.watchers(
        model, feature_sites, positions or {}, watched.values, watched.grads
    )
    with attach.attached(model, watchers):
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
                output.register_hook(
                    lambda grad: torch.zeros_like(grad) if control.layer == layer else None
                )

        return tap

    gates = [
        (kind, layer, gate(layer))
        for layer in range(model.dims.n_layers)
        for kind in ("attn_out", "mlp_out")
    ]
    with attach.attached(model, gates):
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

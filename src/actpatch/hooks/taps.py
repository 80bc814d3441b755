"""Taps: what happens to one (kind, layer)'s activation when a hook sees it.

A tap is called with the raw tensor a hook sees (a module's input or output, or the attention
probabilities) and returns a replacement, or None to leave it as it is. There are three, one per
job: `ReadTap` copies sites out, `WriteTap` writes values in, `GradTap` copies sites out and their
gradients in the backward. Each belongs to the call that made it and holds only that call's
sites and stores; where a tap is attached is `attach.py`'s job.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from torch import Tensor

from actpatch.hooks import attach
from actpatch.hooks.errors import PatchShapeError
from actpatch.hooks.layout import NamedPositions, canonical, index
from actpatch.models.model import Model
from actpatch.sites import Site


class ReadTap:
    """Copies each site's activation into `store`; changes nothing."""

    def __init__(
        self,
        kind: str,
        model: Model,
        sites: Sequence[Site],
        positions: NamedPositions,
        store: dict[Site, Tensor],
    ):
        self.kind, self.model, self.sites = kind, model, list(sites)
        self.positions, self.store = positions, store

    def __call__(self, raw: Tensor) -> None:
        view = canonical(self.kind, self.model, raw)
        for site in self.sites:
            self.store[site] = view[index(site, view, self.positions)].detach().clone()
        return None


@dataclass(frozen=True)
class Write:
    """One value to write: into `site`, on the batch rows of one copy of a stacked run. A callable
    value is an edit: it is given what the site holds in this forward and returns what to write."""

    site: Site
    value: Tensor | Callable[[Tensor], Tensor]
    rows: slice
    copy: int


class WriteTap:
    """Writes each value into its site, on a copy of the raw tensor, and counts the writes in `fired`."""

    def __init__(
        self,
        kind: str,
        model: Model,
        writes: Sequence[Write],
        positions: NamedPositions,
        fired: Counter,
    ):
        self.kind, self.model, self.writes = kind, model, list(writes)
        self.positions, self.fired = positions, fired
        self.resid_pre: Tensor | None = None  # the layer's input, for resid_mid writes

    def remember_resid_pre(self, raw: Tensor) -> None:
        """Keep the layer's input: a resid_mid write needs it (see `__call__`)."""
        self.resid_pre = raw

    def __call__(self, raw: Tensor) -> Tensor:
        raw = raw.clone()
        full_view = canonical(self.kind, self.model, raw)
        for write in self.writes:
            view = full_view[write.rows]
            where = index(write.site, view, self.positions)
            # resid_mid = resid_pre + attn_out is a sum inside the layer's forward, not a module's
            # output; so it is written through attn_out: attn_out := wanted − resid_pre.
            below = (
                canonical("resid_pre", self.model, self.resid_pre)[write.rows][where]
                if self.kind == "resid_mid"
                else 0
            )
            if callable(write.value):  # cloned: the write below must not change what it read
                value = write.value(view[where].clone() + below)
            else:
                value = write.value
            value = value.to(device=view.device, dtype=view.dtype) - below
            check_shape(write.site, view[where], value)
            view[where] = value
            self.fired[(write.copy, write.site)] += 1
        return raw


class GradTap:
    """Copies each site's activation into `values`, and puts a tensor hook on the very tensor that
    copies its gradient into `grads` in the backward; the tensor hook goes with the graph."""

    def __init__(
        self,
        kind: str,
        model: Model,
        sites: Sequence[Site],
        positions: NamedPositions,
        values: dict[Site, Tensor],
        grads: dict[Site, Tensor],
    ):
        self.kind, self.model, self.sites = kind, model, list(sites)
        self.positions, self.values, self.grads = positions, values, grads

    def __call__(self, raw: Tensor) -> None:
        if not raw.requires_grad:
            raise RuntimeError("watch() needs a forward with gradients enabled from the inputs on")
        view = canonical(self.kind, self.model, raw)
        indices = [(site, index(site, view, self.positions)) for site in self.sites]
        for site, where in indices:
            self.values[site] = view[where].detach().clone()

        def on_grad(grad: Tensor) -> None:
            grad_view = canonical(self.kind, self.model, grad)
            for site, where in indices:
                self.grads[site] = grad_view[where].detach().clone()

        attach.on_gradient(raw, on_grad)
        return None


def check_shape(site: Site, current: Tensor, value: Tensor) -> None:
    if value.shape != current.shape:
        raise PatchShapeError(
            f"{site}: patch value has shape {tuple(value.shape)} but the activation there has shape "
            f"{tuple(current.shape)}; capture the source with the same site and a batch of the same size."
        )

"""Feature taps: read or write the latents and error node of a basis (a dictionary).

A feature site's value is a coordinate in the basis: latent i's activation (batch, [pos]) for a
`feature` site, the error vector (batch, [pos,] d_out) for a `feature_error` site. Writing one moves
the activation the basis writes by the change in that coordinate: (value − current) · decoder[i]
for a latent (a rank-one write), (value − current error) for the error node. Current values come
from this very forward, so writes compose with any other patch upstream, and several feature
writes at one place add up (patching every latent and the error is the plain patch there).
Which module each side lives on is `attach.py`'s job, as for every other tap.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from typing import Any

from torch import Tensor

from actpatch.basis import error_of
from actpatch.hooks import attach
from actpatch.hooks.layout import NamedPositions, index
from actpatch.hooks.taps import Write, check_shape
from actpatch.models.model import Model
from actpatch.sites import FEATURE_KINDS, Site, validate


def is_feature(site: Site) -> bool:
    return site.kind in FEATURE_KINDS


def readers(
    model: Model, sites: Sequence[Site], positions: NamedPositions, store: dict[Site, Tensor]
) -> list[tuple]:
    """(kind, layer, tap) triples for `attach.attached`: each feature site's value into `store`."""
    return [
        triple
        for basis, group in _by_basis(model, ((s, s) for s in sites)).items()
        for triple in FeatureTap(model, basis, positions, sites=group, store=store).placed()
    ]


def writers(
    model: Model, writes: Iterable[Write], positions: NamedPositions, fired: Counter
) -> list[tuple]:
    """(kind, layer, tap) triples for `attach.attached`: each feature value written, counted."""
    return [
        triple
        for basis, group in _by_basis(model, ((w.site, w) for w in writes)).items()
        for triple in FeatureTap(model, basis, positions, writes=group, fired=fired).placed()
    ]


def watchers(
    model: Model,
    sites: Sequence[Site],
    positions: NamedPositions,
    values: dict[Site, Tensor],
    grads: dict[Site, Tensor],
) -> list[tuple]:
    """(kind, layer, tap) triples for `attach.attached`: each feature site's value into `values`,
    and in the backward its gradient into `grads`: ∂metric/∂latent i is decoder row i · the
    gradient where the dictionary writes (its read held fixed); the error's is that gradient."""
    return [
        triple
        for basis, group in _by_basis(model, ((s, s) for s in sites)).items()
        for triple in FeatureTap(
            model, basis, positions, sites=group, store=values, grads=grads
        ).placed()
    ]


class FeatureTap:
    """One basis's feature sites in one forward: sees what the basis reads, then reads or writes
    the feature values where the basis writes."""

    def __init__(
        self,
        model: Model,
        basis: Any,
        positions: NamedPositions,
        *,
        sites: Sequence[Site] = (),
        store: dict[Site, Tensor] | None = None,
        writes: Sequence[Write] = (),
        fired: Counter | None = None,
        grads: dict[Site, Tensor] | None = None,
    ):
        self.model, self.basis, self.positions = model, basis, positions
        self.sites, self.store, self.writes, self.fired = list(sites), store, list(writes), fired
        self.grads = grads  # watching: each site's gradient, filled in by the backward
        self.read: Tensor | None = None  # what the basis reads, where it writes elsewhere
        self.resid_pre: Tensor | None = None  # the layer's input, when the basis writes resid_mid

    def placed(self) -> list[tuple[str, int, Any]]:
        basis = self.basis
        taps: list[tuple[str, int, Any]] = []
        if basis.reads != basis.writes:
            taps.append((basis.reads, basis.layer, self.remember_read))
        taps.append((basis.writes, basis.layer, self))
        return taps

    def remember_read(self, raw: Tensor) -> None:
        self.read = raw

    def remember_resid_pre(self, raw: Tensor) -> None:
        """The layer's input: resid_mid is written through attn_out (see `taps.WriteTap`)."""
        self.resid_pre = raw

    def __call__(self, raw: Tensor) -> Tensor | None:
        # resid_mid is no module's output: the hook sees attn_out, and resid_mid = resid_pre + it.
        written = raw if self.basis.writes != "resid_mid" else self.resid_pre + raw
        read = written if self.basis.reads == self.basis.writes else self.read
        if read is None:
            raise RuntimeError(
                f"{self.basis.name}: its {self.basis.writes} ran before its {self.basis.reads} "
                "was seen"
            )
        # Reading many latents (attribution over every active one at every position): encode
        # every latent once per position and index it, not once per site (TopK compares them all);
        # one position at a time, so no more is held than one site's encode held before.
        at: dict[Any, list[Site]] = defaultdict(list)
        for site in self.sites:
            at[site.pos].append(site)
        for group in at.values():
            latents = [site for site in group if site.kind == "feature"]
            where = index(latents[0], written, self.positions) if len(latents) > 1 else None
            encoded = self.basis.encode(read.detach()[where]) if where is not None else None
            for site in group:
                value = self._value(site, read.detach(), written.detach(), encoded)
                self.store[site] = value.clone()
        if self.grads is not None:
            if not raw.requires_grad:
                raise RuntimeError(
                    "watch() needs a forward with gradients enabled from the inputs on"
                )
            attach.on_gradient(raw, self._on_grad)
        if not self.writes:
            return None
        moved = raw.clone()
        for write in self.writes:  # every change from the unwritten tensors, so writes add up
            read_rows, written_rows = read[write.rows], written[write.rows]
            where = index(write.site, written_rows, self.positions)
            current = self._value(write.site, read_rows, written_rows)
            value = write.value.to(device=current.device, dtype=current.dtype)
            check_shape(write.site, current, value)
            change = value - current
            if write.site.kind == "feature":
                change = change[..., None] * self.basis.decoder()[write.site.latent].to(
                    change.device
                )
            target = moved[write.rows]
            target[where] = target[where] + change.to(moved.dtype)  # a view: lands in `moved`
            self.fired[(write.copy, write.site)] += 1
        return moved

    def _on_grad(self, grad: Tensor) -> None:
        # The gradient at resid_mid is the gradient at attn_out, through which it is written.
        for site in self.sites:
            at = grad[index(site, grad, self.positions)].detach().float()
            if site.kind == "feature":
                at = at @ self.basis.decoder()[site.latent].to(at.device)
            self.grads[site] = at

    def _value(
        self, site: Site, read: Tensor, written: Tensor, encoded: Tensor | None = None
    ) -> Tensor:
        """The site's current coordinate: latent i's activation, or the error vector. `encoded`:
        every latent of `read` at the site's position, where the caller has it."""
        if site.kind == "feature" and encoded is not None:
            return encoded[..., site.latent]
        where = index(site, written, self.positions)
        if site.kind == "feature":
            one = getattr(self.basis, "encode_latent", None)
            return (
                one(read[where], site.latent)
                if one
                else self.basis.encode(read[where])[..., site.latent]
            )
        # The contract's own terms (basis.py): what the basis does not reconstruct.
        return error_of(self.basis, read[where], written[where])


def _by_basis(model: Model, items: Iterable[tuple[Site, Any]]) -> dict[Any, list]:
    """Items grouped under their site's basis, once each site is checked against the model."""
    parallel = model.arch.is_parallel(model.hf.config)
    groups: dict[Any, list] = defaultdict(list)
    for site, item in items:
        validate(site, model.arch, model.dims, parallel=parallel)
        groups[site.basis].append(item)
    return groups

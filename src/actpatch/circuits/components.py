"""Components: the parts a circuit is made of, and reading them off a sweep's result.

A component is a head (`Site("head", l, h)`: its z), an MLP (`Site("mlp_out", l)`), or the token
embeddings (`EMBED`, the input of the first layer), each at every position or at one
(`Site("head", 9, 6, pos="END")`). They are ordinary sites, so a component prints the way it
parses and a circuit can be written down, saved and read back as a list of strings."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import xarray as xr

from actpatch import results
from actpatch.models.model import Model
from actpatch.sites import Site, SiteError, validate

# The token embeddings are what the first layer reads: resid_pre of layer 0. As a component they
# let the empty circuit be exactly the corrupt run (see `evaluate`).
EMBED = Site("resid_pre", 0)
KINDS = ("head", "mlp_out", "resid_pre")
# Dimensions a ranking cannot be read across: the caller must pick one value of each first.
ONE_OF = ("direction", "corruption", "batch")


def components(
    model: Model, *, heads: bool = True, mlps: bool = True, embed: bool = True
) -> list[Site]:
    """Every head, every MLP and the token embeddings (each at every position), layer by layer."""
    dims = model.dims
    found = [EMBED] if embed else []
    for layer in range(dims.n_layers):
        found += [Site("head", layer, head=h) for h in range(dims.n_heads)] if heads else []
        found += [Site("mlp_out", layer)] if mlps else []
    return found


def whole(site: Site) -> Site:
    """The component a site belongs to: the same site at every position."""
    return Site(site.kind, site.layer, site.head, site.neuron)


def checked(model: Model, sites: Iterable[Site], what: str = "circuit") -> list[Site]:
    """`sites` validated as components, layers made non-negative, duplicates dropped (order kept)."""
    parallel = model.arch.is_parallel(model.hf.config)
    found: list[Site] = []
    for s in sites:
        if isinstance(s, str):
            s = Site.parse(s)
        if (
            not isinstance(s, Site)
            or s.kind not in KINDS
            or (s.kind == "resid_pre" and s.layer != 0)
        ):
            raise SiteError(
                f"{what} member {s!r} is not a component: use heads (Site('head', layer, head=h)), MLPs "
                "(Site('mlp_out', layer)) or the token embeddings (actpatch.circuits.EMBED)"
            )
        validate(s, model.arch, model.dims, parallel=parallel)
        s = Site(s.kind, s.layer % model.dims.n_layers, s.head, None, s.pos)
        if s not in found:
            found.append(s)
    return found


def default_universe(model: Model, sites: Sequence[Site]) -> list[Site]:
    """Every component of the kinds `sites` hold: a circuit of heads is weighed against all heads,
    while MLPs and embeddings, which it does not mention, run untouched."""
    kinds = {s.kind for s in sites}
    if not kinds:
        raise SiteError(
            "an empty circuit needs components= to say what is ablated around it, e.g. "
            "actpatch.circuits.components(model)"
        )
    return components(
        model, heads="head" in kinds, mlps="mlp_out" in kinds, embed="resid_pre" in kinds
    )


def sites_of(result: xr.DataArray, metric: str) -> tuple[list[Site], np.ndarray]:
    """The components a sweep (or attribution) result covers, and their values of `metric`, flat.

    The result must be of one direction and one corruption."""
    kind = result.attrs.get("site")
    if kind not in ("head", "mlp_out"):
        raise SiteError(
            f"a ranking is read from a 'head' or 'mlp_out' result; this one is of {kind!r}"
        )
    if extra := [d for d in ONE_OF if d in result.dims]:
        raise ValueError(
            f"this result has a {extra[0]!r} dimension: pick one first, e.g. result.sel({extra[0]}=...)"
        )
    if "metric" not in result.dims or metric not in result.coords["metric"].values:
        raise ValueError(f"the result has no metric {metric!r}")
    values = result.sel(metric=metric)
    dims = [d for d in ("layer", "head", "pos") if d in values.dims]
    if unknown := [d for d in values.dims if d not in dims]:
        raise ValueError(f"cannot read components across the dimension(s) {unknown}")
    # results.sites lists cells in (layer, head, pos) order, as this transpose flattens them.
    return results.sites(values), np.asarray(values.transpose(*dims).values, dtype=float).reshape(
        -1
    )

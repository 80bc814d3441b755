"""The activation at a subspace site as one vector: a residual, a head's z, or a neuron layer.

A subspace lives in the space of one site's vector. Residual kinds and heads are one hook site
each; a *neuron layer* (`neuron[layer=3]`, no `neuron=`) is every neuron of that layer's MLP
side by side, read and written through the public hooks API one neuron at a time, so it needs no
site kind of its own. Reading and writing sites is `hooks`'s job; this module only stacks them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from actpatch import hooks
from actpatch.models.model import Model
from actpatch.pairs import Run
from actpatch.sites import RESIDUAL_KINDS, Site, SiteError

# The kinds a subspace can sit at: a vector per position that the model adds or reads as a whole.
SUBSPACE_KINDS = (*RESIDUAL_KINDS, "head", "neuron")


def as_site(site: Site | str) -> Site:
    """`site` as a Site (text such as `resid_post[layer=1, pos=END]` is parsed), checked to be a
    kind a subspace can sit at."""
    site = Site.parse(site) if isinstance(site, str) else site
    if not isinstance(site, Site):
        raise TypeError(
            f"a subspace site is a Site or text like 'resid_post[layer=1, pos=END]', not {site!r}"
        )
    if site.kind not in SUBSPACE_KINDS:
        raise SiteError(
            f"{site}: a subspace sits at one of {', '.join(SUBSPACE_KINDS)} (q, k, v and pattern "
            "sites are not a vector the model adds to its residual stream or reads as a whole)"
        )
    if site.kind == "neuron" and site.neuron is not None:
        raise SiteError(
            f"{site}: a subspace spans a whole neuron layer; drop neuron= (write neuron[layer=...])"
        )
    return site


def width(model: Model, site: Site) -> int:
    """The length of the site's vector: d_model, d_head, or d_mlp for a neuron layer."""
    if site.kind == "head":
        return model.dims.d_head
    if site.kind == "neuron":
        return model.dims.d_mlp
    return model.dims.d_model


def read(model: Model, run: Run, site: Site) -> Tensor:
    """The site's vector on `run`, (batch, [pos,] d) in the model's dtype, from one forward."""
    return read_all(model, run, [site])[0]


def read_all(model: Model, run: Run, sites: Sequence[Site]) -> list[Tensor]:
    """Each site's vector on `run`, as `read` gives it, all from one forward."""
    parts = {site: hook_sites(model, site) for site in sites}
    captured = hooks.capture(
        model, run, list(dict.fromkeys(p for ps in parts.values() for p in ps))
    )
    return [
        captured[site]
        if site.kind != "neuron"
        else torch.stack([captured[part] for part in parts[site]], dim=-1)
        for site in sites
    ]


def writes(model: Model, site: Site, value: Tensor) -> dict[Site, Tensor]:
    """What `hooks.patch` takes to write `value` (batch, [pos,] d) into the site."""
    if site.kind != "neuron":
        return {site: value}
    return {part: value[..., i] for i, part in enumerate(hook_sites(model, site))}


def hook_sites(model: Model, site: Site) -> list[Site]:
    """The hook sites that make up the site's vector, in the order of its coordinates."""
    if site.kind != "neuron":
        return [site]
    return [Site("neuron", site.layer, neuron=i, pos=site.pos) for i in range(model.dims.d_mlp)]


def patch(model: Model, site: Site, value: Tensor, positions: Mapping[str, Tensor]):
    """`hooks.patch` writing `value` into the site; gradients flow from `value` into the logits."""
    return hooks.patch(model, writes(model, site, value), named_positions=positions)


def final_logits(model: Model, run: Run) -> Tensor:
    """Final-position logits (batch, vocab) in float32, with gradients where the caller enables them
    (`Model.last_logits` runs without: DAS needs the gradient of a patched run)."""
    with hooks.add_to_input(model, run.noise):
        return hooks.final_logits(model, run.tokens).float()

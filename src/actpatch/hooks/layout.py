"""Where a site sits in the tensor a hook sees: canonical views and indices.

A hook sees a module's raw input or output; a site names part of it. `canonical` views that raw
tensor as (batch, pos, [unit,] d), slicing fused q/k/v projections by `Arch.qkv_layout`, and
`index` picks the site out of that view, resolving named positions prompt by prompt. Views share
storage with the raw tensor, so a write through them lands in it. Attaching hooks is not this
module's job (see `attach.py`), nor is deciding what to do with the values (`taps.py`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import torch
from torch import Tensor

from actpatch.models.model import Model
from actpatch.sites import KV_KINDS, Site, SiteError

NamedPositions = Mapping[str, Tensor]  # a named position -> its index in each prompt, (batch,)


def canonical(kind: str, model: Model, raw: Tensor) -> Tensor:
    """A view of `raw` laid out as (batch, pos, [unit,] d); writes through it land in `raw`.

    Patterns keep the attention layout (batch, head, dest_pos, src_pos)."""
    dims = model.dims
    fused = isinstance(model.arch.qkv, str)
    if kind in ("head", "q"):
        if kind == "q" and fused:
            return _fused_slice(model, raw, 0)
        return raw.unflatten(-1, (dims.n_heads, dims.d_head))
    if kind in KV_KINDS:
        if fused:
            return _fused_slice(model, raw, 1 if kind == "k" else 2)
        return raw.unflatten(-1, (dims.n_kv_heads, dims.d_head))
    return raw


def index(site: Site, view: Tensor, positions: NamedPositions) -> tuple:
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
            raise SiteError(
                f"{site}: no named position {pos!r} in these prompts (named positions: {known})"
            )
        rows, where = torch.arange(batch), torch.as_tensor(positions[pos]).to(torch.long)
        if where.shape != (batch,):
            raise SiteError(
                f"{site}: named position {pos!r} has {tuple(where.shape)} entries for {batch} prompts"
            )
    else:
        if not -seq <= pos < seq:
            raise SiteError(f"{site}: position {pos} is out of range for prompts of {seq} tokens")
        rows, where = every, pos % seq
    unit = site.head if site.head is not None else site.neuron
    if site.kind == "pattern":
        return (rows, unit, where)
    return (rows, where) if unit is None else (rows, where, unit)


def normalised(site: Site, n_layers: int) -> Site:
    """`site` with a negative layer counted from the end, so that `layer=-1` and the last layer meet."""
    if site.layer < 0:
        return dataclasses.replace(site, layer=site.layer + n_layers)
    return site


def _fused_slice(model: Model, raw: Tensor, which: int) -> Tensor:
    dims = model.dims
    if model.arch.qkv_layout == "concat":  # [q | k | v], each n_heads × d_head wide
        width = dims.n_heads * dims.d_head
        return raw[..., which * width : (which + 1) * width].unflatten(
            -1, (dims.n_heads, dims.d_head)
        )
    # interleaved: per head [q_h | k_h | v_h]
    per_head = raw.unflatten(-1, (dims.n_heads, 3 * dims.d_head))
    return per_head[..., which * dims.d_head : (which + 1) * dims.d_head]

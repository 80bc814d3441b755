"""One edge removed per copy of the clean run, in a forward resumed at the receiver's layer: the
hooks of exact edge scores (`graph/exact.py`). Only the removed edge's receiver reads another input."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import Tensor

from actpatch.hooks import attach
from actpatch.hooks.layout import canonical
from actpatch.hooks.stack import stacked
from actpatch.models.model import Model


@dataclass
class Removal:
    """Copies of the clean run, each with one edge into one stage (`layer`, `kind`) removed, stacked
    copy-major (copy c of prompt b is row c·batch + b, `stack.py`)."""

    layer: int
    kind: str  # "attn" or "mlp"
    attn_in_norm: str
    receivers: list[
        int
    ]  # per copy: the receiver's column within its stage (attention: q heads, k heads, v heads)
    deltas: Tensor  # (rows, pos, d_model): the removed edge's o_s(clean) − o_s(off) on each row
    clean_z: Tensor | None = (
        None  # (batch, pos, head, d_head): the clean run's z of this layer (attention)
    )


@contextmanager
def removed_edges(model: Model, removal: Removal) -> Iterator[None]:
    """Under the block, the stage's receivers read `input − delta` on each copy's rows.

    With one edge s→r removed and every other edge present, only r's input differs from the clean
    run, so this is the whole edge rule. An MLP's input is the norm's input. A head's q (k, v)
    input: the input norm and the projection are called again on the stream minus the delta, and
    the head's slice of the projection's output (its KV head's, for k and v) is written on the
    copy's rows; at o_proj every other head's z is the clean run's, so under grouped-query
    attention the KV head's new keys reach query head h alone."""
    arch, dims = model.arch, model.dims
    copies = len(removal.receivers)
    layer = removal.layer
    found: list[attach.Registration] = []
    if removal.kind == "mlp":

        def minus_delta(norm, args, kwargs):
            return (args[0] - removal.deltas.to(args[0].dtype), *args[1:]), kwargs

        found.append((model.submodule(layer, arch.mlp_in_norm), minus_delta, "pre"))
    else:
        heads, group = dims.n_heads, dims.n_heads // dims.n_kv_heads
        columns = torch.tensor(removal.receivers)
        kinds, head = columns // heads, columns % heads  # 0, 1, 2: q, k, v
        seen: dict[str, Tensor] = {}

        def remember(norm, args, kwargs):
            seen["normed"] = norm.forward(args[0] - removal.deltas.to(args[0].dtype))

        found.append((model.submodule(layer, removal.attn_in_norm), remember, "pre"))

        def writer(which: tuple[int, ...]):
            def hook(projection, args, output):
                again = projection.forward(seen["normed"])
                output = output.clone()
                for w in which:
                    mine = (kinds == w).nonzero().flatten()
                    if not len(mine):
                        continue
                    kind = "qkv"[w]
                    units = head[mine] if kind == "q" else head[mine] // group
                    batch = output.shape[0] // copies
                    rows = (mine[:, None] * batch + torch.arange(batch)[None, :]).flatten()
                    unit = units.repeat_interleave(batch)
                    view, new = canonical(kind, model, output), canonical(kind, model, again)
                    view[rows, :, unit] = new[rows, :, unit]
                return output

            return hook

        if isinstance(arch.qkv, str):
            found.append((model.submodule(layer, arch.qkv), writer((0, 1, 2)), "out"))
        else:
            for w, path in enumerate(arch.qkv):
                if bool((kinds == w).any()):
                    found.append((model.submodule(layer, path), writer((w,)), "out"))

        def other_heads_clean(o_proj, args, kwargs):
            z = args[0]
            own = z.view(*z.shape[:2], heads, -1)
            clean = stacked(removal.clean_z.to(z.dtype), copies).clone()
            rows = torch.arange(len(clean))  # copy c's rows read head[c]
            unit = head.repeat_interleave(len(clean) // copies)
            clean[rows, :, unit] = own[rows, :, unit]
            return (clean.reshape(z.shape), *args[1:]), kwargs

        found.append((model.submodule(layer, arch.o_proj), other_heads_clean, "pre"))
    with attach.registered(found):
        yield

"""Stacked copies of a run: k copies of a batch of prompts along the batch dimension, in one row
order everywhere (the batched engine's patched copies, edge circuits, exact edge removals).

Copy-major: copy c of a run of `batch` prompts is rows c·batch … (c+1)·batch − 1, its prompts in
their own order. Chosen over prompt-major (row b·k + c, `repeat_interleave`'s order) because a
copy is then one contiguous block: its rows are a slice (`copy_rows`), its logits a view
(`per_copy`), and they do not depend on how many copies are stacked, so copies that join a
resumed forward at later layers are appended at the end and a patch writes the same rows at
every layer. Not copies in this sense: the per-head rows inside one attention call of edge
circuits (`edges.py`), where each row is expanded in place, row n·H + h, as grouped-query
attention repeats its key/value heads.
"""

from __future__ import annotations

from torch import Tensor


def stacked(value: Tensor, copies: int) -> Tensor:
    """`value` (batch, ...) repeated for `copies` stacked copies of its run: (copies·batch, ...)."""
    return value if copies == 1 else value.repeat(copies, *([1] * (value.ndim - 1)))


def copy_rows(copy: int, batch: int) -> slice:
    """The rows of copy `copy` in a stack of runs of `batch` prompts."""
    return slice(copy * batch, (copy + 1) * batch)


def per_copy(value: Tensor, copies: int) -> Tensor:
    """(copies·batch, ...) → (copies, batch, ...), a view: each copy's rows on their own."""
    return value.unflatten(0, (copies, -1))

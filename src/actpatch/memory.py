"""How many bytes of activations one stacked forward may hold when the caller does not say.

On a CPU a fixed 1 GiB: running out there usually means swapping, not an error the back-off could
catch, so a modest default is the safe one. On CUDA a fixed 1 GiB leaves a large GPU mostly idle
(an 80 GiB card would run chunks of a few dozen copies), so the default follows the free memory
of the fullest device the model computes on; a chunk that still runs out is halved and retried."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from actpatch.models.arch import Dims

CPU_BUDGET = 1 << 30  # bytes
# The share of a CUDA device's free memory one chunk may take: the estimate per copy is rough, and
# the allocator's fragmentation and the kernels' workspaces take their part of the rest.
FREE_SHARE = 0.5
MIN_BUDGET = 256 << 20  # below this a CUDA device is nearly full; the back-off handles the rest


def default_budget(devices: Iterable[torch.device]) -> int:
    """The default activation budget for a model whose layers compute on `devices`: the smallest of
    CPU_BUDGET for any device that is not CUDA (a model split over a GPU and the CPU holds the
    chunk on both) and FREE_SHARE of each CUDA device's free memory (at least MIN_BUDGET)."""
    budgets = []
    for device in {torch.device(d) for d in devices}:
        if device.type == "cuda":
            budgets.append(max(MIN_BUDGET, int(FREE_SHARE * torch.cuda.mem_get_info(device)[0])))
        else:
            budgets.append(CPU_BUDGET)
    return min(budgets, default=CPU_BUDGET)


def copy_bytes(dims: Dims, batch: int, seq: int, width: int, *, cache: bool = False) -> int:
    """Estimated bytes one stacked copy of `batch` prompts of `seq` tokens holds while a forward
    runs: one decoder layer's transient activations (`width` bytes each, the model's dtype), with
    `cache` its share of the key/value cache, and its float32 final-position logits."""
    per_token = 6 * dims.d_model + 3 * dims.d_mlp + 3 * dims.n_heads * seq
    key_values = 2 * dims.n_layers * seq * dims.n_kv_heads * dims.d_head if cache else 0
    return batch * (width * (seq * per_token + key_values) + 4 * dims.vocab)

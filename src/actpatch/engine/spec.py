"""A sweep's arguments in one frozen value: what `plan` checks once and every engine reads.

The public `sweep()` takes them as keywords (that is how researchers call it); everything below
it passes this one object, so an argument is declared, defaulted and documented in one place."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal, Sequence, get_args

from actpatch.pairs import PromptPairs

Direction = Literal["denoise", "noise"]
DIRECTIONS: tuple[str, ...] = get_args(Direction)
Positions = Literal["each", "all"] | Sequence[int | str] | int | str | None
# Noising sources that are not a second run: the target's own activations, zeroed, averaged over
# prompts (or over `mean_over` prompts), or taken from another prompt of the batch (resampled).
Ablation = Literal["zero", "mean", "resample"]
ABLATIONS: tuple[str, ...] = get_args(Ablation)


@dataclass(frozen=True, eq=False)
class SweepSpec:
    """What to patch and how: one direction, one site kind, the selection, the source of values."""

    site: str  # a kind ("head"), optionally with a layer ("blocks.3.hook_resid_pre")
    direction: Direction = "denoise"
    layers: Sequence[int] | int | None = None
    positions: Positions = None  # "each", "all", or indices and named positions
    heads: Sequence[int] | int | None = None
    neurons: Sequence[int] | int | None = None
    latents: Sequence[int] | int | None = None  # feature sweeps: which latents of `dictionary`
    dictionary: Any = None  # feature sweeps: the basis (load_dictionary) whose latents are sites
    per_prompt: bool = False  # rows keep a `batch` dimension
    ablation: Ablation | None = None  # noising from the target's own values, knocked out
    mean_over: PromptPairs | None = None  # prompts whose clean runs ablation="mean" averages
    check_baseline: bool = True
    chunk: int | None = None  # patched copies per forward (batched engine); None: from memory_budget
    memory_budget: int | None = None  # bytes; None: memory.default_budget (1 GiB on CPU, half the free memory on CUDA)
    progress: bool | None = None  # None: a bar on a terminal only

    def replace(self, **changes: Any) -> "SweepSpec":
        return dataclasses.replace(self, **changes)


def check_engine_options(spec: SweepSpec) -> None:
    """Raise `ValueError` for a chunk or memory budget that is not a positive number."""
    chunk, budget = spec.chunk, spec.memory_budget
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(f"chunk must be at least 1 (a whole number of patched copies per forward), got {chunk!r}")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0):
        raise ValueError(f"memory_budget must be a positive number of bytes (e.g. 4 << 30 for 4 GiB), got {budget!r}")

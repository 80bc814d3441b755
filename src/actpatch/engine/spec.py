"""A sweep's arguments in one frozen value: what `plan` checks once and every engine reads.

The public `sweep()` takes them as keywords (that is how researchers call it); everything below
it passes this one object, so an argument is declared, defaulted and documented in one place."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar, get_args

from actpatch.pairs import PromptPairs

# The engines, named alike at node level (sweeps) and edge level (edge scores, edge circuits): the
# fast exact path, and the plain one-patch-at-a-time oracle it is tested against.
EngineName = Literal["batched", "reference"]
ENGINES: tuple[str, ...] = get_args(EngineName)
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
    chunk: int | None = (
        None  # patched copies per forward (batched engine); None: from memory_budget
    )
    memory_budget: int | None = (
        None  # bytes; None: memory.default_budget (1 GiB on CPU, half the free memory on CUDA)
    )
    progress: bool | None = None  # None: a bar on a terminal only

    def replace(self, **changes: Any) -> SweepSpec:
        return dataclasses.replace(self, **changes)


def spec_from(site: str, direction: Direction, given: Any, **named: Any) -> SweepSpec:
    """A SweepSpec from a call's options value (`SweepOptions`, `AttributeOptions`) and its named
    arguments: every field the spec shares with `given` is taken from it, and `named` win."""
    shared = {
        f.name: getattr(given, f.name)
        for f in dataclasses.fields(SweepSpec)
        if hasattr(given, f.name)
    }
    return SweepSpec(site, direction, **{**shared, **named})


def check_engine_options(spec: SweepSpec) -> None:
    """Raise `ValueError` for a chunk or memory budget that is not a positive number."""
    chunk, budget = spec.chunk, spec.memory_budget
    if chunk is not None and (isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1):
        raise ValueError(
            f"chunk must be at least 1 (a whole number of patched copies per forward), got {chunk!r}"
        )
    if budget is not None and (
        isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0
    ):
        raise ValueError(
            f"memory_budget must be a positive number of bytes (e.g. 4 << 30 for 4 GiB), got {budget!r}"
        )


@dataclass(frozen=True)
class SweepOptions:
    """The keywords `sweep()` takes beyond the common ones (site selection by heads or neurons, how
    it runs). Pass them as keywords (`sweep(..., chunk=8)`) or as one value
    (`sweep(..., options=SweepOptions(chunk=8))`); the keywords win where both are given."""

    heads: Sequence[int] | int | None = None
    neurons: Sequence[int] | int | None = None
    dictionary: Any = (
        None  # a Basis (actpatch.load_dictionary): with site="feature"/"feature_error"
    )
    latents: Sequence[int] | str | None = None  # its latents: a list, or "active"
    mean_over: PromptPairs | None = None  # prompts whose clean runs ablation="mean" averages
    reference: PromptPairs | None = None  # the old name of mean_over (deprecated)
    check_baseline: bool = True
    chunk: int | None = None
    memory_budget: int | None = None
    progress: bool | None = None
    checkpoint: str | os.PathLike | None = None
    shards: int | None = None
    ray_address: str | None = None


@dataclass(frozen=True)
class AttributeOptions:
    """The keywords `attribute()` takes beyond the common ones, as `SweepOptions` are for sweeps."""

    heads: Sequence[int] | int | None = None
    neurons: Sequence[int] | int | None = None
    dictionary: Any = None  # a Basis, with site="feature"/"feature_error"
    latents: Sequence[int] | str | None = None
    graddrop: bool = False
    check_baseline: bool = True
    progress: bool | None = None


Options = TypeVar("Options")


def options_from(kind: type[Options], keywords: dict[str, Any], caller: str) -> Options:
    """`keywords` (and an `options=` value among them) folded into one `kind`; an unknown keyword
    is refused as Python refuses it, naming the caller and the keywords it takes."""
    keywords = dict(keywords)
    given = keywords.pop("options", None) or kind()
    if not isinstance(given, kind):
        raise TypeError(f"{caller}(options=) takes a {kind.__name__}, got {type(given).__name__}")
    names = [f.name for f in dataclasses.fields(kind)]
    if unknown := [k for k in keywords if k not in names]:
        raise TypeError(
            f"{caller}() got an unexpected keyword argument {unknown[0]!r}; besides its named "
            f"parameters it takes {', '.join(names)}"
        )
    return dataclasses.replace(given, **keywords)

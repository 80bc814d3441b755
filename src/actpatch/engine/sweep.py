"""`sweep`: the one entry point for exact patching sweeps; picks the engine and the directions."""
from __future__ import annotations

import logging
from typing import Literal, Sequence

import xarray as xr

from actpatch.engine import batched, reference
from actpatch.engine.plan import DIRECTIONS, Direction, Positions
from actpatch.models.model import Model
from actpatch.pairs import PromptPairs

log = logging.getLogger(__name__)

Engine = Literal["batched", "reference"]
ENGINES = ("batched", "reference")


def sweep(
    model: Model,
    pairs: PromptPairs,
    site: str,
    *,
    direction: Direction | Sequence[Direction] = "denoise",
    layers: Sequence[int] | None = None,
    positions: Positions = None,
    heads: Sequence[int] | None = None,
    neurons: Sequence[int] | None = None,
    per_prompt: bool = False,
    engine: Engine = "batched",
    chunk: int | None = None,
    memory_budget: int | None = None,
    progress: bool | None = None,
) -> xr.DataArray:
    """Patch every site of one kind and measure every metric: a labelled `metric × layer × ...` result.

    `direction="denoise"` writes clean activations into the corrupt run (which sites are
    *sufficient* to restore the answer); `"noise"` writes corrupt ones into the clean run (which are
    *necessary*); a list of both adds a `direction` dimension. `positions`: "each" (one patch per
    position; the default for residual sites), "all" (every position in one patch; the default for
    per-head and neuron sites), or a list of indices and named positions. `engine="reference"`
    patches one site per plain forward, the oracle the default "batched" engine is tested against.
    `progress=None` shows a bar only on a terminal."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    options = dict(layers=layers, positions=positions, heads=heads, neurons=neurons, per_prompt=per_prompt, progress=progress)
    if engine == "batched":
        options.update(chunk=chunk, memory_budget=memory_budget)
    if engine == "batched" and (reason := batched.unsupported(model)):
        log.warning("the batched engine's shortcuts are not proven for this model (%s); using the reference engine", reason)
        engine, options = "reference", {k: v for k, v in options.items() if k not in ("chunk", "memory_budget")}
    run = batched.sweep if engine == "batched" else reference.sweep
    if isinstance(direction, str):
        return run(model, pairs, site, direction=direction, **options)
    directions = list(direction)
    if not directions or any(d not in DIRECTIONS for d in directions):
        raise ValueError(f"direction must be one of {DIRECTIONS} or a list of them, got {direction!r}")
    parts = [run(model, pairs, site, direction=d, **options) for d in directions]
    return xr.concat(parts, dim="direction", combine_attrs="drop_conflicts").assign_coords(direction=directions)

"""`sweep`: the one entry point for exact patching sweeps; picks the engine and the directions."""
from __future__ import annotations

import contextlib
import functools
import logging
import os
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

import xarray as xr

from actpatch.engine import batched, groups
from actpatch.engine import shards as shard_engine
from actpatch.engine import reference as reference_engine
from actpatch.engine.plan import DIRECTIONS, Ablation, Direction, Positions, check_model
from actpatch.models.model import Model
from actpatch.pairs import PromptPairs

log = logging.getLogger(__name__)

Engine = Literal["batched", "reference"]
ENGINES = ("batched", "reference")


def sweep(
    model: Model,
    pairs: PromptPairs | Sequence[PromptPairs],
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
    ablation: Ablation | None = None,
    reference: PromptPairs | None = None,
    check_baseline: bool = True,
    checkpoint: str | os.PathLike | None = None,
    shards: int | None = None,
    ray_address: str | None = None,
) -> xr.DataArray:
    """Patch every site of one kind and measure every metric: a labelled `metric × layer × ...` result.

    `direction="denoise"` writes clean activations into the corrupt run (which sites are
    *sufficient* to restore the answer); `"noise"` writes corrupt ones into the clean run (which are
    *necessary*); a list of both adds a `direction` dimension. `positions`: "each" (one patch per
    position; the default for residual sites), "all" (every position in one patch; the default for
    per-head and neuron sites), or a list of indices and named positions. `pairs` may be a list of
    PromptPairs of different token lengths (`PromptPairs.groups_from_strings`): each is swept and
    the results pooled exactly, at named positions. `engine="reference"`
    patches one site per plain forward, the oracle the default "batched" engine is tested against.
    `ablation` (noising only) patches the clean run's own activations knocked out instead of the
    corrupt run's: "zero", "mean" (over the prompts, or over `reference` prompts' clean runs), or
    "resample" (each prompt takes another prompt's value). Before sweeping, the clean run must beat
    the corrupt one on the logit difference, or every normalised number is noise: the sweep refuses
    (`BaselineError`) unless `check_baseline=False`. `progress=None` shows a bar only on a terminal.

    `checkpoint` (a folder) makes a long sweep survive being killed: the batched engine writes each
    finished chunk's rows there, and a later call with the same folder and the same arguments
    loads them and patches only the rest, giving the same result. A folder written by a different
    sweep (model, prompts, sites, direction, ablation) is refused with `CheckpointMismatch`. Each
    direction (and each length group) gets its own subfolder. The reference engine does not
    checkpoint (each of its patches is one plain forward): it logs a warning and ignores the folder.

    `shards` cuts each direction's sites into that many pieces and patches them on Ray workers
    (`pip install 'actpatch[ray]'`), each holding its own copy of the model, loaded from where
    `model` was loaded (a model built in memory is refused: save it and load it from the folder).
    The result is the single-process one; `attrs["cost"]` counts the shards. `ray_address` names a
    running cluster ("auto" on one of its nodes, or "ray://head:10001"); without it a Ray already
    running in this process, or `$RAY_ADDRESS`, or a local Ray started for this call is used
    (docs/scale.md). A worker that dies is restarted and only its shard runs again."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    check_model(model)
    if shards is not None:
        shard_engine.check_shards(shards)
        if engine != "batched":
            raise ValueError("shards= runs the batched engine on every worker; engine='reference' (the one-patch-per-forward "
                             "oracle) does not shard: drop one of them")
        if reason := batched.unsupported(model):
            raise ValueError(f"shards= runs the batched engine on every worker, whose shortcuts are not proven for this model "
                             f"({reason}): sweep it without shards= (it falls back to the reference engine)")
    options = dict(layers=layers, positions=positions, heads=heads, neurons=neurons, per_prompt=per_prompt, progress=progress,
                   ablation=ablation, reference=reference, check_baseline=check_baseline)
    if engine == "batched":
        options.update(chunk=chunk, memory_budget=memory_budget)
    if engine == "batched" and (reason := batched.unsupported(model)):
        log.warning("the batched engine's shortcuts are not proven for this model (%s); using the reference engine", reason)
        engine, options = "reference", {k: v for k, v in options.items() if k not in ("chunk", "memory_budget")}
    run = batched.sweep if engine == "batched" else reference_engine.sweep
    with contextlib.ExitStack() as stack:
        if shards is not None:  # one set of workers for every direction and length group of this call
            run = stack.enter_context(shard_engine.Workers(model, shards=shards, ray_address=ray_address)).sweep
        if checkpoint is not None and engine == "batched":
            run = _checkpointed(run, Path(checkpoint), grouped=not isinstance(pairs, PromptPairs))
        elif checkpoint is not None:
            log.warning("the reference engine does not checkpoint; %s is not used", checkpoint)
        if not isinstance(pairs, PromptPairs):
            run, pairs = functools.partial(groups.sweep_groups, run), list(pairs)
        if isinstance(direction, str):
            return run(model, pairs, site, direction=direction, **options)
        directions = list(direction)
        if not directions or any(d not in DIRECTIONS for d in directions):
            raise ValueError(f"direction must be one of {DIRECTIONS} or a list of them, got {direction!r}")
        parts = [run(model, pairs, site, direction=d, **options) for d in directions]
    return xr.concat(parts, dim="direction", combine_attrs="drop_conflicts").assign_coords(direction=directions)


def _checkpointed(run: Callable[..., xr.DataArray], folder: Path, *, grouped: bool) -> Callable[..., xr.DataArray]:
    """`run` with a checkpoint subfolder per direction, and per token length when prompts come in
    length groups (each group is its own sweep plan, so each needs its own checkpoint)."""

    def run_into_folder(model: Model, pairs: PromptPairs, site: str, *, direction: str, **options: Any) -> xr.DataArray:
        where = folder / direction / f"length-{pairs.seq_len}" if grouped else folder / direction
        return run(model, pairs, site, direction=direction, checkpoint=where, **options)

    return run_into_folder

"""`sweep`: the one entry point for exact patching sweeps. It turns the keywords into a `SweepSpec`,
picks the engine, and runs each direction (and length group) through `runner.run`."""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import xarray as xr

from actpatch import caller
from actpatch.engine import batched, groups, runner
from actpatch.engine import reference as reference_engine
from actpatch.engine import shards as shard_engine
from actpatch.engine.spec import (
    DIRECTIONS,
    ENGINES,
    Ablation,
    Direction,
    EngineName,
    Positions,
    SweepOptions,
    SweepSpec,
    options_from,
    spec_from,
)
from actpatch.models.model import Model, check_model
from actpatch.pairs import PromptPairs
from actpatch.stats import bootstrap

log = logging.getLogger(__name__)


@bootstrap.old_keywords("n_boot", "boot_seed")
def sweep(
    model: Model,
    pairs: PromptPairs | Sequence[PromptPairs],
    site: str,
    *,
    direction: Direction | Sequence[Direction] = "denoise",
    layers: Sequence[int] | None = None,
    positions: Positions = None,
    per_prompt: bool = False,
    ablation: Ablation | None = None,
    engine: EngineName = "batched",
    ci: float | bootstrap.Bootstrap | None = None,
    **options: Any,
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
    corrupt run's: "zero", "mean" (over the prompts, or over the clean runs of the `mean_over` prompts; `reference=` is its
    old name), or
    "resample" (each prompt takes another prompt's value). Before sweeping, the clean run must beat
    the corrupt one on the logit difference, or every normalised number is noise: the sweep refuses
    (`BaselineError`) unless `check_baseline=False`. `progress=None` shows a bar only on a terminal.

    `site="feature"` patches latents of `dictionary` (`actpatch.load_dictionary(path, model)`) one
    at a time: patching latent i moves the activation the dictionary writes by (source latent −
    target latent) × its decoder row i. `latents` is a list of indices or "active" (the latents
    non-zero in either run at the swept positions). `site="feature_error"` patches the dictionary's
    error node (what it fails to reconstruct) at each position (docs/features.md).

    `checkpoint` (a folder) makes a long sweep survive being killed: each finished chunk's rows are
    written there (by any engine), and a later call with the same folder and the same arguments
    loads them and patches only the rest, giving the same result. A folder written by a different
    sweep (model, prompts, sites, direction, ablation) is refused with `CheckpointMismatch`. Each
    direction (and each length group) gets its own subfolder.

    `shards` cuts each direction's sites into that many pieces and patches them on Ray workers
    (`pip install 'actpatch[ray]'`), each holding its own copy of the model, loaded from where
    `model` was loaded (a model built in memory is refused: save it and load it from the folder).
    The result is the single-process one; `attrs["cost"]` counts the shards. `ray_address` names a
    running cluster ("auto" on one of its nodes, or "ray://head:10001"); without it a Ray already
    running in this process, or `$RAY_ADDRESS`, or a local Ray started for this call is used
    (docs/scale.md). A worker that dies is restarted and only its shard runs again.

    `ci` (e.g. 0.95, or `actpatch.Bootstrap(0.95, n_boot=..., seed=...)`) puts an interval on every
    number: the sweep keeps every prompt's rows and returns `actpatch.stats.intervals(rows, ci=ci)`,
    the result without `batch` and with a `stat` dimension ["value", "lo", "hi"] whose `value` is
    this sweep's number (docs/uncertainty.md). It refuses `per_prompt=True`: for the rows
    themselves, sweep with per_prompt=True and call `actpatch.stats.intervals` on them.

    The keywords not named in the signature (`heads`, `neurons`, `dictionary`, `latents`, `mean_over`, `check_baseline`,
    `chunk`, `memory_budget`, `progress`, `checkpoint`, `shards`, `ray_address`) are gathered in one
    `SweepOptions`, which may also be passed as `options=`."""
    given = options_from(SweepOptions, options, "sweep")
    dictionary, latents = given.dictionary, given.latents
    checkpoint, shards, ray_address = given.checkpoint, given.shards, given.ray_address
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    check_model(model)
    ci = bootstrap.Bootstrap.of(ci)
    if ci is not None and per_prompt:
        raise ValueError(
            "ci= returns intervals computed from the per-prompt rows, not the rows: drop per_prompt=True, "
            "or sweep with per_prompt=True and call actpatch.stats.intervals(result, ci=...)"
        )
    mean_over = _mean_over(given.mean_over, given.reference)
    directions = [direction] if isinstance(direction, str) else list(direction)
    if not directions or any(d not in DIRECTIONS for d in directions):
        raise ValueError(
            f"direction must be one of {DIRECTIONS} or a list of them, got {direction!r}"
        )
    if shards is not None and dictionary is not None:
        raise ValueError(
            "shards= does not ship a dictionary to its Ray workers yet: sweep feature "
            "sites without shards= (the batched engine stacks them in one process)"
        )
    if isinstance(latents, str) and latents == "active":
        from actpatch.bases.select import active_latents  # two forwards: only for feature sweeps

        latents = active_latents(model, pairs, dictionary, positions)
    if dictionary is not None:
        from actpatch.bases.on_prompts import check_reconstruction

        check_reconstruction(model, pairs, dictionary, positions)  # warns if error nodes dominate
    spec = spec_from(
        site,
        directions[0],
        given,
        layers=layers,
        positions=positions,
        latents=latents,
        per_prompt=per_prompt or ci is not None,
        ablation=ablation,
        mean_over=mean_over,
    )
    chosen = _engine(model, engine, shards)
    with contextlib.ExitStack() as stack:
        if (
            shards is not None
        ):  # one set of workers for every direction and length group of this call
            chosen = stack.enter_context(
                shard_engine.Workers(model, shards=shards, ray_address=ray_address)
            )
        folder = None if checkpoint is None else Path(checkpoint)
        parts = [
            _one_direction(model, pairs, spec.replace(direction=d), chosen, folder)
            for d in directions
        ]
    result = parts[0] if isinstance(direction, str) else stacked(parts, "direction", directions)
    return result if ci is None else bootstrap.intervals(result, ci=ci)


def stacked(parts: list[xr.DataArray], dim: str, labels: list[str]) -> xr.DataArray:
    """`parts` stacked on a new dimension `dim`; the provenance they share is kept, and what each part
    measured of itself (self-checks, cost, source) is kept per part, e.g. `self_checks["noise: noop_patch_error"]`."""
    result = xr.concat(parts, dim=dim, join="outer", combine_attrs="drop_conflicts").assign_coords(
        {dim: labels}
    )
    result.attrs["self_checks"] = {
        f"{label}: {name}": value
        for label, part in zip(labels, parts)
        for name, value in part.attrs["self_checks"].items()
    }
    result.attrs["self_check_tolerance"] = max(
        part.attrs.get("self_check_tolerance", 0.0) for part in parts
    )
    # Kept per part where parts differ (by label): what the bootstrap needs to resample each part alone.
    for key in (
        "cost",
        "source",
        dim,
        "n_prompts",
        "group_sizes",
        "per_prompt_baseline_logit_diff",
    ):
        if key in parts[0].attrs and any(
            part.attrs.get(key) != parts[0].attrs[key] for part in parts
        ):
            result.attrs[key] = {label: part.attrs.get(key) for label, part in zip(labels, parts)}
    return result


def _mean_over(mean_over: PromptPairs | None, reference: PromptPairs | None) -> PromptPairs | None:
    """`mean_over=`, or the `reference=` it was called before (the reference engine owns that word now)."""
    if reference is None:
        return mean_over
    if mean_over is not None:
        raise ValueError("reference= is the old name of mean_over=; pass only mean_over=")
    warnings.warn(
        "sweep(reference=...) is now sweep(mean_over=...): the prompts whose clean runs ablation='mean' "
        "averages; reference= will be removed",
        DeprecationWarning,
        stacklevel=caller.stacklevel(),
    )
    return reference


def _engine(model: Model, engine: str, shards: int | None) -> runner.Engine:
    """The engine object for `engine=`; the batched engine falls back to the reference on unproven models."""
    if shards is not None:
        shard_engine.check_shards(shards)
        if engine != "batched":
            raise ValueError(
                "shards= runs the batched engine on every worker; engine='reference' (the one-patch-per-forward "
                "oracle) does not shard: drop one of them"
            )
        if reason := batched.unsupported(model):
            raise ValueError(
                f"shards= runs the batched engine on every worker, whose shortcuts are not proven for this model "
                f"({reason}): sweep it without shards= (it falls back to the reference engine)"
            )
        return batched.Batched()  # replaced by the workers once they are started
    if engine == "batched" and (reason := batched.unsupported(model)):
        log.warning(
            "the batched engine's shortcuts are not proven for this model (%s); using the reference engine",
            reason,
        )
        engine = "reference"
    return batched.Batched() if engine == "batched" else reference_engine.Reference()


def _one_direction(
    model: Model,
    pairs: PromptPairs | Sequence[PromptPairs],
    spec: SweepSpec,
    engine: runner.Engine,
    folder: Path | None,
) -> xr.DataArray:
    """One direction's sweep; prompts in length groups are swept group by group and pooled. Each
    direction (and length group) keeps its own checkpoint subfolder."""
    where = None if folder is None else folder / spec.direction
    if isinstance(pairs, PromptPairs):
        return runner.run(model, pairs, spec, engine, checkpoint=where)

    def run_group(group: PromptPairs, group_spec: SweepSpec) -> xr.DataArray:
        return runner.run(
            model,
            group,
            group_spec,
            engine,
            checkpoint=None if where is None else where / f"length-{group.seq_len}",
        )

    return groups.sweep_groups(run_group, model, pairs, spec)

"""Distributed alignment search: learn the subspace in which a site carries a variable.

DAS (Geiger et al. 2023) learns an orthonormal U (d × r) such that patching span(U) from the
source run into the target run, x_t + U Uᵀ (x_s − x_t), makes the model give the counterfactual
answer: the one the source's value of the variable should produce. U is a linear map kept
orthonormal by PyTorch's `orthogonal` parametrisation (Householder products for a non-square
weight), trained with Adam on the cross-entropy of the patched run's final-position logits, on a
training share of the pairs, stopping early when the training loss stops improving; every
number reported is measured on the held-out pairs. Non-linear maps are not offered: they find
"variables" even in randomly initialised models (Sutter et al. 2025). Learning U (fixed rank, or
boundless: the rank learned too) is `learn.py`'s job; this module splits, judges and labels.

The guards (`guards.py`) run by default and their flags travel with the result.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Literal

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from actpatch import metrics, results
from actpatch.bases import vectors
from actpatch.bases.subspace import BasisError, Subspace
from actpatch.models.model import Model
from actpatch.pairs import PairsError, PromptPairs
from actpatch.sites import Site
from actpatch.stats.bootstrap import (
    DEFAULT,
    Bootstrap,
    old_keywords,
    percentile,
    replicates,
    rows_block,
    statistic,
)
from actpatch.subspace.guards import SCORES, Controls, Guards, flags_of, measure, reinitialised
from actpatch.subspace.learn import Training, initial_rotation, learn, learn_boundless
from actpatch.subspace.patching import Interchange, interchange
from actpatch.subspace.result import CONTROLS, DASResult

__all__ = ["Training", "das", "initial_rotation", "learn", "learn_boundless"]

PARAMETRISATION = "torch.nn.utils.parametrizations.orthogonal (Householder), Adam, cross-entropy"
BOUNDLESS = (
    "boundless DAS: a full rotation (torch orthogonal, matrix exponential) and a learned boundary "
    "under an annealed sigmoid mask, Adam, cross-entropy + boundary penalty"
)


@old_keywords("n_boot")
def das(
    model: Model,
    pairs: PromptPairs,
    site: Site | str,
    *,
    rank: int | Literal["learned"],
    direction: Literal["denoise", "noise"] = "denoise",
    counterfactual: Tensor | None = None,
    test_share: float = 0.5,
    seed: int = 0,
    training: Training | None = None,
    guards: Guards | bool = True,
    ci: float | Bootstrap = DEFAULT,
) -> DASResult:
    """Learn a rank-`rank` subspace at `site` (one position: `pos=END`, or an index) and judge it;
    `rank="learned"` learns the rank too (boundless DAS, `learn.learn_boundless`).

    Denoising patches clean into corrupt and asks for `pairs.answers` over `pairs.wrong`, unless
    `counterfactual` (one token id per pair) names the answer the source's value should produce
    (required for noising; see `patching.interchange`). `test_share` of the pairs (drawn by
    `seed`, which also seeds U's start) are held out, and every number in the result is measured
    on them; `training` says how U is learned (default `Training()`). `guards` (on by default; `Guards(...)` to tune,
    False to skip) adds the full-component, row/null-space, random-subspace and re-initialised-
    model controls and their flags. Intervals: `ci` bootstrap over the held-out prompts (a level,
    or an `actpatch.Bootstrap` for the resamples' count and seed)."""
    site = vectors.as_site(site)
    training = Training() if training is None else training
    _check(model, pairs, site, rank, test_share, training)
    ci = Bootstrap.of(ci)
    if not isinstance(guards, (bool, Guards)):
        raise TypeError(f"guards is True, False or a Guards(n_random=..., ...), not {guards!r}")
    settings = Guards() if guards is True else guards
    train, test = _split(len(pairs), test_share, seed)
    run = interchange(model, pairs, site, direction=direction, counterfactual=counterfactual)
    U, losses, steps_run = _search(model, run[train], rank, training, seed)
    held_out = run[test]
    groups = {
        "test": (
            held_out.baseline,
            {
                "subspace": held_out.per_prompt(model, held_out.subspace_value(U)),
                "unpatched": metrics.per_prompt(
                    held_out.baseline.corrupt_logits, held_out.baseline
                ),
            },
        ),
        "train": (
            run[train].baseline,
            {"subspace_train": run[train].per_prompt(model, run[train].subspace_value(U))},
        ),
    }
    controls = Controls()
    if settings:
        controls = measure(model, held_out, U, n_random=settings.n_random, seed=seed)
        groups["test"][1].update({k: _torch(v) for k, v in controls.rows.items()})
        if settings.random_model:
            other = reinitialised(model, seed)
            other_run = interchange(
                other, pairs, site, direction=direction, counterfactual=counterfactual
            )
            other_U, _, _ = _search(other, other_run[train], rank, training, seed)
            other_test = other_run[test]
            groups["random_model"] = (
                other_test.baseline,
                {"random_model": other_test.per_prompt(other, other_test.subspace_value(other_U))},
            )
    table = _table(groups, controls, ci)
    scores = {
        c: {s: float(table.sel(control=c, metric=s, stat="value")) for s in SCORES}
        for c in CONTROLS
        if not np.isnan(float(table.sel(control=c, metric="iia", stat="value")))
    }
    flags = flags_of(scores, controls, margin=settings.margin) if settings else []
    subspace = Subspace(site, U.detach().cpu(), name=f"das.{site.kind}.{site.layer}")
    table.attrs = results.provenance(
        model,
        pairs,
        analysis="das",
        site=str(site),
        rank=U.shape[1],
        rank_learned=rank == "learned",
        direction=direction,
        method=BOUNDLESS if rank == "learned" else PARAMETRISATION,
        training=asdict(training),
        das_seed=seed,  # "seed" is the prompts' generator's, from provenance()
        steps_run=steps_run,
        test_share=test_share,
        n_train=len(train),
        n_test=len(test),
        guards=asdict(settings) if settings else False,
        readout=controls.readout,
        row_rank=controls.row_rank,
        null_rank=controls.null_rank,
        row_share=controls.row_share,
        flags=list(flags),
        interval=ci.note(resampled="held-out prompts, with replacement"),
    )
    draws = xr.DataArray(controls.random, dims=("draw", "metric"), coords={"metric": list(SCORES)})
    return DASResult(
        subspace,
        table,
        draws,
        _projection(held_out, U, test),
        tuple(flags),
        tuple(losses),
        tuple(train.tolist()),  # plain ints, not 0-d tensors
        tuple(test.tolist()),
    )


def _search(
    model: Model, run: Interchange, rank: int | str, training: Training, seed: int
) -> tuple[Tensor, list[float], int]:
    if rank == "learned":
        return learn_boundless(model, run, training, seed=seed)
    return learn(model, run, rank, training, seed=seed)


def _check(
    model: Model,
    pairs: PromptPairs,
    site: Site,
    rank: int | str,
    test_share: float,
    training: Training,
) -> None:
    d = vectors.width(model, site)
    if rank != "learned" and (not isinstance(rank, int) or not 1 <= rank <= d):
        raise BasisError(
            f"{site}: rank must be a whole number from 1 to the site's width {d}, or "
            f'"learned" (boundless DAS), got {rank!r}'
        )
    if not 0 < test_share < 1:
        raise ValueError(
            f"test_share is the held-out share of the pairs, between 0 and 1, got {test_share!r}"
        )
    if not isinstance(training, Training):
        raise TypeError(f"training is a Training(steps=..., lr=...), not {training!r}")
    if training.steps < 0 or training.check_every < 1 or training.batch_size < 1:
        raise ValueError(
            f"{training}: steps must be 0 or more, check_every and batch_size 1 or more"
        )
    if rank == "learned" and (training.steps < 1 or min(training.temperature) <= 0):
        raise ValueError(
            f"{training}: boundless DAS needs steps of 1 or more and positive temperatures"
        )
    n_test = round(len(pairs) * test_share)
    if n_test < 2 or len(pairs) - n_test < 2:
        raise PairsError(
            f"das splits the pairs into training and held-out sets of at least 2 each; "
            f"{len(pairs)} pairs at test_share={test_share} give {len(pairs) - n_test} and "
            f"{n_test}: pass more pairs (a task generator's n=) or another test_share"
        )


def _split(n: int, test_share: float, seed: int) -> tuple[Tensor, Tensor]:
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    n_test = round(n * test_share)
    return order[n_test:].sort().values, order[:n_test].sort().values


def _table(groups: dict, controls: Controls, boot: Bootstrap) -> xr.DataArray:
    """(control, metric, stat): each group's rows resampled with its own baselines."""
    table = np.full((len(CONTROLS), len(SCORES), 3), np.nan)
    for baseline, rows in groups.values():
        names = list(rows)
        block = rows_block(
            [{m: v.detach().cpu().double().numpy() for m, v in rows[n].items()} for n in names],
            baseline.clean_logit_diff.cpu().numpy(),
            baseline.corrupt_logit_diff.cpu().numpy(),
        )
        value = statistic(block, np.ones((1, block.n)))[0]  # (metric, cell)
        lo, hi = percentile(replicates(block, boot), boot)
        for cell, name in enumerate(names):
            for j, metric in enumerate(SCORES.values()):
                at = metrics.METRICS.index(metric)
                table[CONTROLS.index(name), j] = value[at, cell], lo[at, cell], hi[at, cell]
    if len(controls.random):
        tail = (1 - boot.ci) / 2
        quantiles = np.quantile(controls.random, [tail, 1 - tail], axis=0)
        table[CONTROLS.index("random_subspaces")] = np.stack(
            [controls.random.mean(0), *quantiles], -1
        )
    return xr.DataArray(
        table,
        dims=("control", "metric", "stat"),
        coords={"control": list(CONTROLS), "metric": list(SCORES), "stat": ["value", "lo", "hi"]},
    )


def _projection(run: Interchange, U: Tensor, rows: Tensor) -> xr.DataArray:
    """Each held-out prompt's coordinates in the learned subspace, in the source and target runs."""
    with torch.no_grad():
        found = torch.stack([run.source.float() @ U, run.target.float() @ U]).cpu().numpy()
    dims = ("run", "batch", *(("pos",) if run.site.pos is None else ()), "latent")
    return xr.DataArray(
        found, dims=dims, coords={"run": ["source", "target"], "batch": rows.tolist()}
    )


def _torch(rows: dict[str, np.ndarray]) -> dict[str, Tensor]:
    return {metric: torch.as_tensor(values) for metric, values in rows.items()}

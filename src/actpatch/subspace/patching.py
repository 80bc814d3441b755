"""Patch a fixed subspace: x_t + U Uᵀ (x_s − x_t) at one site, in either direction.

`patch_subspace` is the by-hand call (one basis, one site, every metric); `evaluate` is what DAS
and its guards run on any U, with or without gradients. A sweep of a fixed basis over layers and
positions belongs to the sweep engines, not here.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import xarray as xr
from torch import Tensor

from actpatch import metrics, results
from actpatch.bases import vectors
from actpatch.bases.basis import move_latents
from actpatch.bases.subspace import Subspace
from actpatch.metrics import METRICS, Baseline
from actpatch.models.model import Model
from actpatch.pairs import PairsError, PromptPairs, Run
from actpatch.sites import Site

Direction = Literal["denoise", "noise"]
DIRECTIONS = ("denoise", "noise")


@dataclass(frozen=True)
class Interchange:
    """One direction of a subspace patch on a set of pairs, everything measured once.

    `source`/`target` are the site's vectors (batch, [pos,] d) from each run; `baseline` holds the
    unpatched source and target logits with the counterfactual answers (what the patched target
    should say) and the answers they are compared with."""

    pairs: PromptPairs
    site: Site
    direction: Direction
    target_run: Run
    source: Tensor
    target: Tensor
    baseline: Baseline

    def __getitem__(self, rows: Tensor) -> Interchange:
        """The same interchange on a subset of the prompts (rows: indices)."""
        b, pairs = self.baseline, self.pairs[rows]
        return Interchange(
            pairs,
            self.site,
            self.direction,
            _target_run(pairs, self.direction),
            self.source[rows],
            self.target[rows],
            Baseline(b.clean_logits[rows], b.corrupt_logits[rows], b.answers[rows], b.wrong[rows]),
        )

    def logits(self, model: Model, value: Tensor) -> Tensor:
        """The target run's final logits with `value` written into the site (keeps gradients)."""
        with vectors.patch(model, self.site, value, self.target_run.positions):
            return vectors.final_logits(model, self.target_run)

    def subspace_value(self, U: Tensor) -> Tensor:
        """x_t + U Uᵀ (x_s − x_t) for a (d, r) U, by the bases' patch rule; differentiable in U."""
        U = U.to(device=self.target.device, dtype=torch.float32)
        source, target = self.source.float(), self.target.float()
        return move_latents(target, source @ U, target @ U, U.T)

    def per_prompt(self, model: Model, value: Tensor) -> dict[str, Tensor]:
        """Every metric per prompt for the target run patched with `value` (no gradients)."""
        with torch.no_grad():
            return metrics.per_prompt(self.logits(model, value), self.baseline)


def interchange(
    model: Model,
    pairs: PromptPairs,
    site: Site | str,
    *,
    direction: Direction = "denoise",
    counterfactual: Tensor | None = None,
) -> Interchange:
    """Capture both runs at `site` and their unpatched logits.

    Denoising writes the clean run's value into the corrupt run, and the patched run should answer
    `pairs.answers` (over `pairs.wrong`) unless `counterfactual` (batch,) says otherwise. Noising
    writes the corrupt value into the clean run: which answer that value should produce is a fact
    about the task, so `counterfactual` is required, compared with `pairs.answers`."""
    if not isinstance(pairs, PromptPairs):
        raise TypeError(
            f"pairs is one PromptPairs of one token length, not {type(pairs).__name__} "
            "(a task's *_groups gives several: use e.g. tasks.ioi)"
        )
    site = vectors.as_site(site)
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    source_run, target_run = (
        (pairs.clean_run, pairs.corrupt_run)
        if direction == "denoise"
        else (pairs.corrupt_run, pairs.clean_run)
    )
    answers, compared = _answers(pairs, direction, counterfactual)
    with torch.no_grad():
        source = vectors.read(model, source_run, site)
        target = vectors.read(model, target_run, site)
        source_logits, target_logits = model.last_logits(source_run), model.last_logits(target_run)
    baseline = Baseline(source_logits, target_logits, answers, compared)
    return Interchange(pairs, site, direction, target_run, source, target, baseline)


def patch_subspace(
    model: Model,
    pairs: PromptPairs,
    basis: Subspace,
    *,
    direction: Direction | Sequence[Direction] = "denoise",
    counterfactual: Tensor | None = None,
    per_prompt: bool = False,
) -> xr.DataArray:
    """Every metric for the target run with the subspace's part of the site taken from the source.

    The metrics are the sweep's (`norm_logit_diff`: 0 = unpatched target, 1 = unpatched source),
    measured on the counterfactual answers (see `interchange`). Several directions add a
    `direction` dimension; `per_prompt=True` keeps a `batch` dimension. The site's position comes
    from the basis's site (`pos=END`, an index, or None for every position)."""
    if not isinstance(basis, Subspace):
        raise TypeError(
            f"basis is a Subspace (Subspace.from_direction, from_pca, ...), not {basis!r}"
        )
    basis.check_width(model)
    directions = [direction] if isinstance(direction, str) else list(direction)
    parts = []
    for each in directions:
        run = interchange(model, pairs, basis.site, direction=each, counterfactual=counterfactual)
        found = run.per_prompt(model, run.subspace_value(basis.U))
        parts.append(_labelled(found, run.baseline, per_prompt))
    result = (
        parts[0]
        if isinstance(direction, str)
        else xr.concat(parts, dim="direction").assign_coords(direction=directions)
    )
    result.attrs = results.provenance(
        model,
        pairs,
        analysis="patch_subspace",
        site=str(basis.site),
        basis=basis.name,
        rank=basis.rank,
        direction=directions,
    )
    return result


def _labelled(found: dict[str, Tensor], baseline: Baseline, per_prompt: bool) -> xr.DataArray:
    stacked = torch.stack([found[m] for m in METRICS]).cpu().numpy()  # (metric, batch)
    if per_prompt:
        return xr.DataArray(stacked.T, dims=("batch", "metric"), coords={"metric": list(METRICS)})
    means = stacked.mean(1)
    clean, corrupt = (
        float(baseline.clean_logit_diff.mean()),
        float(baseline.corrupt_logit_diff.mean()),
    )
    means[METRICS.index("norm_logit_diff")] = (means[METRICS.index("logit_diff")] - corrupt) / (
        clean - corrupt
    )
    return xr.DataArray(means, dims=("metric",), coords={"metric": list(METRICS)})


def _target_run(pairs: PromptPairs, direction: Direction) -> Run:
    return pairs.corrupt_run if direction == "denoise" else pairs.clean_run


def _answers(
    pairs: PromptPairs, direction: Direction, counterfactual: Tensor | None
) -> tuple[Tensor, Tensor]:
    compared = pairs.wrong if direction == "denoise" else pairs.answers
    if counterfactual is None:
        if direction == "noise":
            raise PairsError(
                "noising writes the corrupt run's value into the clean run, and these pairs do not "
                "say which answer that value should produce: pass counterfactual= (one token id "
                "per pair)"
            )
        return pairs.answers, compared
    counterfactual = torch.as_tensor(counterfactual)
    if counterfactual.shape != (len(pairs),) or counterfactual.is_floating_point():
        raise PairsError(
            f"counterfactual is one answer token id per pair, shape ({len(pairs)},); "
            f"got {tuple(counterfactual.shape)} {counterfactual.dtype}"
        )
    if same := [i for i in range(len(pairs)) if int(counterfactual[i]) == int(compared[i])]:
        raise PairsError(
            f"pairs {same[:5]}: the counterfactual answer is the answer it is compared with, so no "
            "patch can be told apart; drop those pairs or give them a different counterfactual"
        )
    return counterfactual, compared

"""Patch a fixed subspace: x_t + U Uᵀ (x_s − x_t) at one site, in either direction.

`patch_subspace` is the by-hand call (one basis, or several patched together in one forward; every
metric, intervals on request); `Interchange` is what DAS and its guards run on any U at one site,
with or without gradients. A sweep of a fixed basis over layers and positions belongs to the sweep
engines, not here.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import xarray as xr
from torch import Tensor

from actpatch import hooks, metrics, results
from actpatch.bases import vectors
from actpatch.bases.basis import move_latents
from actpatch.bases.subspace import Subspace
from actpatch.metrics import METRICS, Baseline
from actpatch.models.model import Model
from actpatch.pairs import PairsError, PromptPairs, Run
from actpatch.sites import Site
from actpatch.stats import bootstrap

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

    def subspace_value(self, U: Tensor, mask: Tensor | None = None) -> Tensor:
        """x_t + U Uᵀ (x_s − x_t) for a (d, r) U, by the bases' patch rule; differentiable in U.
        `mask` (r,) weighs each direction's move (boundless DAS's soft boundary): U diag(m) Uᵀ."""
        U = U.to(device=self.target.device, dtype=torch.float32)
        source, target = self.source.float() @ U, self.target.float() @ U
        if mask is not None:
            source, target = source * mask, target * mask
        return move_latents(self.target.float(), source, target, U.T)

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
    source_run, target_run = _runs(pairs, direction)
    site = vectors.as_site(site)
    answers, compared = _answers(pairs, direction, counterfactual)
    with torch.no_grad():
        source = vectors.read(model, source_run, site)
        target = vectors.read(model, target_run, site)
        source_logits = hooks.last_logits(model, source_run)
        target_logits = hooks.last_logits(model, target_run)
    baseline = Baseline(source_logits, target_logits, answers, compared)
    return Interchange(pairs, site, direction, target_run, source, target, baseline)


@bootstrap.old_keywords("n_boot", "boot_seed")
def patch_subspace(
    model: Model,
    pairs: PromptPairs,
    basis: Subspace | Sequence[Subspace],
    *,
    direction: Direction | Sequence[Direction] = "denoise",
    counterfactual: Tensor | None = None,
    per_prompt: bool = False,
    layers: Sequence[int] | None = None,
    ci: float | bootstrap.Bootstrap | None = None,
) -> xr.DataArray:
    """Every metric for the target run with the subspace's part of the site taken from the source.

    The metrics are the sweep's (`norm_logit_diff`: 0 = unpatched target, 1 = unpatched source),
    measured on the counterfactual answers (see `interchange`). Several directions add a
    `direction` dimension; `per_prompt=True` keeps a `batch` dimension. The site's position comes
    from the basis's site (`pos=END`, an index, or None for every position).

    Several subspaces — a list, each at its own site, or one basis with `layers=` (the basis at
    each of those layers, `basis.at(layer=l)`) — are patched together in one forward: each site
    becomes x_t + U Uᵀ (x_s − x_t) with x_s from the unpatched source run and x_t what the site
    holds in the patched forward, after the patches upstream of it.

    `ci` (e.g. 0.95, or an `actpatch.Bootstrap` for the resamples' count and seed) puts a bootstrap
    interval on every number, as `sweep(ci=)` does: a `stat` dimension ["value", "lo", "hi"] over
    resamples of the prompts, each direction's on its own baselines (docs/uncertainty.md)."""
    bases = _bases(model, basis, layers)
    ci = bootstrap.Bootstrap.of(ci)
    if ci is not None and per_prompt:
        raise ValueError(
            "ci= returns intervals computed from the per-prompt rows, not the rows: drop "
            "per_prompt=True, or call actpatch.stats.intervals on a per_prompt=True result"
        )
    directions = [direction] if isinstance(direction, str) else list(direction)
    parts = []
    for each in directions:
        found, baseline = _patched(model, pairs, bases, each, counterfactual)
        part = _labelled(found, baseline, per_prompt or ci is not None)
        if ci is not None:
            part.attrs["per_prompt_baseline_logit_diff"] = {
                "clean": baseline.clean_logit_diff.tolist(),
                "corrupt": baseline.corrupt_logit_diff.tolist(),
            }
            part = bootstrap.intervals(part, ci=ci)
        parts.append(part)
    result = (
        parts[0]
        if isinstance(direction, str)
        else xr.concat(parts, dim="direction").assign_coords(direction=directions)
    )
    one = isinstance(basis, Subspace) and layers is None
    result.attrs = results.provenance(
        model,
        pairs,
        analysis="patch_subspace",
        site=str(bases[0].site) if one else [str(b.site) for b in bases],
        basis=bases[0].name if one else [b.name for b in bases],
        rank=bases[0].rank if one else [b.rank for b in bases],
        direction=directions,
        **({} if ci is None else {"interval": parts[0].attrs["interval"]}),
    )
    return result


def patched_logits(
    model: Model, run: Run, bases: Sequence[Subspace], sources: Sequence[Tensor]
) -> Tensor:
    """`run`'s final logits with each basis's site moved to x + U Uᵀ (x_s − x), x_s its entry in
    `sources` and x what the site holds in this forward; all in one forward."""
    edits = {b.site: functools.partial(_moved, b, s) for b, s in zip(bases, sources, strict=True)}
    with hooks.edit(model, edits, named_positions=run.positions):
        return vectors.final_logits(model, run)


def _moved(basis: Subspace, source: Tensor, current: Tensor) -> Tensor:
    return basis.patched(source.to(device=current.device, dtype=current.dtype), current)


def _patched(
    model: Model,
    pairs: PromptPairs,
    bases: list[Subspace],
    direction: Direction,
    counterfactual: Tensor | None,
) -> tuple[dict[str, Tensor], Baseline]:
    """Per-prompt metrics of the target run with every basis patched, and their baseline."""
    source_run, target_run = _runs(pairs, direction)
    answers, compared = _answers(pairs, direction, counterfactual)
    with torch.no_grad():
        sources = vectors.read_all(model, source_run, [b.site for b in bases])
        baseline = Baseline(
            hooks.last_logits(model, source_run),
            hooks.last_logits(model, target_run),
            answers,
            compared,
        )
        logits = patched_logits(model, target_run, bases, sources)
    return metrics.per_prompt(logits, baseline), baseline


def _bases(
    model: Model, basis: Subspace | Sequence[Subspace], layers: Sequence[int] | None
) -> list[Subspace]:
    """The subspaces to patch together, checked: each a Subspace of its site's width, no site twice."""
    listed = isinstance(basis, (list, tuple))
    given = list(basis) if listed else [basis]
    if not given or not all(isinstance(b, Subspace) for b in given):
        raise TypeError(
            "basis is a Subspace (Subspace.from_direction, from_pca, ...) or a non-empty list of "
            f"them, not {basis!r}"
        )
    if layers is not None:
        if len(given) != 1:
            raise ValueError(
                "layers= places one basis at each layer; with a list of bases, give each its own "
                "site instead (basis.at(layer=...))"
            )
        given = [given[0].at(layer=layer) for layer in layers]
        if not given:
            raise ValueError("layers= names no layer; give at least one")
    sites = [b.site for b in given]
    if twice := sorted({str(s) for s in sites if sites.count(s) > 1}):
        raise ValueError(
            f"{', '.join(twice)}: one site is given two subspaces; join them into one basis "
            "(Subspace.from_basis on their columns side by side)"
        )
    for b in given:
        b.check_width(model)
    return given


def _runs(pairs: PromptPairs, direction: Direction) -> tuple[Run, Run]:
    """(source run, target run) of one direction, the pairs and direction checked."""
    if not isinstance(pairs, PromptPairs):
        raise TypeError(
            f"pairs is one PromptPairs of one token length, not {type(pairs).__name__} "
            "(a task's *_groups gives several: use e.g. tasks.ioi)"
        )
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    if direction == "denoise":
        return pairs.clean_run, pairs.corrupt_run
    return pairs.corrupt_run, pairs.clean_run


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
    return _runs(pairs, direction)[1]


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

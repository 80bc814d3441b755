"""Backup behaviour: components that take over when another is knocked out.

Knock out a head and a later head may compensate (IOI's backup name movers, Wang et al. 2022), so
the first head's noising effect understates its role, and the second's overstates how idle it
is. Here a component is ablated in the clean run, the effects of later components are measured
again, and those whose effect grows are reported. Not here: deciding what the growth means."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from actpatch import hooks, metrics
from actpatch.circuits.components import checked, components, whole
from actpatch.circuits.evaluate import Ablation, Ablator, interval_note
from actpatch.circuits.frontier import Order, ranking
from actpatch.circuits.resume import Resumed
from actpatch.engine import paths
from actpatch.models.model import Model
from actpatch.pairs import PromptPairs
from actpatch.sites import Site, SiteError
from actpatch.stats import bootstrap

log = logging.getLogger(__name__)

Effect = Literal["total", "direct"]
EFFECTS = ("total", "direct")


@bootstrap.old_keywords("n_boot")
def backup(
    model: Model,
    pairs: PromptPairs,
    component: Site | str,
    *,
    candidates: Sequence[Site | str] | None = None,
    effect: Effect = "total",
    ablation: Ablation = None,
    threshold: float = 0.05,
    metric: str = "norm_logit_diff",
    resume: bool = True,
    progress: bool | None = None,
    check_baseline: bool = True,
    ci: float | bootstrap.Bootstrap | None = None,
) -> pd.DataFrame:
    """Each candidate's effect in the clean run before and after `component` is ablated, and
    `compensates` where it grew by at least `threshold` (units of `metric`).

    A candidate's effect is what ablating it costs: `metric` of the run minus `metric` with the
    candidate ablated too, measured with everything downstream recomputing (`effect="total"`) or
    along its path to the logits only, every other head and MLP frozen (`"direct"`, by path
    patching). Candidates default to every head and MLP that reads after `component` writes.
    Ablation is to the corrupt run's value (or `ablation=` "mean", "zero", "resample" as in sweeps). The table's
    `attrs` hold the ablated component and its own effect. Two runs per candidate; total effects
    resume each run at the candidate's layer (`resume=False` runs every forward in full, the
    plain path the resumed one is tested against). `check_baseline` as in `evaluate_circuit`.

    `ci=0.95` (or an `actpatch.Bootstrap`) asks whether the growth is real: `growth_lo`/`growth_hi`
    bound it over resamples of the prompts (all four runs behind a growth on the same resamples) and
    `growth_excludes_0` marks a growth whose interval does not hold 0. `compensates` still reads the
    value against `threshold`; a compensating candidate whose interval holds 0 may be the prompts'.
    No extra forward: the same runs' per-prompt rows."""
    ci = bootstrap.Bootstrap.of(ci)
    study = _Backup(
        model,
        pairs,
        effect,
        ablation,
        metric,
        resume,
        keep_rows=ci is not None,
        check=check_baseline,
    )
    table = study.table(_component(model, component), candidates, threshold, progress)
    if ci is not None:
        lo, hi = study.growth_interval([Site.parse(c) for c in table.index], ci)
        table["growth_lo"], table["growth_hi"] = lo, hi
        table["growth_excludes_0"] = (table["growth_lo"] > 0) | (table["growth_hi"] < 0)
        table.attrs["interval"] = interval_note(ci, len(pairs))
    return table


def backup_report(
    model: Model,
    pairs: PromptPairs,
    source,
    *,
    top: int = 5,
    effect: Effect = "total",
    ablation: Ablation = None,
    threshold: float = 0.05,
    metric: str = "norm_logit_diff",
    order: Order = "effect",
    candidates: Sequence[Site | str] | None = None,
    resume: bool = True,
    progress: bool | None = None,
) -> pd.DataFrame:
    """`backup` for each of the `top` components of a ranking (a sweep or attribution result, or a
    list), in one table of the compensating pairs: `ablated`, its own `ablated_effect`, and each
    `component` whose effect grew, with `before`, `after` and `growth`.

    Effects in the unablated clean run are measured once and shared. An ablated component with no
    compensation has no rows; `attrs["ablated"]` lists every component that was tried."""
    if not isinstance(top, int) or top < 1:
        raise ValueError(f"top must be a positive integer, got {top!r}")
    study = _Backup(model, pairs, effect, ablation, metric, resume)
    tried = checked(model, ranking(source, order=order), "ranking")[:top]
    parts = []
    for component in tried:
        table = study.table(_component(model, component), candidates, threshold, progress)
        flagged = table[table["compensates"]].drop(columns="compensates").reset_index()
        flagged.insert(0, "ablated", str(component))
        flagged.insert(1, "ablated_effect", table.attrs["ablated_effect"])
        parts.append(flagged)
    columns = ["ablated", "ablated_effect", "component", "before", "after", "growth"]
    report = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    report.attrs.update(
        study.ablator.provenance(
            "noise",
            analysis="backup_report",
            ablated=[str(c) for c in tried],
            effect=effect,
            threshold=threshold,
            metric=metric,
        )
    )
    return report


def _component(model: Model, component: Site | str) -> Site:
    site = checked(model, [component], "ablated component")[0]
    if site.kind not in paths.SENDER_KINDS:
        raise SiteError(f"backup is studied for heads and MLPs, not {site}")
    return site


@dataclass(frozen=True)
class _Run:
    """One run's `metric`, and (for intervals) every metric of each prompt."""

    score: float
    rows: dict[str, np.ndarray] | None = None


class _Backup:
    """Effects of candidates in the clean run and in the clean run with one component ablated."""

    def __init__(
        self,
        model: Model,
        pairs: PromptPairs,
        effect: Effect,
        ablation: Ablation,
        metric: str,
        resume: bool,
        keep_rows: bool = False,
        check: bool = True,
    ):
        if effect not in EFFECTS:
            raise ValueError(f"effect must be one of {EFFECTS}, got {effect!r}")
        if metric not in metrics.METRICS:
            raise ValueError(f"metric must be one of {metrics.METRICS}, got {metric!r}")
        self.model, self.pairs, self.effect, self.metric, self.resume = (
            model,
            pairs,
            effect,
            metric,
            resume,
        )
        self.keep_rows = keep_rows
        everything = _all_components(model)
        self.ablator = Ablator(model, pairs, everything, ablation, check_baseline=check)
        self.clean = (
            hooks.capture(model, pairs.clean, everything, named_positions=pairs.positions)
            if effect == "direct"
            else {}
        )
        # Per candidate: the run it is ablated from and the run with it ablated, before and after.
        self.before: dict[Site, tuple[_Run, _Run]] = {}
        self.after: dict[Site, tuple[_Run, _Run]] = {}
        self.clean_score = self._score(self.ablator.run({})).score

    def table(self, component: Site, candidates, threshold: float, progress) -> pd.DataFrame:
        if candidates is None:
            chosen = [
                c
                for c in _all_components(self.model)
                if paths.read_stage(self.model, c) > paths.write_stage(self.model, component)
            ]
        else:
            chosen = [
                c
                for c in checked(self.model, candidates, "candidates")
                if whole(c) != whole(component)
            ]
        if bad := [c for c in chosen if c.kind not in paths.SENDER_KINDS]:
            raise SiteError(f"candidates are heads and MLPs; got {bad[0]}")
        world = self.ablator.ablated(component)
        self.after = self._effects(chosen, world, progress, f"after ablating {component}")
        self.before.update(
            self._effects([c for c in chosen if c not in self.before], {}, progress, "before")
        )
        effect = {c: (_effect(self.before[c]), _effect(self.after[c])) for c in chosen}
        rows = [
            {
                "component": str(c),
                "before": effect[c][0],
                "after": effect[c][1],
                "growth": effect[c][1] - effect[c][0],
            }
            for c in chosen
        ]
        table = pd.DataFrame(rows, columns=["component", "before", "after", "growth"]).set_index(
            "component"
        )
        table["compensates"] = table["growth"] >= threshold
        table = table.sort_values("growth", ascending=False, kind="stable")
        table.attrs.update(
            self.ablator.provenance(
                "noise",
                analysis="backup",
                ablated=str(component),
                ablated_effect=self.clean_score - self._score(self.ablator.run(world)).score,
                effect=self.effect,
                threshold=threshold,
                metric=self.metric,
            )
        )
        return table

    def growth_interval(
        self, chosen: list[Site], boot: bootstrap.Bootstrap
    ) -> tuple[np.ndarray, np.ndarray]:
        """Each candidate's growth on the same resamples of the prompts as its four runs (the last table's)."""
        runs = [run for c in chosen for run in (*self.after[c], *self.before[c])]
        resampled = self.ablator.replicates([run.rows for run in runs], boot)[
            :, metrics.METRICS.index(self.metric)
        ]
        own_after, ablated_after, own_before, ablated_before = (
            resampled[:, i::4] for i in range(4)
        )
        return bootstrap.percentile(
            (own_after - ablated_after) - (own_before - ablated_before), boot
        )

    @torch.no_grad()
    def _effects(
        self, chosen: list[Site], world: dict, progress, desc: str
    ) -> dict[Site, tuple[_Run, _Run]]:
        """Per candidate, the run it is ablated from (clean with `world` patched in) and the run with
        it ablated too: their difference of `metric` is what ablating it costs."""
        if not chosen:
            return {}
        bar = dict(desc=desc, disable=None if progress is None else not progress)
        if self.effect == "direct":
            base = {
                whole(s): paths.compose(self.clean[whole(s)], v, s.pos, self.pairs.positions)
                for s, v in world.items()
            }
            frozen = paths.Paths(self.model, [chosen[0]], ["logits"]).needed_target_sites()
            target = paths.Target(
                self.model, self.pairs.clean_run, self.pairs.positions, frozen, base=base
            )
            own = self._score(self.ablator.run(world))
            return {
                c: (
                    own,
                    self._score(
                        target.logits(
                            {c: self.ablator.off[whole(c)]},
                            paths.Paths(self.model, [c], ["logits"]),
                        )
                    ),
                )
                for c in tqdm(chosen, **bar)
            }
        if not self.resume:
            own = self._score(self.ablator.run(world))
            return {
                c: (own, self._score(self.ablator.run({**world, **self.ablator.ablated(c)})))
                for c in tqdm(chosen, **bar)
            }
        run = Resumed(self.model, self.pairs.clean, world, self.pairs.positions)
        own = self._score(run.own_logits)
        return {
            c: (own, self._score(run.logits(self.ablator.ablated(c)))) for c in tqdm(chosen, **bar)
        }

    def _score(self, logits) -> _Run:
        return _Run(
            metrics.averaged(logits, self.ablator.base)[self.metric],
            self.ablator.prompt_rows(logits) if self.keep_rows else None,
        )


def _effect(runs: tuple[_Run, _Run]) -> float:
    own, ablated = runs
    return own.score - ablated.score


def _all_components(model: Model) -> list[Site]:
    """Every head and MLP, in the order they write."""
    return components(model, embed=False)

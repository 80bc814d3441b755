"""Evaluating a circuit: the model's behaviour with only the circuit left intact (or knocked out).

Which run executes matters. "The circuit at clean values, every other component at corrupt" is
run as: the *clean* prompt, with every component outside the circuit patched with its value from
the corrupt run. The circuit then computes what it computes from the clean input and from the
ablated rest of the model, which is the question asked (does it carry the behaviour alone?).
Running the corrupt prompt with the circuit patched to its clean values would instead let every
other component recompute on those values, so they would not be at their corrupt values at all.
The token embeddings are a component (`EMBED`), so that the empty circuit, with embeddings
included in `components`, is exactly the corrupt run and the full circuit exactly the clean run.

Noising is the converse: the clean prompt with the circuit's components at their corrupt values
and everything else running on — what is left without the circuit. So noising a circuit equals
denoising its complement. Components outside `components` are never touched in either direction.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from actpatch import hooks, metrics, results
from actpatch.circuits.components import checked, default_universe, whole
from actpatch.engine import checks, collect, sources
from actpatch.engine.spec import DIRECTIONS, Direction
from actpatch.engine.spec import Ablation as PlanAblation
from actpatch.models.model import Model
from actpatch.pairs import PromptPairs
from actpatch.sites import Site, SiteError
from actpatch.stats import bootstrap

Ablation = PlanAblation | None  # None: each prompt's corrupt-run value


@bootstrap.old_keywords("n_boot", "boot_seed")
def evaluate(
    model: Model,
    pairs: PromptPairs,
    circuit: Sequence[Site],
    *,
    direction: Direction = "denoise",
    ablation: Ablation = None,
    components: Sequence[Site] | None = None,
    check_baseline: bool = True,
    ci: float | bootstrap.Bootstrap | None = None,
) -> xr.DataArray:
    """Every metric with only `circuit` intact (denoise) or with `circuit` knocked out (noise).

    `norm_logit_diff` of a denoised circuit is its faithfulness: the share of the clean−corrupt
    logit difference it recovers on its own (1: all of it). `components`: what is ablated around
    the circuit (default: every component of the kinds the circuit holds, so a circuit of heads
    is weighed against all heads while MLPs and embeddings run untouched; pass
    `actpatch.circuits.components(model)` to ablate everything else too). `ablation=None` takes
    each prompt's corrupt-run value; as in sweeps, `"mean"` the clean-run value averaged over the
    prompts position by position (use prompts whose roles sit at the same indices, e.g.
    `ioi_pairs`), `"zero"` zeros, `"resample"` another prompt's clean-run value. As in sweeps, the
    clean run must beat the corrupt one or the shares mean nothing: `BaselineError` unless
    `check_baseline=False`. `ci=0.95` (or an `actpatch.Bootstrap`) adds a `stat` dimension (value,
    lo, hi): the faithfulness's interval over resamples of the prompts, from the same forward's
    per-prompt rows (docs/uncertainty.md).

        ap.evaluate_circuit(model, pairs, [ap.Site("head", 9, head=6), ap.Site("head", 10, head=0)])
    """
    ci = bootstrap.Bootstrap.of(ci)
    circuit = checked(model, circuit)
    ablator = Ablator(
        model,
        pairs,
        components if components is not None else default_universe(model, circuit),
        ablation,
        check_baseline=check_baseline,
    )
    return ablator.result(circuit, direction, ci=ci)


class CircuitRuns:
    """What every circuit evaluation starts from and its results share: the checked baseline of
    the clean and corrupt runs, each run's per-prompt rows, their resamples, and the provenance.
    Subclasses say what is ablated (`Ablator`: components; `FeatureRuns`: dictionary nodes)."""

    def __init__(
        self,
        model: Model,
        pairs: PromptPairs,
        ablation: Ablation = None,
        *,
        check_baseline: bool = True,
    ):
        sources.check_ablation(ablation, pairs, "the corrupt run's values")
        self.model, self.pairs, self.ablation = model, pairs, ablation
        self.self_checks: dict[str, float] = {}
        with torch.no_grad():
            self.base = collect.baseline(model, pairs, check=check_baseline)

    def prompt_rows(self, logits: Tensor) -> dict[str, np.ndarray]:
        """Every metric of each prompt of one run: what a bootstrap over prompts resamples."""
        return {name: v.cpu().numpy() for name, v in metrics.per_prompt(logits, self.base).items()}

    def replicates(
        self, rows: Sequence[dict[str, np.ndarray]], boot: bootstrap.Bootstrap
    ) -> np.ndarray:
        """(n_boot, metric, run): every metric of each run on the same resamples of the prompts,
        the normalised logit difference a ratio of means with the resample's own baselines."""
        block = bootstrap.rows_block(
            rows,
            self.base.clean_logit_diff.cpu().numpy(),
            self.base.corrupt_logit_diff.cpu().numpy(),
        )
        return bootstrap.replicates(block, boot)

    def provenance(
        self, direction: Direction, *, analysis: str = "evaluate_circuit", **extra
    ) -> dict:
        """The provenance every circuit result carries: `ablation` is the argument that reproduces it
        (None: the corrupt run's values), `source` names the values as sweeps do."""
        return results.provenance(
            self.model,
            self.pairs,
            analysis=analysis,
            direction=direction,
            ablation=self.ablation,
            source=self.ablation or "corrupt",
            baseline_clean=metrics.averaged(self.base.clean_logits, self.base),
            baseline_corrupt=metrics.averaged(self.base.corrupt_logits, self.base),
            self_checks=self.self_checks,
            self_check_tolerance=checks.tolerance(next(self.model.hf.parameters()).dtype),
            **extra,
        )

    def score_of(self, logits: Tensor, metric: str) -> float:
        return metrics.averaged(logits, self.base)[metric]


class Ablator(CircuitRuns):
    """Runs the clean prompt with chosen components ablated; the ablation values are captured once."""

    def __init__(
        self,
        model: Model,
        pairs: PromptPairs,
        universe: Sequence[Site],
        ablation: Ablation = None,
        *,
        check_baseline: bool = True,
    ):
        super().__init__(model, pairs, ablation, check_baseline=check_baseline)
        self.universe = checked(model, universe, "components")
        if at_positions := [s for s in self.universe if s.pos is not None]:
            raise SiteError(
                f"components are whole components (every position); got {at_positions[0]}"
            )
        with torch.no_grad():
            clean = sources.captured(model, pairs.clean_run, self.universe)
            # The no-op patch through this evaluation's own path: every component at its clean value.
            self.self_checks = {
                "noop_patch_error": checks.same_run_error(
                    model, self.run(clean), self.base, "noise"
                )
            }
            if ablation is None:
                self.off = sources.captured(model, pairs.corrupt_run, self.universe)
            else:
                self.off = sources.ablate(clean, ablation)
            del clean

    def result(
        self,
        circuit: Sequence[Site],
        direction: Direction,
        *,
        ci: bootstrap.Bootstrap | None = None,
    ) -> xr.DataArray:
        logits = self.logits(circuit, direction)
        result = performance(logits, self.base)
        if ci is not None:
            result = with_intervals(
                result, self.replicates([self.prompt_rows(logits)], ci)[..., 0], ci
            )
        result.attrs.update(self.provenance(direction, circuit=[str(s) for s in circuit]))
        return result

    def provenance(
        self, direction: Direction, *, analysis: str = "evaluate_circuit", **extra
    ) -> dict:
        return super().provenance(
            direction,
            analysis=analysis,
            components=[str(s) for s in self.universe],
            **extra,
        )

    def score(self, circuit: Sequence[Site], direction: Direction, metric: str) -> float:
        return self.score_of(self.logits(circuit, direction), metric)

    @torch.no_grad()
    def logits(
        self, circuit: Sequence[Site], direction: Direction, extra: dict[Site, Tensor] | None = None
    ) -> Tensor:
        """Final-position logits of the clean prompt with the components ablated that `direction`
        says: outside the circuit (denoise) or inside it (noise). `extra`: more patches, applied too."""
        if direction not in DIRECTIONS:
            raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
        kept: dict[Site, list] = {}
        for s in circuit:
            if whole(s) not in self.off:
                raise SiteError(
                    f"circuit member {s} is not among the components ablated around it; add {whole(s)} to components="
                )
            kept.setdefault(whole(s), []).append(s.pos)
        patches, names = dict(extra or {}), dict(self.pairs.positions)
        for component, value in self.off.items():
            at = kept.get(component, [])
            if direction == "noise":
                patches.update(at_positions(component, value, at, self.pairs.positions))
            elif None not in at:
                patches.update(except_positions(component, value, at, names, self.pairs.seq_len))
        return self.run(patches, names)

    @torch.no_grad()
    def run(self, patches: dict[Site, Tensor], names: dict | None = None) -> Tensor:
        """Final-position logits of the clean prompt with `patches` written in."""
        with hooks.patch(self.model, patches, named_positions=names or self.pairs.positions):
            return hooks.last_logits(self.model, self.pairs.clean_run)

    def ablated(self, component: Site) -> dict[Site, Tensor]:
        """Patches that ablate one component (at its position, or everywhere)."""
        return at_positions(
            whole(component), self.off[whole(component)], [component.pos], self.pairs.positions
        )


def performance(logits: Tensor, base: metrics.Baseline) -> xr.DataArray:
    """A circuit's performance: every metric of its run's final-position `logits`, averaged over
    the prompts, on a `metric` dimension (node and edge circuits alike)."""
    values = metrics.averaged(logits, base)
    return results.Result(
        [values[m] for m in metrics.METRICS],
        dims=["metric"],
        coords={"metric": list(metrics.METRICS)},
        name="circuit_performance",
    )


def with_intervals(
    result: xr.DataArray, replicates: np.ndarray, boot: bootstrap.Bootstrap
) -> xr.DataArray:
    """`result` (its own numbers kept as `value`) with a last `stat` dimension value/lo/hi, the
    bounds from `replicates`, resamples of it shaped (n_boot, *result.shape)."""
    lo, hi = bootstrap.percentile(replicates, boot)
    stacked = xr.concat(
        [result, result.copy(data=lo), result.copy(data=hi)], dim="stat"
    ).assign_coords(stat=list(bootstrap.STATS))
    stacked = stacked.transpose(*result.dims, "stat")
    stacked.attrs = {
        **result.attrs,
        "interval": interval_note(boot, result.attrs.get("n_prompts")),
    }
    return stacked


def interval_note(boot: bootstrap.Bootstrap, n_prompts: Any = None) -> dict:
    """What a circuit result's intervals are, as `stats.intervals` records a sweep's."""
    return boot.note(
        method="percentile", resampled="prompts, with replacement", n_prompts=n_prompts
    )


def at_positions(component: Site, value: Tensor, where: list, positions) -> dict[Site, Tensor]:
    """Patches writing `value` (batch, pos, ...) into `component` at each position in `where`
    (None: all)."""
    if None in where:
        return {component: value}
    return {
        Site(component.kind, component.layer, component.head, None, p): _gather(value, p, positions)
        for p in where
    }


def except_positions(
    component: Site, value: Tensor, kept: list, names: dict, seq_len: int
) -> dict[Site, Tensor]:
    """Patches writing `value` into `component` everywhere except at the `kept` positions.

    Hooks write a site at one index per prompt, and a kept named position (IO, say) sits at a
    different index in each prompt; so the ablated indices are enumerated prompt by prompt under
    private position names added to `names`."""
    if not kept:
        return {component: value}
    batch = value.shape[0]
    kept_at = [set() for _ in range(batch)]
    for p in kept:
        for b in range(batch):
            kept_at[b].add(int(names[p][b]) if isinstance(p, str) else p % seq_len)
    ablated = [sorted(set(range(seq_len)) - k) for k in kept_at]
    if any(not a for a in ablated):
        if all(not a for a in ablated):
            return {}
        raise SiteError(
            f"{component} is kept at every position in some prompts but not in others; list it whole instead"
        )
    patches = {}
    for slot in range(max(map(len, ablated))):
        # A prompt with fewer ablated positions writes its last one again: the same value, twice.
        index = torch.tensor([a[min(slot, len(a) - 1)] for a in ablated])
        name = f"~{component}@{slot}"
        names[name] = index
        site = Site(component.kind, component.layer, component.head, None, name)
        patches[site] = value[torch.arange(batch), index]
    return patches


def _gather(value: Tensor, pos, positions) -> Tensor:
    if isinstance(pos, str):
        return value[torch.arange(value.shape[0]), torch.as_tensor(positions[pos]).long()]
    return value[:, pos]

"""The Pareto frontier of a ranking: circuit performance against circuit size.

Circuits are not judged yes or no: sort components by effect, grow the circuit one component at a
time, and read how much of the behaviour each size recovers. The smallest circuit reaching a
chosen recovery (0.8, 0.9) is then one reading of that curve, and the curve shows what it costs."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Literal

import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from actpatch import metrics, results
from actpatch.circuits.components import checked, default_universe, sites_of
from actpatch.circuits.evaluate import Ablation, Ablator, with_intervals
from actpatch.engine.plan import Direction
from actpatch.models.model import Model
from actpatch.pairs import PromptPairs
from actpatch.sites import Site
from actpatch.stats import bootstrap

log = logging.getLogger(__name__)

Order = Literal["effect", "abs"]
ORDERS = ("effect", "abs")


def ranking(
    source: xr.DataArray | Sequence[Site | str],
    *,
    metric: str = "norm_logit_diff",
    order: Order = "effect",
) -> list[Site]:
    """Components strongest first, from a `head` or `mlp_out` sweep or attribution result (or a
    list, kept in its order).

    A component's effect is how far it moves `metric` from the unpatched target run: up from the
    corrupt baseline when the result denoised, down from the clean baseline when it noised.
    `order="effect"` puts the most helpful first (components that work against the answer last);
    `"abs"` ranks by size either way. A result with a `pos` dimension ranks components at
    positions (`head[layer=9, head=6, pos=END]`). A result with intervals ranks by its `value`."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    if not isinstance(source, xr.DataArray):
        return [Site.parse(s) if isinstance(s, str) else s for s in source]
    sites, values = sites_of(_at_value(source), metric)
    effects = results.effects(source.attrs, values, metric)
    keep = ~np.isnan(effects)
    strength = effects if order == "effect" else np.abs(effects)
    ordered = np.argsort(-strength[keep], kind="stable")
    return [np.asarray(sites, dtype=object)[keep][i] for i in ordered]


@bootstrap.old_keywords("n_boot", "boot_seed")
def pareto_frontier(
    model: Model,
    pairs: PromptPairs,
    source: xr.DataArray | Sequence[Site | str],
    *,
    direction: Direction = "denoise",
    ablation: Ablation = None,
    components: Sequence[Site] | None = None,
    sizes: Sequence[int] | None = None,
    order: Order = "effect",
    progress: bool | None = None,
    check_baseline: bool = True,
    ci: float | bootstrap.Bootstrap | None = None,
) -> xr.DataArray:
    """Every metric for the circuit of the top-k components, for each k in `sizes` (default 0..all):
    a labelled `metric × size` result; `component` names the component added last at each size.

    `source` is ranked by `ranking()`. Denoising (the default) keeps the top-k intact and ablates
    the rest of `components` (default: every component of the ranking's kinds, so a ranking of
    heads is weighed against all heads with MLPs and embeddings untouched, as in Wang et al. 2022);
    noising knocks the top-k out. One forward per size. `check_baseline` as in `evaluate_circuit`.
    `ci=0.95` adds a `stat` dimension (value, lo, hi): a band over resamples of the prompts (a
    level or an `actpatch.Bootstrap`), every size on the same resamples, from
    the same forwards' per-prompt rows. The ranking is not re-drawn per resample (that is
    `circuits.circuit_stability`): the band says how well *this* ranking's circuits do on other prompts.

        frontier = ap.pareto_frontier(model, pairs, ap.sweep(model, pairs, "head", positions=["END"]))
        ap.smallest_circuit(frontier, 0.8)
    """
    ci = bootstrap.Bootstrap.of(ci)
    ranked = checked(model, ranking(source, order=order), "ranking")
    sizes = list(range(len(ranked) + 1)) if sizes is None else sorted({int(k) for k in sizes})
    if not sizes or sizes[0] < 0 or sizes[-1] > len(ranked):
        raise ValueError(f"sizes must lie in 0..{len(ranked)} (the ranking's length), got {sizes}")
    ablator = Ablator(
        model,
        pairs,
        components if components is not None else default_universe(model, ranked),
        ablation,
        check_baseline=check_baseline,
    )
    rows, prompt_rows = [], []
    for k in tqdm(
        sizes, desc="pareto frontier", disable=None if progress is None else not progress
    ):
        logits = ablator.logits(ranked[:k], direction)
        rows.append(metrics.averaged(logits, ablator.base))
        if ci is not None:
            prompt_rows.append(ablator.prompt_rows(logits))
    values = np.array([[row[m] for row in rows] for m in metrics.METRICS])
    labels = [str(ranked[k - 1]) if k else "" for k in sizes]
    result = results.Result(
        values,
        dims=["metric", "size"],
        name="circuit_performance",
        coords={"metric": list(metrics.METRICS), "size": sizes, "component": ("size", labels)},
    )
    result.attrs.update(
        ablator.provenance(direction, analysis="pareto_frontier", ranking=[str(s) for s in ranked])
    )
    if ci is not None:
        result = with_intervals(result, ablator.replicates(prompt_rows, ci), ci)
    return result


def smallest_circuit(
    frontier: xr.DataArray, recovery: float = 0.8, *, metric: str = "norm_logit_diff"
) -> list[Site] | None:
    """The top-k components of the smallest evaluated size whose circuit reaches `recovery`; None if none does.

    For a denoising frontier, reaching means the normalised metric is at least `recovery` (that
    share of the behaviour restored by the circuit alone); for a noising one, that knocking the
    circuit out loses at least that share (the metric is at most 1 − `recovery`). A frontier with
    intervals is read at its `value`; `reached_surely` asks whether the whole band clears it."""
    _check_frontier(frontier, recovery, metric, "smallest_circuit")
    values = _at_value(frontier).sel(metric=metric).values
    reached = (
        values >= recovery if frontier.attrs["direction"] == "denoise" else values <= 1 - recovery
    )
    if not reached.any():
        return None
    size = int(frontier["size"].values[int(np.argmax(reached))])
    return [Site.parse(s) for s in frontier.attrs["ranking"][:size]]


def reached_surely(
    frontier: xr.DataArray, recovery: float = 0.8, *, metric: str = "norm_logit_diff"
) -> xr.DataArray:
    """Per size of a frontier with intervals (`ci=`): whether the whole band reaches `recovery`
    (lo ≥ recovery when denoising, hi ≤ 1 − recovery when noising). A circuit whose value reaches
    it but whose band does not recovers that share on these prompts, not reliably on others."""
    if "stat" not in frontier.dims:
        raise ValueError(
            "reached_surely reads a frontier's band: make it with pareto_frontier(..., ci=0.95)"
        )
    curve = frontier.sel(metric=metric)
    if frontier.attrs["direction"] == "denoise":
        return curve.sel(stat="lo", drop=True) >= recovery
    return curve.sel(stat="hi", drop=True) <= 1 - recovery


_MOST_RECOVERY = 2.0  # a larger share is almost surely a percentage


def _check_frontier(frontier: object, recovery: float, metric: str, caller: str) -> None:
    """Refuse what is not a frontier (a sweep has no ranking to cut), an unknown metric, or a
    recovery that is no share (a percentage), naming the fix, before xarray's KeyError would."""
    if not (
        isinstance(frontier, xr.DataArray)
        and "size" in frontier.dims
        and {"ranking", "direction"} <= frontier.attrs.keys()
    ):
        raise ValueError(
            f"{caller} reads a frontier, got "
            + (
                f"a result with dims {frontier.dims}"
                if isinstance(frontier, xr.DataArray)
                else type(frontier).__name__
            )
            + ": "
            "make one with ap.pareto_frontier(model, pairs, sweep_or_ranking)"
        )
    if metric not in frontier["metric"].values:
        raise ValueError(
            f"unknown metric {metric!r}; choose one of {', '.join(map(str, frontier['metric'].values))}"
        )
    if not 0 < recovery <= _MOST_RECOVERY:  # above 1 is a circuit that overshoots the clean run
        raise ValueError(
            f"recovery is a share of the clean behaviour (0.8 for 80 %), at most {_MOST_RECOVERY}; "
            f"got {recovery!r}"
        )


def _at_value(result: xr.DataArray) -> xr.DataArray:
    return result.sel(stat="value", drop=True) if "stat" in result.dims else result

"""Verification of attribution estimates: patch the strongest (and a random sample) exactly.

Attribution patching is cheap and wrong in known ways (saturated attention, cancellation), so an
estimate should never be read without this check beside it."""

from __future__ import annotations

import numbers
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch
import xarray as xr

from actpatch import results
from actpatch.engine import batched, checks, collect
from actpatch.engine.plan import ABLATIONS, plan
from actpatch.engine.reference import ReferencePatching
from actpatch.engine.spec import SweepSpec
from actpatch.metrics import METRICS, check_metric
from actpatch.models.model import Model
from actpatch.pairs import PromptPairs
from actpatch.sites import Site, unit_dim
from actpatch.stats import bootstrap


@dataclass
class Verification:
    """How well an estimate ranks and sizes effects, judged on the sites patched (or the edges
    removed) exactly: what `verify` and `graph.verify_edges` both return."""

    spearman: float  # rank correlation of estimated and exact effects over the verified sites
    top_k_recall: (
        float  # share of the exact top-k (among verified sites) that the estimate's top-k holds
    )
    top_k: int
    table: (
        pd.DataFrame
    )  # one row per verified site: estimate, exact, error; worst misestimates first
    # With ci=: the rank correlation's interval over resampled prompts, estimates and exact values
    # resampled together (the table then has each one's lo/hi too).
    spearman_interval: tuple[float, float] | None = None
    cost: dict | None = (
        None  # verify_edges: the exact removals' work, in forwards of the clean batch
    )
    checked: str = "sites patched exactly"  # what the table's rows are, for the summary line
    attrs: dict = field(default_factory=dict, repr=False)  # provenance and self-checks, as results'

    def __repr__(self) -> str:
        worst = self.table.head(5).to_string(float_format=lambda v: f"{v:.3f}")
        band = (
            ""
            if self.spearman_interval is None
            else " [{:.3f}, {:.3f}]".format(*self.spearman_interval)
        )
        return (
            f"Verification(spearman={self.spearman:.3f}{band}, top-{self.top_k} recall={self.top_k_recall:.2f}, "
            f"{len(self.table)} {self.checked})\nworst misestimates:\n{worst}"
        )


@bootstrap.old_keywords("n_boot", "boot_seed")
def verify(
    model: Model,
    pairs: PromptPairs,
    estimate: xr.DataArray,
    *,
    top_k: int = 10,
    sample: int = 10,
    seed: int = 0,
    metric: str = "norm_logit_diff",
    progress: bool | None = None,
    ci: float | bootstrap.Bootstrap | None = None,
    dictionary: Any = None,
) -> Verification:
    """Patch the estimate's `top_k` strongest sites and `sample` random others exactly; compare.

    Strength is the distance from the unpatched target value (0 when denoising, 1 when noising on
    the normalised scale), so both helpful and harmful sites count. `seed` draws the random sample.

    `ci=0.95` (or an `actpatch.Bootstrap`) puts an interval on the rank correlation: each resample
    of the prompts recomputes the estimates and the exact values of the verified sites (ratios of
    means, as sweeps do) and their correlation. It needs the per-prompt estimate (`attribute(...,
    per_prompt=True)`); the exact patches keep their per-prompt rows, so it costs no extra forward.
    The sites verified are the ones the full data chose: the interval says how the agreement on
    *those* sites varies with the prompts, not how a re-chosen top-k would fare.

    An estimate over feature sites needs the `dictionary` it was made with (a result holds its
    name, not its weights)."""
    check_counts(top_k, sample, "sites")
    if "estimate" not in estimate.attrs:
        raise ValueError(
            "verify() takes the result of actpatch.attribute(); exact sweeps need no verification"
        )
    if check_metric(metric) not in estimate.metric.values:
        raise ValueError(
            f"this estimate has no metric {metric!r}: attribution estimates only "
            f"{', '.join(map(str, estimate.metric.values))}; pass one of those"
        )
    estimate_rows = None
    if "batch" in estimate.dims:
        estimate_rows, estimate = _per_prompt_estimate(estimate)
    elif ci is not None:
        raise ValueError(
            "verify(ci=) resamples the prompts of the estimate: pass attribute(..., per_prompt=True)"
        )
    if "stat" in estimate.dims:
        estimate = estimate.sel(stat="value", drop=True)
    ci = bootstrap.Bootstrap.of(ci)
    values = estimate.sel(metric=metric)
    flat = values.stack(site=list(values.dims))
    kept = ~np.isnan(flat.values)
    flat = flat[kept]
    basis = _checked_dictionary(estimate, dictionary)
    sites = [
        _site(estimate.attrs["site"], dict(zip(flat.indexes["site"].names, key)), basis)
        for key in flat.indexes["site"]
    ]
    baseline = float(
        estimate.attrs[
            "baseline_corrupt" if estimate.attrs["direction"] == "denoise" else "baseline_clean"
        ][metric]
    )
    strength = np.abs(flat.values - baseline)
    chosen = top_and_sample(strength, top_k, sample, seed)
    exact, exact_rows, self_checks = _exact(
        model, pairs, estimate, [sites[i] for i in chosen], metric, progress
    )
    table = pd.DataFrame(
        {
            "site": [str(sites[i]) for i in chosen],
            "estimate": flat.values[chosen],
            "exact": exact,
            "in_top_k": [rank < top_k for rank in range(len(chosen))],
        }
    )
    table["error"] = table["estimate"] - table["exact"]
    exact_top = set(np.argsort(-np.abs(np.asarray(exact) - baseline), kind="stable")[:top_k])
    recall = len(exact_top & set(range(min(top_k, len(chosen))))) / max(1, min(top_k, len(chosen)))
    interval = None
    if ci is not None:
        cells = np.flatnonzero(kept)[
            chosen
        ]  # the verified sites among the estimate's flattened cells
        interval = _resampled_agreement(table, estimate_rows, cells, exact_rows, metric, ci)
    table = table.reindex(table["error"].abs().sort_values(ascending=False).index).reset_index(
        drop=True
    )
    attrs = results.provenance(
        model,
        pairs,
        analysis="verify",
        direction=estimate.attrs["direction"],
        site=estimate.attrs["site"],
        top_k=top_k,
        sample=sample,
        sample_seed=seed,
        metric=metric,
        self_checks=self_checks,
        self_check_tolerance=checks.tolerance(next(model.hf.parameters()).dtype),
    )
    return Verification(
        _spearman(flat.values[chosen], np.asarray(exact)),
        recall,
        top_k,
        table,
        interval,
        attrs=attrs,
    )


def check_counts(top_k: int, sample: int, unit: str) -> None:
    """Refuse a `top_k` or `sample` that is not a whole number, 0 or more, of `unit` (sites, edges)."""
    for name, value in (("top_k", top_k), ("sample", sample)):
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 0:
            raise ValueError(f"{name} must be a whole number of {unit}, 0 or more, got {value!r}")


def top_and_sample(strength: np.ndarray, top_k: int, sample: int, seed: int) -> list[int]:
    """The indices to check exactly: the `top_k` strongest (ties in order), then `sample` of the
    rest drawn at random with `seed`, so a check also sees what the estimate ranked low."""
    ranked = np.argsort(-strength, kind="stable")
    chosen = list(ranked[:top_k])
    rest = ranked[top_k:]
    if len(rest) and sample:
        chosen += list(
            np.random.default_rng(seed).choice(rest, size=min(sample, len(rest)), replace=False)
        )
    return chosen


def _per_prompt_estimate(estimate: xr.DataArray) -> tuple[bootstrap.Block, xr.DataArray]:
    """A per-prompt estimate as a Block of every cell, and its averaged estimate (the same ratio of
    means the averaged `attribute` returns, to rounding)."""
    complete = estimate.reindex(
        metric=list(METRICS)
    )  # the bootstrap lays out every metric; the others are NaN
    blocks, layout = bootstrap.split(complete)
    if len(blocks) > 1 or len(blocks[0].groups) > 1:
        raise ValueError(
            "verify takes an estimate of one batch of prompts (no corruption dimension, one length group)"
        )
    averaged = layout.lay_out(
        [bootstrap.statistic(blocks[0], np.ones((1, blocks[0].n)))], "stat", ["value"]
    )
    averaged = averaged.sel(stat="value", drop=True).sel(metric=list(estimate["metric"].values))
    averaged = averaged.transpose(*[d for d in estimate.dims if d != "batch"])
    return blocks[0], averaged


def _resampled_agreement(
    table: pd.DataFrame,
    estimate_rows: bootstrap.Block,
    cells: np.ndarray,
    exact_rows: bootstrap.Block,
    metric: str,
    boot: bootstrap.Bootstrap,
) -> tuple[float, float]:
    """The rank correlation's percentile interval, estimates and exact values recomputed on the same
    resamples of the prompts; each site's estimate and exact interval go into `table`."""
    if estimate_rows.n != exact_rows.n:
        raise ValueError(
            f"the estimate holds {estimate_rows.n} prompts and pairs {exact_rows.n}: verify it on its own prompts"
        )
    counts = bootstrap.resample_counts(exact_rows, boot.n_boot, bootstrap.rngs(boot.seed, 1)[0])
    which = METRICS.index(metric)
    estimated = bootstrap.statistic(estimate_rows, counts, cells)[
        :, which
    ]  # (resample, verified site)
    exact = bootstrap.statistic(exact_rows, counts)[:, which]
    for name, values in (("estimate", estimated), ("exact", exact)):
        table[f"{name}_lo"], table[f"{name}_hi"] = bootstrap.percentile(values, boot)
    correlations = np.array([_spearman(a, b) for a, b in zip(estimated, exact)])
    if np.isnan(
        correlations
    ).any():  # a resample on which one side is constant has no order to correlate
        return (float("nan"), float("nan"))
    lo, hi = bootstrap.percentile(correlations, boot)
    return float(lo), float(hi)


def _exact(
    model: Model,
    pairs: PromptPairs,
    estimate: xr.DataArray,
    sites: list[Site],
    metric: str,
    progress: bool | None = None,
) -> tuple[list[float], bootstrap.Block, dict[str, float]]:
    """Exact effects of exactly these sites, through the batched engine, each patch's per-prompt
    rows (what a bootstrap of the agreement resamples; the same forwards), and the sweeps'
    self-checks through the plain patch path."""
    direction = estimate.attrs["direction"]
    layers = sorted({s.layer for s in sites})
    spec = SweepSpec(
        estimate.attrs["site"],
        direction=direction,
        layers=layers,
        positions=[s.pos for s in sites[:1]] if sites[0].pos is not None else "all",
        neurons=[s.neuron for s in sites[:1]] if sites[0].neuron is not None else None,
        latents=[s.latent for s in sites[:1]] if sites[0].latent is not None else None,
        dictionary=sites[0].basis,
        ablation=estimate.attrs.get("source")
        if estimate.attrs.get("source") in ABLATIONS
        else None,
        progress=progress,
    )
    the_plan = plan(model, pairs, spec).narrowed(sites)
    base = collect.baseline(model, pairs, check=False)  # the estimate's own call already checked it
    with torch.no_grad():
        both, _, _ = batched.patched_logits(
            model,
            the_plan,
            base,
            lambda logits: (
                collect.row(logits, base, per_prompt=False)[metric],
                collect.row(logits, base, per_prompt=True),
            ),
        )
    rows = bootstrap.rows_block(
        [r for _, r in both],
        base.clean_logit_diff.cpu().numpy(),
        base.corrupt_logit_diff.cpu().numpy(),
    )
    self_checks = checks.run(model, the_plan, base, ReferencePatching(model, the_plan).logits)
    return [v for v, _ in both], rows, self_checks


def _checked_dictionary(estimate: xr.DataArray, dictionary: Any) -> Any:
    """The dictionary of a feature estimate (None for others), checked to be the one it names."""
    made_with = estimate.attrs.get("dictionary")
    if made_with is None:
        if dictionary is not None:
            raise ValueError(
                "dictionary= goes with estimates over feature sites; this one is over "
                f"{estimate.attrs['site']} sites"
            )
        return None
    if dictionary is None or getattr(dictionary, "name", None) != made_with["name"]:
        source = made_with.get("source", "")
        raise ValueError(
            f"this estimate is over latents of {made_with['name']} ({source}): "
            "pass that dictionary, verify(..., dictionary=it)"
        )
    return dictionary


def _site(kind: str, coords: dict, basis: Any = None) -> Site:
    unit = unit_dim(kind)
    pos = coords.get("pos")
    if isinstance(pos, str) and pos.lstrip("-").isdigit():
        pos = int(pos)
    fields = {}
    if unit in ("head", "kv_head"):
        fields["head"] = int(coords[unit])
    elif unit == "neuron":
        fields["neuron"] = int(coords[unit])
    elif unit == "latent":
        fields["latent"] = int(coords[unit])
    if basis is not None:
        fields["basis"] = basis
    return Site(
        kind,
        int(coords["layer"]),
        pos=None if pos is None else (pos if isinstance(pos, str) else int(pos)),
        **fields,
    )


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation: Pearson's on the ranks, tied values sharing their average rank.

    Ties are common here, not a corner case: patches that change nothing all give exactly the
    target's value. Ranking ties by position instead would invent an order between them and move
    the correlation with it. NaN when either side is constant (no order to correlate)."""
    if len(a) < 2:
        return float("nan")
    ranks_a, ranks_b = (
        _average_ranks(np.asarray(a, dtype=np.float64)),
        _average_ranks(np.asarray(b, dtype=np.float64)),
    )
    if ranks_a.std() == 0 or ranks_b.std() == 0:
        return float("nan")
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def _average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, each group of equal values given the mean of the ranks it spans."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    starts = np.flatnonzero(
        np.r_[True, ordered[1:] != ordered[:-1]]
    )  # where each run of equal values begins
    ends = np.r_[starts[1:], len(values)]
    ranks = np.empty(len(values))
    ranks[order] = np.repeat((starts + ends + 1) / 2, ends - starts)  # mean of ranks start+1 .. end
    return ranks

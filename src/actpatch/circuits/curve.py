"""A faithfulness curve's area scores and intervals, shared by edge and feature circuits.

    f(C) = (m(C) − m(∅)) / (m(full) − m(∅))     on the mean logit difference m

MIB's summaries, on the axis of the *fraction* of the ranked units x = percent/100 (edges, or a
dictionary's nodes), by trapezoids between consecutive sizes (none before the first or after the
last; not divided by the axis' length, so with MIB's sizes the most a curve can score is 0.999):

    CPR = Σ (x_{i+1} − x_i)·(f_i + f_{i+1})/2          (higher is better)
    CMD = Σ (x_{i+1} − x_i)·(|1 − f_i| + |1 − f_{i+1}|)/2   (lower is better)

Edge curves are `graph.faithfulness_curve`, feature curves `circuits.feature_faithfulness_curve`;
both compute their areas and bounds here, so the two scores mean the same."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import xarray as xr
from torch import Tensor

from actpatch import metrics
from actpatch.circuits.evaluate import with_intervals
from actpatch.stats import bootstrap

MIB_PERCENTS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100)  # MIB's circuit sizes, % of the units


def cpr_cmd(percents: Sequence[float], faithfulness: Sequence[float]) -> tuple[float, float]:
    """(CPR, CMD): the areas under f and under |1 − f| over the fraction of units (percent/100)."""
    x = np.asarray(percents, dtype=float) / 100
    f = np.asarray(faithfulness, dtype=float)
    if x.shape != f.shape or x.ndim != 1:
        raise ValueError(f"need one faithfulness per size, got {len(f)} for {len(x)} sizes")
    widths = np.diff(x)
    return float(np.sum(widths * (f[1:] + f[:-1]) / 2)), float(
        np.sum(widths * (np.abs(1 - f[1:]) + np.abs(1 - f[:-1])) / 2)
    )


def prompt_block(
    base: metrics.Baseline,
    logits: Sequence[Tensor],
    empty: Tensor | None = None,
    full: Tensor | None = None,
) -> bootstrap.Block:
    """Every metric of each prompt of each circuit's run (`logits`: (batch, vocab) each), as the
    block a bootstrap over prompts resamples: normalised by the clean and corrupt runs, or by
    the `empty` and `full` circuits' per-prompt logit differences where given (that is f)."""
    rows = [
        {name: v.double().cpu().numpy() for name, v in metrics.per_prompt(each, base).items()}
        for each in logits
    ]
    low = base.corrupt_logit_diff if empty is None else empty
    high = base.clean_logit_diff if full is None else full
    return bootstrap.rows_block(rows, high.double().cpu().numpy(), low.double().cpu().numpy())


def with_curve_intervals(
    curve: xr.DataArray,
    blocks: tuple,
    boot: bootstrap.Bootstrap,
    more: Mapping[str, bootstrap.Block] | None = None,
) -> xr.DataArray:
    """`curve` (percent, metric) with intervals from two blocks of the same per-prompt rows: one
    normalised by the empty and full circuits (its norm_logit_diff is f), one by the clean and
    corrupt runs; `more`: further metrics, each its own block normalised by the empty and full
    circuits (a feature curve's completeness). CPR and CMD intervals go into `attrs`."""
    by_circuits, by_runs = blocks
    resampled_f = bootstrap.replicates(by_circuits, boot)  # (resample, metric, size)
    norm = metrics.METRICS.index("norm_logit_diff")
    f = resampled_f[:, norm]  # (resample, size)
    lo_hi = {}
    resampled = np.array([cpr_cmd(curve["percent"].values, row) for row in f])  # (resample, 2)
    for i, name in enumerate(("cpr", "cmd")):
        lo_hi[f"{name}_lo"], lo_hi[f"{name}_hi"] = map(
            float, bootstrap.percentile(resampled[:, i], boot)
        )
    # every other metric, normalised by the clean and corrupt runs, from the same resamples
    others = bootstrap.replicates(by_runs, boot)
    per_metric = {m: others[:, metrics.METRICS.index(m)] for m in metrics.METRICS}
    per_metric["faithfulness"] = f
    for name, block in (more or {}).items():
        per_metric[name] = bootstrap.replicates(block, boot)[:, norm]
    boot_all = np.stack(
        [per_metric[m] for m in curve["metric"].values], axis=-1
    )  # (resample, percent, metric)
    result = with_intervals(curve, boot_all, boot)
    result.attrs.update(lo_hi)
    return result

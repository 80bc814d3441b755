"""Two sweeps over the same prompts, site by site: is the difference more than the prompts' noise?

The bootstrap is *paired*: one set of resampled prompt indices serves both sweeps, so whatever a
prompt does to both (an easy prompt, an odd template) cancels in the difference. Comparing many
sites at once finds some differences by chance, so the flags are controlled for the false
discovery rate over the sites (Benjamini–Hochberg), not read one p-value at a time.

Not its job: deciding whether two prompt sets are "the same prompts" — it pairs prompt i with
prompt i, and refuses only when the counts (or length groups) differ."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import xarray as xr

from actpatch import caller
from actpatch.metrics import METRICS, check_metric
from actpatch.stats import bootstrap


@bootstrap.old_keywords("n_boot", "seed")
def compare(
    result_a: xr.DataArray,
    result_b: xr.DataArray,
    *,
    metric: str = "norm_logit_diff",
    ci: float | bootstrap.Bootstrap = bootstrap.DEFAULT,
    fdr: float = 0.05,
) -> pd.DataFrame:
    """One row per site: the `site` and its coordinates, `a`, `b`, their `difference` (a − b) with its
    interval [`lo`, `hi`], a bootstrap p-value `p`, `flagged`, and the Benjamini–Hochberg
    adjusted `p_adjusted` (flagged exactly where it is ≤ `fdr`).

    `result_a` and `result_b` are per-prompt sweeps (`per_prompt=True`) of the same prompts in the
    same order and over the same sites: two corruptions of the same clean prompts, two directions,
    two models. Each resample draws one set of prompts for both (a paired bootstrap); `metric` is
    recomputed on it as the sweep defines it (the normalised logit difference as a ratio of means,
    each sweep on its own baselines). The interval is the percentile interval of the resampled
    differences (`ci`: a level, or an `actpatch.Bootstrap` for the resamples' count and seed). `p`
    is two-sided, the smallest 1 − ci at which that interval would exclude 0: 2 × min(share of
    resampled differences ≤ 0, share ≥ 0), counted with the +1 of an exact test so it is never 0.
    `flagged` marks sites whose difference survives the Benjamini–Hochberg procedure at false
    discovery rate `fdr` over all sites of the table: on average at most that share of flagged sites
    differ by chance.

    The trap: p cannot go below 2 / (n_boot + 1), and Benjamini–Hochberg asks the smallest p to be
    under fdr / sites, so a lone difference among many sites needs n_boot ≥ 2 × sites / fdr; a
    warning says when n_boot is too small for that."""
    check_metric(metric)
    boot = bootstrap.Bootstrap.of(ci)
    ci, n_boot, seed = boot.ci, boot.n_boot, boot.seed
    if not 0 < fdr < 1:
        raise ValueError(
            f"fdr is a false discovery rate between 0 and 1 (0.05 is usual), got {fdr!r}"
        )
    blocks_a, layout_a = _one_block(result_a, "result_a")
    blocks_b, layout_b = _one_block(result_b, "result_b")
    if blocks_a.n != blocks_b.n:
        raise ValueError(
            f"result_a holds {blocks_a.n} prompts and result_b {blocks_b.n}: a paired comparison needs "
            "the same prompts in both (compare sweeps of the same clean prompts)"
        )
    if blocks_a.groups != blocks_b.groups:
        raise ValueError(
            f"result_a's length groups {list(blocks_a.groups)} are not result_b's {list(blocks_b.groups)}: "
            "pair the same prompts, in the same order"
        )
    if layout_a.template.sizes != layout_b.template.sizes or any(
        not np.array_equal(layout_a.template[d].values, layout_b.template[d].values)
        for d in layout_a.cell_dims
    ):
        raise ValueError(
            "result_a and result_b are not over the same sites (their layer/unit/pos/direction "
            "coordinates differ): sweep the same site kind, layers and positions"
        )
    row = METRICS.index(metric)
    value_a = bootstrap.statistic(blocks_a, np.ones((1, blocks_a.n)))[0, row]
    value_b = bootstrap.statistic(blocks_b, np.ones((1, blocks_b.n)))[0, row]
    counts = bootstrap.resample_counts(
        blocks_a, n_boot, bootstrap.rngs(seed, 1)[0]
    )  # the same draws for both
    cells = value_a.shape[0]
    lo, hi, p = np.empty(cells), np.empty(cells), np.empty(cells)
    for chunk in bootstrap.cell_chunks(blocks_a, n_boot):
        differences = (
            bootstrap.statistic(blocks_a, counts, chunk)[:, row]
            - bootstrap.statistic(blocks_b, counts, chunk)[:, row]
        )
        lo[chunk], hi[chunk] = bootstrap.percentile(differences, ci)
        at_most, at_least = (differences <= 0).sum(axis=0), (differences >= 0).sum(axis=0)
        p[chunk] = np.minimum(1.0, 2 * (np.minimum(at_most, at_least) + 1) / (n_boot + 1))
    if 2 / (n_boot + 1) > fdr / cells:
        warnings.warn(
            f"with n_boot={n_boot} no p-value is below {2 / (n_boot + 1):.2g}, and a lone difference among "
            f"{cells} sites needs p ≤ {fdr / cells:.2g} to be flagged; use n_boot ≥ {int(np.ceil(2 * cells / fdr))}",
            stacklevel=caller.stacklevel(),
        )
    table = bootstrap.cell_table(layout_a)
    table["a"], table["b"] = value_a, value_b
    table["difference"] = value_a - value_b
    table["lo"], table["hi"], table["p"] = lo, hi, p
    table["flagged"] = benjamini_hochberg(p, fdr)
    table["p_adjusted"] = adjusted_p(p)  # last: the columns before it keep their places
    table.attrs.update(
        {
            "metric": metric,
            "ci": ci,
            "n_boot": n_boot,
            "seed": seed,
            "fdr": fdr,
            "method": "percentile, paired",
            "multiple_comparisons": f"Benjamini-Hochberg over {cells} sites",
            "n_prompts": blocks_a.n,
            "a": _about(result_a),
            "b": _about(result_b),
        }
    )
    return table


def benjamini_hochberg(p: np.ndarray, fdr: float) -> np.ndarray:
    """Which p-values are discoveries at false discovery rate `fdr` (Benjamini & Hochberg 1995):
    the k smallest, for the largest k with p_(k) ≤ k × fdr / m."""
    p = np.asarray(p, dtype=float)
    order = np.argsort(p, kind="stable")
    below = p[order] <= fdr * np.arange(1, p.size + 1) / p.size
    flagged = np.zeros(p.size, dtype=bool)
    if below.any():
        flagged[order[: int(np.nonzero(below)[0].max()) + 1]] = True
    return flagged


def adjusted_p(p: np.ndarray) -> np.ndarray:
    """Benjamini–Hochberg adjusted p-values: the smallest false discovery rate at which each site
    would be flagged (min over k ≥ rank of p_(k) × m / k, capped at 1), to read beside the raw p."""
    p = np.asarray(p, dtype=float)
    order = np.argsort(p, kind="stable")
    scaled = p[order] * p.size / np.arange(1, p.size + 1)
    adjusted = np.empty(p.size)
    adjusted[order] = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    return adjusted


def _one_block(result: xr.DataArray, name: str) -> tuple[bootstrap.Block, bootstrap.Layout]:
    try:
        blocks, layout = bootstrap.split(result)
    except bootstrap.NotPerPrompt:
        raise bootstrap.NotPerPrompt(
            f"{name} has no 'batch' dimension: compare needs per-prompt sweeps "
            "(sweep(..., per_prompt=True)) to pair their prompts"
        ) from None
    if layout.labels is not None:
        raise ValueError(
            f"{name} has a 'corruption' dimension: compare two of its corruptions as "
            "compare(result.sel(corruption='abc'), result.sel(corruption='s2'))"
        )
    return blocks[0], layout


def _about(result: xr.DataArray) -> dict:
    attrs = result.attrs
    return {
        key: attrs.get(key)
        for key in ("model", "task", "seed", "corruption", "direction", "site")
        if key in attrs
    }

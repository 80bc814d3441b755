"""How many prompts? The interval width as the number of prompts grows, and the count a width needs.

A bootstrap interval of a mean narrows like 1/√n. Drawing m of the n prompts (with replacement)
per resample gives the width that m prompts would have; fitting k/√m to those widths, and
checking the fit, gives the count for a wanted width: (k / width)². Extrapolating beyond n
assumes new prompts vary like the ones swept, which is the assumption of every interval here."""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import pandas as pd
import xarray as xr

from actpatch import caller, results
from actpatch.metrics import METRICS, check_metric
from actpatch.sites import Site
from actpatch.stats import bootstrap

MAX_MISFIT = 0.25  # past this relative gap between widths and k/√n, no count is read off the fit


class EnoughPrompts(NamedTuple):
    """`needed`: prompts for an interval no wider than the asked width at every chosen site, or
    None when some chosen site's widths do not shrink like 1/√n (then `reason` says which: the fit
    would extrapolate a number it cannot support). `widths`: one row per (site, n_prompts), the
    measured width and the 1/√n fit's. `sites`: one row per chosen site: value, effect, width at
    all prompts, fitted `slope` of log width against log n (−0.5 when the fit is right), worst
    `misfit`, and its own `needed` (missing where its fit fails)."""

    needed: int | None
    widths: pd.DataFrame
    sites: pd.DataFrame
    reason: str = ""

    def __repr__(self) -> str:
        about = self.sites.attrs
        why = f", reason={self.reason[:120]!r}" if self.reason else ""
        return (
            f"EnoughPrompts(needed={self.needed}{why}; width {about.get('width')} of "
            f"{about.get('metric')} at {len(self.sites)} sites, measured on "
            f"{about.get('n_prompts')} prompts)"
        )


@bootstrap.old_keywords("n_boot", "seed")
def enough_prompts(
    per_prompt_result: xr.DataArray,
    *,
    width: float = 0.1,
    metric: str = "norm_logit_diff",
    sites: Sequence[Site | str] | None = None,
    top: int = 3,
    sizes: Sequence[int] | None = None,
    ci: float | bootstrap.Bootstrap = bootstrap.DEFAULT,
) -> EnoughPrompts:
    """The `ci` interval's width of `metric` against the number of prompts, and how many prompts
    bring it down to `width`, at the sites that matter: `sites` (Sites or their strings), or the
    `top` strongest effects (largest |effect|, read as `results.effects` does).

    Widths are measured on `sizes` prompts drawn with replacement from the swept ones (default:
    an eighth, a quarter, a half and all of them), fitted as k/√n, and the fit is checked against
    them (`misfit`, the worst relative gap; a warning past 25 %). Length groups are pooled when
    sub-sampling. Read `needed` as the order of magnitude of the next sweep, not a guarantee: it
    is the widest chosen site's (k / width)², rounded up; None, with the `reason`, when a chosen
    site's misfit passes 25 %, since a number from a fit that does not hold would only look sure."""
    check_metric(metric)
    boot = bootstrap.Bootstrap.of(ci)
    ci, n_boot, seed = boot.ci, boot.n_boot, boot.seed
    if not width > 0:
        raise ValueError(
            f"width is the wanted interval width in the metric's units (0.1 is a tenth of the clean−corrupt "
            f"gap for norm_logit_diff), got {width!r}"
        )
    blocks, layout = bootstrap.split(per_prompt_result)
    if layout.labels is not None:
        raise ValueError(
            "this result has a 'corruption' dimension: ask for one corruption at a time, "
            "e.g. enough_prompts(result.sel(corruption='abc'))"
        )
    block = blocks[0]
    row = METRICS.index(metric)
    value = bootstrap.statistic(block, np.ones((1, block.n)))[0, row]
    table = bootstrap.cell_table(layout)
    effect = _effects(per_prompt_result, table, value, metric)
    chosen = _chosen(table, effect, sites, top)
    sizes = _sizes(block.n, sizes)
    rng = bootstrap.rngs(seed, 1)[0]
    measured = []
    for size in sizes:
        boot = bootstrap.statistic(
            block, bootstrap.resample_counts(block, n_boot, rng, size=size), chosen
        )[:, row]
        lo, hi = bootstrap.percentile(boot, ci)
        measured.append(hi - lo)
    measured = np.array(measured)  # (size, chosen site)
    root = 1 / np.sqrt(np.array(sizes, dtype=float))
    scale = (measured * root[:, None]).sum(0) / (root**2).sum()  # least squares of width = k / √n
    fitted = scale[None, :] * root[:, None]
    misfit = np.where(
        measured > 0, np.abs(measured - fitted) / np.where(measured > 0, measured, 1), 0
    ).max(0)
    slope = (
        np.array(
            [
                np.polyfit(np.log(sizes), np.log(measured[:, j]), 1)[0]
                if (measured[:, j] > 0).all()
                else np.nan
                for j in range(len(chosen))
            ]
        )
        if len(sizes) > 1
        else np.full(len(chosen), np.nan)
    )
    fits = misfit <= MAX_MISFIT
    needed_each = pd.array(
        [max(2, math.ceil((k / width) ** 2)) if fit else None for k, fit in zip(scale, fits)],
        dtype="Int64",
    )
    label = table["site"] if "site" in table else pd.Series([str(i) for i in range(len(table))])
    names = [
        label[i] + (f" ({table['direction'][i]})" if "direction" in table else "") for i in chosen
    ]
    per_site = pd.DataFrame(
        {
            "site": names,
            "value": value[chosen],
            "effect": effect[chosen],
            "width": measured[-1],
            "slope": slope,
            "misfit": misfit,
            "needed": needed_each,
        }
    )
    widths = pd.DataFrame(
        {
            "site": [name for name in names for _ in sizes],
            "n_prompts": [size for _ in names for size in sizes],
            "width": measured.T.ravel(),
            "fitted": fitted.T.ravel(),
        }
    )
    reason = ""
    if not fits.all():
        off = ", ".join(
            f"{n} (misfit {m:.2g})" for n, m, fit in zip(names, misfit, fits) if not fit
        )
        reason = (
            f"interval widths at {off} do not shrink like 1/√n over {sizes[0]}..{sizes[-1]} "
            "prompts, so no count can be read off the fit: sweep more prompts (outliers or "
            "too few prompts) and ask again"
        )
        warnings.warn(reason, stacklevel=caller.stacklevel())
    about = {
        "width": width,
        "metric": metric,
        "ci": ci,
        "n_boot": n_boot,
        "seed": seed,
        "n_prompts": block.n,
    }
    widths.attrs.update(about)
    per_site.attrs.update(about)
    return EnoughPrompts(int(needed_each.max()) if fits.all() else None, widths, per_site, reason)


def _effects(
    result: xr.DataArray, table: pd.DataFrame, value: np.ndarray, metric: str
) -> np.ndarray:
    if "direction" in table:
        return np.array(
            [
                float(results.effects(result.attrs, v, metric, d))
                for v, d in zip(value, table["direction"])
            ]
        )
    # One direction selected from a two-direction sweep keeps it as a scalar coordinate.
    chosen = (
        str(result["direction"].values)
        if "direction" in result.coords and result["direction"].ndim == 0
        else None
    )
    return results.effects(result.attrs, value, metric, chosen)


def _chosen(
    table: pd.DataFrame, effect: np.ndarray, sites: Sequence[Site | str] | None, top: int
) -> np.ndarray:
    if sites is None:
        if top < 1:
            raise ValueError(
                f"top is how many of the strongest effects to size the sweep for, at least 1; got {top!r}"
            )
        return np.argsort(-np.abs(effect), kind="stable")[:top]
    wanted = [str(s if isinstance(s, Site) else Site.parse(s)) for s in sites]
    if "site" not in table:
        raise ValueError(
            "this result does not say its site kind (attrs['site']), so sites= cannot be matched"
        )
    missing = [w for w in wanted if w not in set(table["site"])]
    if missing or not wanted:
        raise ValueError(
            f"sites {missing or wanted} are not in this result; it holds e.g. {', '.join(table['site'][:3])}"
        )
    return np.flatnonzero(table["site"].isin(wanted).to_numpy())


def _sizes(n: int, sizes: Sequence[int] | None) -> list[int]:
    if sizes is None:
        sizes = sorted({max(2, round(n * share)) for share in (1 / 8, 1 / 4, 1 / 2, 1)})
    sizes = sorted({int(s) for s in sizes})
    if not sizes or sizes[0] < 2 or sizes[-1] > n:
        raise ValueError(
            f"sizes are numbers of prompts to sub-sample, from 2 to the {n} swept; got {sizes}"
        )
    return sizes

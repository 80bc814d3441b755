"""Sensitivity to the corruption: components whose effect depends on which corruption was used.

A corruption decides what a sweep can see: replacing every name (ABC) traces everything
name-related, replacing the repeated subject only (S2) the duplicate-detection path. A component
that matters under one and not the other is a finding about the corruption as much as about the
model (Heimersheim & Nanda 2024), so such components are listed, not averaged away. The sweeps
themselves come from `actpatch.sweep_corruptions`."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from actpatch import results
from actpatch.stats import bootstrap


@bootstrap.old_keywords("n_boot", "seed")
def sensitivity_report(
    result: xr.DataArray,
    *,
    threshold: float = 0.1,
    metric: str = "norm_logit_diff",
    ci: float | bootstrap.Bootstrap | None = None,
    fdr: float = 0.05,
) -> pd.DataFrame:
    """Components whose effect differs by at least `threshold` between corruptions, most
    different first: one column per corruption, the `spread` (largest − smallest effect), and
    the corruptions under which the effect is `largest_under` and `smallest_under`.

    `result` is a `sweep_corruptions` result of one direction, of any site kind. Effects are read as in
    `ranking()`: the normalised metric's distance from the target run (0 after denoising, 1 after
    noising), each corruption on its own clean−corrupt scale, so 0.1 is a tenth of the gap.
    Other metrics are compared as raw values.

    With `ci` (a level or an `actpatch.Bootstrap`; a per-prompt `sweep_corruptions(...,
    per_prompt=True)` of the same clean prompts), each listed component's spread gets its
    paired-bootstrap interval `spread_lo`, `spread_hi` and `p` (`actpatch.stats.compare` of its two
    extreme corruptions, over every component), and `real` marks the spreads that survive
    Benjamini–Hochberg at `fdr`: one corruption hides what another shows only where `real` is
    true."""
    if "corruption" not in result.dims:
        raise ValueError(
            "sensitivity_report reads a result with a 'corruption' dimension: use actpatch.sweep_corruptions"
        )
    if "metric" not in result.dims or metric not in result.coords["metric"].values:
        raise ValueError(f"the result has no metric {metric!r}")
    if "direction" in result.dims:
        raise ValueError(
            "this result has a 'direction' dimension: pick one first, e.g. result.sel(direction='denoise')"
        )
    if ci is not None:
        if "batch" not in result.dims:
            raise ValueError(
                "sensitivity_report(ci=) resamples prompts: pass sweep_corruptions(..., per_prompt=True)"
            )
        averaged = bootstrap.averaged(result)
        return _with_intervals(
            sensitivity_report(averaged, threshold=threshold, metric=metric),
            result,
            metric,
            dict(ci=bootstrap.Bootstrap.of(ci), fdr=fdr),
        )
    if "batch" in result.dims:
        result = bootstrap.averaged(result)
    names = [str(c) for c in result["corruption"].values]
    kind = result.attrs.get("site", "site")
    values = result.sel(metric=metric)
    dims = [d for d in values.dims if d != "corruption"]
    flat = (
        values.transpose("corruption", *dims).stack(component=dims)
        if dims
        else values.expand_dims(component=[0], axis=1)
    )
    # Any site kind: a component is one cell of the sweep, named like a Site ("resid_pre[layer=3, pos=IO]").
    labels = (
        [
            f"{kind}[{', '.join(f'{d}={v}' for d, v in zip(dims, key if isinstance(key, tuple) else (key,)))}]"
            for key in flat.indexes["component"]
        ]
        if dims
        else [kind]
    )
    # The normalised metric is read as an effect (each corruption on its own clean−corrupt scale);
    # other metrics are compared as raw values, since each corruption has its own baselines.
    effects = {
        name: results.effects({}, flat.values[i], metric, result.attrs.get("direction"))
        if metric == "norm_logit_diff"
        else np.asarray(flat.values[i], dtype=float)
        for i, name in enumerate(names)
    }
    table = pd.DataFrame({"component": labels, **effects}).set_index("component")
    stacked = table[names].to_numpy()
    table["spread"] = stacked.max(axis=1) - stacked.min(axis=1)
    table["largest_under"] = [names[i] for i in np.argmax(stacked, axis=1)]
    table["smallest_under"] = [names[i] for i in np.argmin(stacked, axis=1)]
    flagged = table[table["spread"] >= threshold].sort_values(
        "spread", ascending=False, kind="stable"
    )
    flagged.attrs.update(
        {
            "threshold": threshold,
            "metric": metric,
            "corruptions": names,
            "direction": result.attrs.get("direction"),
        }
    )
    return flagged


def _with_intervals(
    flagged: pd.DataFrame, result: xr.DataArray, metric: str, options: dict
) -> pd.DataFrame:
    """`flagged` with each spread's paired interval, from a comparison of its two extreme corruptions."""
    from actpatch.stats import compare

    sign = (
        -1.0 if metric == "norm_logit_diff" and result.attrs.get("direction") == "noise" else 1.0
    )  # effect = 1 − value
    columns = {name: [] for name in ("spread_lo", "spread_hi", "p", "real")}
    tables: dict[tuple[str, str], pd.DataFrame] = {}
    for component, row in flagged.iterrows():
        pair = (row["largest_under"], row["smallest_under"])
        if pair not in tables:
            table = compare(
                result.sel(corruption=pair[0]),
                result.sel(corruption=pair[1]),
                metric=metric,
                **options,
            )
            tables[pair] = table.set_index("site") if "site" in table else table
        found = tables[pair].loc[component]
        low, high = sorted((sign * found["lo"], sign * found["hi"]))
        columns["spread_lo"].append(float(low))
        columns["spread_hi"].append(float(high))
        columns["p"].append(float(found["p"]))
        columns["real"].append(bool(found["flagged"]))
    out = flagged.copy()
    for name, values in columns.items():
        out[name] = values
    out.attrs.update(
        flagged.attrs,
        **options["ci"].note(),
        fdr=options["fdr"],
        multiple_comparisons="Benjamini-Hochberg over every component of each pair of corruptions compared",
    )
    return out

"""Denoising and noising read side by side: which components are sufficient, which necessary.

Denoising a component (clean value into the corrupt run) shows whether it is *sufficient* to
bring the answer back; noising it (corrupt value into the clean run) whether it is *necessary*.
They differ exactly where the mechanism has logic in it: either of two redundant components
restores the answer (OR) but neither is missed alone, while two components needed together (AND)
are each missed but neither restores it alone (Heimersheim & Nanda 2024)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import xarray as xr

from actpatch import results
from actpatch.circuits.components import sites_of
from actpatch.stats import bootstrap

BOTH = "necessary and sufficient"
OR_LIKE = "sufficient only (OR-like)"
AND_LIKE = "necessary only (AND-like)"
NEITHER = "neither"


def label_directions(
    result: xr.DataArray,
    *,
    sufficient: float = 0.1,
    necessary: float = 0.1,
    metric: str = "norm_logit_diff",
) -> pd.DataFrame:
    """One row per component of a two-direction sweep (`ap.sweep(..., direction=["denoise",
    "noise"])`): its `sufficiency`, `necessity` and `label`, strongest first.

    sufficiency = metric after denoising − the corrupt baseline (for the normalised logit
    difference, the share of the behaviour it restores alone); necessity = the clean baseline −
    metric after noising (the share lost without it). A component is sufficient when sufficiency
    ≥ `sufficient` (default 0.1, a tenth of the clean−corrupt gap) and necessary when necessity ≥
    `necessary` (default 0.1); the label is "necessary and sufficient", "sufficient only
    (OR-like)", "necessary only (AND-like)" or "neither". Single components in real models rarely
    pass 0.5 alone, hence the low defaults; raise them for a stricter reading.

    A sweep with intervals (`ci=0.95`), or a per-prompt one (given 95 % intervals from 1000
    resamples here), adds `sufficiency_lo/hi`, `necessity_lo/hi` and `settled`: both intervals lie
    on one side of their thresholds, so other prompts from the generator would very likely give the
    same label. An unsettled label is the prompts' as much as the component's."""
    if "direction" not in result.dims or not {"denoise", "noise"} <= set(
        result["direction"].values.tolist()
    ):
        raise ValueError(
            "label_directions needs both directions: sweep with direction=['denoise', 'noise']"
        )
    if "batch" in result.dims:
        result = bootstrap.intervals(result)
    sufficiency, necessity, sites = {}, {}, []
    for stat in ("value", "lo", "hi") if "stat" in result.dims else ("value",):
        at = result.sel(stat=stat, drop=True) if "stat" in result.dims else result
        sites, denoised = sites_of(at.sel(direction="denoise"), metric)
        _, noised = sites_of(at.sel(direction="noise"), metric)
        sufficiency[stat] = results.effects(result.attrs, denoised, metric, "denoise")
        necessity[stat] = results.effects(result.attrs, noised, metric, "noise")
    suff, need = sufficiency["value"], necessity["value"]
    labels = np.where(
        suff >= sufficient,
        np.where(need >= necessary, BOTH, OR_LIKE),
        np.where(need >= necessary, AND_LIKE, NEITHER),
    )
    table = pd.DataFrame(
        {
            "component": [str(s) for s in sites],
            "sufficiency": suff,
            "necessity": need,
            "label": labels,
        }
    ).set_index("component")
    if "lo" in sufficiency:
        # An effect is a signed distance from the unpatched run, so lo and hi may swap places.
        for name, ends in (("sufficiency", sufficiency), ("necessity", necessity)):
            table[f"{name}_lo"] = np.minimum(ends["lo"], ends["hi"])
            table[f"{name}_hi"] = np.maximum(ends["lo"], ends["hi"])
        table["settled"] = np.logical_and(
            *[
                (table[f"{n}_lo"] >= t) | (table[f"{n}_hi"] < t)
                for n, t in (("sufficiency", sufficient), ("necessity", necessary))
            ]
        )
    strength = np.maximum(suff, need)
    table = table.iloc[np.argsort(-strength, kind="stable")]
    table.attrs.update({"sufficient": sufficient, "necessary": necessary, "metric": metric})
    if "interval" in result.attrs:
        table.attrs["interval"] = result.attrs["interval"]
    return table

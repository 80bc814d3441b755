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
    pass 0.5 alone, hence the low defaults; raise them for a stricter reading."""
    if "direction" not in result.dims or not {"denoise", "noise"} <= set(result["direction"].values.tolist()):
        raise ValueError("label_directions needs both directions: sweep with direction=['denoise', 'noise']")
    sites, denoised = sites_of(result.sel(direction="denoise"), metric)
    _, noised = sites_of(result.sel(direction="noise"), metric)
    sufficiency = results.effects(result.attrs, denoised, metric, "denoise")
    necessity = results.effects(result.attrs, noised, metric, "noise")
    labels = np.where(sufficiency >= sufficient, np.where(necessity >= necessary, BOTH, OR_LIKE),
                      np.where(necessity >= necessary, AND_LIKE, NEITHER))
    table = pd.DataFrame({"component": [str(s) for s in sites], "sufficiency": sufficiency, "necessity": necessity,
                          "label": labels}).set_index("component")
    strength = np.maximum(sufficiency, necessity)
    table = table.iloc[np.argsort(-strength, kind="stable")]
    table.attrs.update({"sufficient": sufficient, "necessary": necessary, "metric": metric})
    return table

"""Results that report and statistics tests read: real sweeps on the tiny LLaMA, and made-up
results whose true values are known (a Pareto curve, per-prompt rows drawn from a population)."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np
import xarray as xr

import actpatch as ap
from actpatch.metrics import METRICS
from tiny import tiny_task, with_answers


@functools.cache
def tiny_results() -> dict[str, xr.DataArray]:
    """Real sweeps on the tiny LLaMA: both directions, per-head, per-head at named positions,
    corruptions."""
    model, pairs = tiny_task("llama")
    shifted = dataclasses.replace(
        pairs, corrupt=pairs.corrupt.roll(1, dims=0)
    )  # a second corruption of the same prompts
    return {
        "resid_pre": ap.sweep(model, pairs, "resid_pre", direction=["denoise", "noise"]),
        "head": ap.sweep(model, pairs, "head"),
        "head_named": ap.sweep(model, pairs, "head", positions=["X", "END"]),
        "corruptions": ap.sweep_corruptions(
            model,
            {"random": pairs, "rolled": with_answers(model, shifted)[1]},
            "resid_pre",
            positions=["X", "END"],
            direction=["denoise", "noise"],
        ),
    }


def pareto_curve() -> xr.DataArray:
    sizes = np.arange(0, 6)
    return xr.DataArray(
        1 - 0.5**sizes,
        dims=["size"],
        coords={"size": sizes},
        name="norm_logit_diff",
        attrs={"title": "recovered performance against circuit size"},
    )


def synthetic(rng, n, *, clean=4.0, corrupt=1.0, share=0.5, layers=1):
    """A per-prompt result of `n` prompts whose ratio of means is `share` and whose mean logit
    difference is corrupt + share × (clean − corrupt), in the population they are drawn from."""
    clean_diff = rng.normal(clean, 1.5, n)
    corrupt_diff = rng.normal(corrupt, 1.5, n)
    diff = (
        corrupt_diff + share * (clean_diff - corrupt_diff) + rng.gamma(2.0, 0.7, (layers, n)) - 1.4
    )  # skewed, mean 0
    values = np.zeros((len(METRICS), layers, n))
    values[METRICS.index("logit_diff")] = diff
    values[METRICS.index("norm_logit_diff")] = (diff - corrupt_diff) / (clean_diff - corrupt_diff)
    return xr.DataArray(
        values,
        dims=("metric", "layer", "batch"),
        coords={"metric": list(METRICS), "layer": list(range(layers)), "batch": list(range(n))},
        attrs={
            "per_prompt_baseline_logit_diff": {
                "clean": clean_diff.tolist(),
                "corrupt": corrupt_diff.tolist(),
            },
            "direction": "denoise",
            "baseline_clean": {"logit_diff": clean_diff.mean()},
            "baseline_corrupt": {"logit_diff": corrupt_diff.mean()},
        },
    )

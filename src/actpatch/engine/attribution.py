"""Attribution patching: every patch's effect estimated from one forward and one backward pass.

AtP (Syed et al. 2023): effect(site) ≈ (a_source − a_target) · ∂metric/∂a, the gradient taken at
the target run. Exact for activations the metric depends on linearly; wrong where attention
saturates or effects cancel. Integrated gradients (as in EAP-IG, Hanna et al. 2024) average the
gradient over runs whose input embeddings are interpolated from target to source, which follows
saturating nonlinearities better at k times the cost. Estimates come back in the exact sweeps'
labelled layout (metrics `norm_logit_diff` and `logit_diff` only: the others are not linear in
the logit difference), so `verify` can patch the strongest ones exactly in one call.
"""
from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from actpatch import hooks, metrics, results
from actpatch.engine.plan import Direction, Positions, SweepPlan, plan
from actpatch.models.model import Model
from actpatch.pairs import PromptPairs
from actpatch.sites import Site

Method = Literal["atp", "ig"]
METHODS = ("atp", "ig")
ESTIMATED_METRICS = ("norm_logit_diff", "logit_diff")


def attribute(
    model: Model,
    pairs: PromptPairs,
    site: str,
    *,
    direction: Direction = "denoise",
    method: Method = "atp",
    steps: int = 5,
    layers: Sequence[int] | None = None,
    positions: Positions = None,
    heads: Sequence[int] | None = None,
    neurons: Sequence[int] | None = None,
) -> xr.DataArray:
    """Estimate every patch of a sweep at once; `verify(result, ...)` checks the strongest exactly.

    `method="atp"`: one forward and one backward at the target run (about 3 forward-pass
    equivalents with the source capture; the backward computes no weight gradients).
    `method="ig"`: `steps` forward+backward passes with input embeddings at target + α·(source −
    target), α = 0, 1/steps, ..., the gradients averaged; `steps=1` is AtP."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    the_plan = plan(model, pairs, site, direction=direction, layers=layers, positions=positions, heads=heads, neurons=neurons)
    alphas = [0.0] if method == "atp" else [i / steps for i in range(steps)]
    with hooks.eager_attention(model) if the_plan.kind == "pattern" else _nothing():
        source = hooks.capture(model, the_plan.source, the_plan.sites, positions=pairs.positions)
        target_logits, target_values, grads = _mean_gradients(model, pairs, the_plan, alphas)
        source_logits = model.last_logits(the_plan.source)
    clean_logits, corrupt_logits = (source_logits, target_logits) if direction == "denoise" else (target_logits, source_logits)
    base = metrics.Baseline(clean_logits, corrupt_logits, pairs.answers, pairs.wrong)
    target_diff = float(metrics.logit_diff(target_logits.double(), pairs.answers, pairs.wrong).mean())
    clean, corrupt = float(base.clean_logit_diff.mean()), float(base.corrupt_logit_diff.mean())
    rows = []
    for s in the_plan.sites:
        change = float(((source[s].double() - target_values[s].double()) * grads[s].double()).sum())
        estimate = target_diff + change
        rows.append({"logit_diff": estimate, "norm_logit_diff": (estimate - corrupt) / (clean - corrupt)})
    return _assemble(model, pairs, the_plan, rows, base, method, steps if method == "ig" else 1)


def _mean_gradients(model: Model, pairs: PromptPairs, the_plan: SweepPlan, alphas: list[float]):
    """Target logits, target activations, and ∂(mean logit diff)/∂activation averaged over the interpolation points."""
    embed = model.hf.get_input_embeddings()
    with torch.no_grad():
        target_embeds = embed(the_plan.target.to(model.device))
        source_embeds = embed(the_plan.source.to(model.device))
    total: dict[Site, Tensor] = {}
    target_logits = target_values = None
    for alpha in alphas:
        inputs = (target_embeds + alpha * (source_embeds - target_embeds)).detach().requires_grad_(True)
        with torch.enable_grad(), hooks.watch(model, the_plan.sites, positions=pairs.positions) as watched:
            logits = model.hf(inputs_embeds=inputs, use_cache=False, logits_to_keep=1).logits[:, -1, :]
            metrics.logit_diff(logits.float(), pairs.answers, pairs.wrong).mean().backward()
        for s, grad in watched.grads.items():
            total[s] = total[s] + grad if s in total else grad
        if alpha == 0.0:
            target_logits, target_values = logits.detach().float(), watched.values
        del inputs, logits, watched
    mean = {s: g / len(alphas) for s, g in total.items()}
    if missing := [s for s in the_plan.sites if s not in mean]:
        raise RuntimeError(f"no gradient reached {missing[0]}: the metric does not depend on it through this forward")
    return target_logits, target_values, mean


def _assemble(model, pairs, the_plan, rows, base, method, steps) -> xr.DataArray:
    full_rows = [{m: row.get(m, np.nan) for m in metrics.METRICS} for row in rows]
    from actpatch.engine import collect  # the exact engines' layout and provenance

    result = collect.finish(model, pairs, the_plan, full_rows, base, {}, engine=method, per_prompt=False)
    result = result.sel(metric=list(ESTIMATED_METRICS))
    result.attrs["estimate"] = {"method": method, "steps": steps}
    result.attrs["cost"] = {"patches": len(the_plan.sites), "forward_equivalents": 1 + 2 * steps}
    return result


class _nothing:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False

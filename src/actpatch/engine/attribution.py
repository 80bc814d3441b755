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

import dataclasses
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Any, Literal

import numpy as np
import torch
import xarray as xr
from torch import Tensor
from tqdm.auto import tqdm

from actpatch import hooks, metrics
from actpatch.engine import checks, collect, runner, sources
from actpatch.engine.plan import SweepPlan, plan
from actpatch.engine.spec import (
    Ablation,
    AttributeOptions,
    Direction,
    Positions,
    options_from,
    spec_from,
)
from actpatch.models.model import Model
from actpatch.pairs import PromptPairs
from actpatch.sites import Site
from actpatch.stats import bootstrap

Method = Literal["atp", "atp*", "ig"]
METHODS = ("atp", "atp*", "ig")
ESTIMATED_METRICS = ("norm_logit_diff", "logit_diff")
GRADDROP_METRIC = "abs_logit_diff_change_graddrop"


@bootstrap.old_keywords("n_boot", "boot_seed")
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
    ablation: Ablation | None = None,
    per_prompt: bool = False,
    ci: float | bootstrap.Bootstrap | None = None,
    **options: Any,
) -> xr.DataArray:
    """Estimate every patch of a sweep at once; `verify(result, ...)` checks the strongest exactly.

    `method="atp"`: one forward and one backward at the target run (6 forward-pass equivalents
    with the baseline's clean and corrupt runs, the source capture and the source's logits; the
    backward computes no weight gradients; `attrs["cost"]` counts them).
    `method="atp*"` (Kramár et al. 2024): for q and k sites, recompute each affected attention
    softmax with the source query or key and linearise only from the pattern on, which AtP gets
    badly wrong where attention saturates; other sites as AtP.
    `graddrop=True` (with "atp" or "atp*") adds the metric `abs_logit_diff_change_graddrop`:
    the mean over layers l of |estimated change| with gradients through layer l's attention and
    MLP dropped, a magnitude that cancelling paths cannot hide (costs one backward per layer).
    `method="ig"`: `steps` forward+backward passes with input embeddings at target + α·(source −
    target), α = 0, 1/steps, ..., the gradients averaged; `steps=1` is AtP. `progress=None` shows a
    bar of the backward passes on a terminal only.

    `per_prompt=True` keeps each prompt's estimate (a `batch` dimension, as in sweeps), which is
    what `verify(..., ci=)` resamples; `ci=0.95` returns intervals over prompts instead (a `stat`
    dimension value/lo/hi; a level or an `actpatch.Bootstrap`, docs/uncertainty.md). Both are
    free: the gradient of the mean logit difference is each prompt's own gradient over n, so the
    per-prompt estimates come from the same backward pass. Not with `graddrop` (its magnitude is
    not a mean over prompts). The interval covers prompt-to-prompt variation of the *estimate*, not
    the estimate's error: only `verify` measures that.

    `site="feature"` / `"feature_error"` with `dictionary=` (and `latents=`, a list or "active")
    estimates every latent and error node (Sparse Feature Circuits, Marks et al. 2024): the
    gradient at latent i is decoder row i · the gradient where the dictionary writes, so the same
    one backward serves every latent; `verify(..., dictionary=)` patches them exactly.

    The keywords not named in the signature (`heads`, `neurons`, `dictionary`, `latents`,
    `graddrop`, `check_baseline`, `progress`) are gathered in one `AttributeOptions`, which may also
    be passed as `options=`."""
    given = options_from(AttributeOptions, options, "attribute")
    graddrop, progress = given.graddrop, given.progress
    dictionary, latents = given.dictionary, given.latents
    check_baseline, ci = given.check_baseline, bootstrap.Bootstrap.of(ci)
    if ci is not None and per_prompt:
        raise ValueError(
            "ci= returns intervals computed from the per-prompt estimates, not the estimates: drop "
            "per_prompt=True (verify(..., ci=) takes the per-prompt estimates)"
        )
    if graddrop and (per_prompt or ci is not None):
        raise ValueError(
            "graddrop's magnitude (a mean over layers of |change|) is not a mean over prompts: "
            "it has no per-prompt values or interval; drop graddrop, or per_prompt / ci"
        )
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    if graddrop and method == "ig":
        raise ValueError("graddrop goes with method='atp' or 'atp*', not with integrated gradients")
    if isinstance(latents, str) and latents == "active":
        from actpatch.bases.select import active_latents  # two forwards: only for feature sites

        latents = active_latents(model, pairs, dictionary, positions)
    spec = spec_from(
        site,
        direction,
        given,
        layers=layers,
        positions=positions,
        latents=latents,
        ablation=ablation,
    )
    the_plan = plan(model, pairs, spec)
    if ablation is not None and (
        method == "ig" or (method == "atp*" and the_plan.kind in ("q", "k"))
    ):
        raise ValueError(
            f"method={method!r} needs a source run (to interpolate inputs, or to recompute softmaxes from its "
            f"q and k); ablation={ablation!r} has none: use method='atp'"
        )
    if dictionary is not None:
        from actpatch.bases.on_prompts import check_reconstruction

        check_reconstruction(model, pairs, dictionary, positions)  # warns if error nodes dominate
    checked = collect.baseline(model, pairs, check=check_baseline)
    alphas = [0.0] if method != "ig" else [i / steps for i in range(steps)]
    qk_fix = method == "atp*" and the_plan.kind in ("q", "k")
    # The softmax fix needs each affected pattern and its gradient, at every head of the layers.
    patterns = (
        [Site("pattern", l, head=h) for l in the_plan.layers for h in range(model.dims.n_heads)]
        if qk_fix
        else []
    )
    eager = the_plan.kind == "pattern" or qk_fix
    with hooks.eager_attention(model) if eager else nullcontext():
        with hooks.attention_inputs(model, the_plan.layers if qk_fix else []) as source_qk:
            source = sources.source_values(model, the_plan, the_plan.sites)
        with hooks.attention_inputs(model, the_plan.layers if qk_fix else []) as target_qk:
            target_logits, target_values, grads, dropped = _mean_gradients(
                model, pairs, the_plan, alphas, patterns, graddrop, progress
            )
        source_logits = hooks.last_logits(model, the_plan.source)
    clean_logits, corrupt_logits = (
        (source_logits, target_logits) if direction == "denoise" else (target_logits, source_logits)
    )
    base = metrics.Baseline(clean_logits, corrupt_logits, pairs.answers, pairs.wrong)
    target_diff = float(
        metrics.logit_diff(target_logits.double(), pairs.answers, pairs.wrong).mean()
    )
    clean, corrupt = float(base.clean_logit_diff.mean()), float(base.corrupt_logit_diff.mean())

    def change(s: Site, gradients: dict[Site, Tensor]) -> tuple[float, np.ndarray]:
        """The estimated change of the mean logit difference, and each prompt's share of it."""
        if qk_fix:
            return _softmax_recomputed_change(
                model,
                s,
                source_qk[s.layer],
                target_qk[s.layer],
                target_values,
                gradients,
                pairs.positions,
            )
        return _summed((source[s].double() - target_values[s].double()) * gradients[s].double())

    # The metric is the mean over prompts, so each prompt's own estimate is n × its share.
    target_per_prompt = (
        metrics.logit_diff(target_logits.double(), pairs.answers, pairs.wrong).cpu().numpy()
    )
    clean_per_prompt, corrupt_per_prompt = (
        base.clean_logit_diff.cpu().numpy(),
        base.corrupt_logit_diff.cpu().numpy(),
    )
    rows, prompt_rows = [], []
    for s in the_plan.sites:
        total, shares = change(s, grads)
        estimate = target_diff + total
        rows.append(
            {"logit_diff": estimate, "norm_logit_diff": (estimate - corrupt) / (clean - corrupt)}
        )
        own = target_per_prompt + len(pairs) * shares
        prompt_rows.append(
            {
                "logit_diff": own,
                "norm_logit_diff": (own - corrupt_per_prompt)
                / (clean_per_prompt - corrupt_per_prompt),
            }
        )
        if graddrop:
            # Kramár et al. average |ĉ_l| over the L layers and divide by L − 1.
            magnitudes = [abs(change(s, layer_grads)[0]) for layer_grads in dropped]
            rows[-1][GRADDROP_METRIC] = sum(magnitudes) / max(1, len(magnitudes) - 1)
    self_checks = {
        "target_run_error": checks.same_run_error(model, target_logits, checked, the_plan.direction)
    }
    used_steps = steps if method == "ig" else 1
    # Every forward this call ran: the baseline's clean and corrupt runs, the values to patch (the
    # source run's, or the target's to ablate), one per step, and the source run's logits; and the
    # backwards (input gradients only, about a forward each).
    forwards = 2 + 1 + len(alphas) + 1
    backwards = len(alphas) * (1 + (model.dims.n_layers if graddrop else 0))
    cost = {
        "patches": len(the_plan.sites),
        "forwards": forwards,
        "backwards": backwards,
        "forward_equivalents": forwards + backwards,
    }
    result = _assemble(model, pairs, the_plan, rows, base, method, used_steps, self_checks, cost)
    if not per_prompt and ci is None:
        return result
    per_prompt_plan = dataclasses.replace(
        the_plan, spec=dataclasses.replace(the_plan.spec, per_prompt=True)
    )
    rows_result = _assemble(
        model, pairs, per_prompt_plan, prompt_rows, base, method, used_steps, self_checks, cost
    )
    if per_prompt:
        return rows_result
    bounds = intervals_of(rows_result, ci=ci)
    bounds.loc[{"stat": "value"}] = result.transpose(
        *bounds.sel(stat="value").dims
    ).values  # the estimate itself, unrounded
    return bounds


@bootstrap.old_keywords("n_boot", "seed")
def intervals_of(
    per_prompt_estimate: xr.DataArray, *, ci: float | bootstrap.Bootstrap = bootstrap.DEFAULT
) -> xr.DataArray:
    """An estimate with its bootstrap intervals (a `stat` dimension), from `attribute(...,
    per_prompt=True)`: for keeping both the rows (for `verify(..., ci=)`) and the intervals from one
    backward pass. `value` is the ratio of means of the rows, the estimate to rounding."""
    estimated = list(per_prompt_estimate["metric"].values)
    complete = per_prompt_estimate.reindex(
        metric=list(metrics.METRICS)
    )  # the bootstrap lays out every metric
    return bootstrap.intervals(complete, ci=ci).sel(metric=estimated)


def _mean_gradients(
    model: Model,
    pairs: PromptPairs,
    the_plan: SweepPlan,
    alphas: list[float],
    extra: list[Site],
    graddrop: bool,
    progress: bool | None = None,
):
    """Target logits and activations, ∂(mean logit diff)/∂activation averaged over the interpolation
    points, and (for GradDrop) the gradients at the target with each layer's sublayers dropped."""
    embed = model.hf.get_input_embeddings()
    with torch.no_grad():
        # The first layer's input is these embeddings (plus position embeddings in GPT-2-style
        # models, added after), so a noise corruption's input noise can be added here.
        target_embeds = _noised(
            embed(the_plan.target.tokens.to(model.device)), the_plan.target.noise
        )
        source_embeds = _noised(
            embed(the_plan.source.tokens.to(model.device)), the_plan.source.noise
        )
    total: dict[Site, Tensor] = {}
    dropped: list[dict[Site, Tensor]] = []
    target_logits = target_values = None
    bar = tqdm(
        total=len(alphas) * (1 + (model.dims.n_layers if graddrop else 0)),
        desc=f"backward passes ({the_plan.kind})",
        disable=None if progress is None else not progress,
    )
    for alpha in alphas:
        inputs = (
            (target_embeds + alpha * (source_embeds - target_embeds)).detach().requires_grad_(True)
        )
        with (
            torch.enable_grad(),
            hooks.drop_gradients(model) if graddrop else nullcontext() as drop,
            hooks.watch(
                model, the_plan.sites + extra, named_positions=the_plan.target.positions
            ) as watched,
        ):
            logits = hooks.final_logits(model, inputs_embeds=inputs)
            metric = metrics.logit_diff(logits.float(), pairs.answers, pairs.wrong).mean()
            metric.backward(retain_graph=graddrop)
            bar.update()
            for s, grad in watched.grads.items():
                total[s] = total[s] + grad if s in total else grad
            for layer in range(model.dims.n_layers) if graddrop else []:
                drop.layer = layer
                metric.backward(retain_graph=layer < model.dims.n_layers - 1)
                dropped.append(dict(watched.grads))
                bar.update()
        if alpha == 0.0:
            target_logits, target_values = logits.detach().float(), watched.values
        del inputs, logits, metric, watched
    bar.close()
    mean = {s: g / len(alphas) for s, g in total.items()}
    if missing := [s for s in the_plan.sites if s not in mean]:
        raise RuntimeError(
            f"no gradient reached {missing[0]}: the metric does not depend on it through this forward"
        )
    return target_logits, target_values, mean, dropped


def _summed(product: Tensor) -> tuple[float, np.ndarray]:
    """The sum of a (batch, ...) product, and each prompt's part of it."""
    return float(product.sum()), product.reshape(product.shape[0], -1).sum(dim=1).cpu().numpy()


def _noised(embeds: Tensor, noise: Tensor | None) -> Tensor:
    return embeds if noise is None else embeds + noise.to(embeds)


def _softmax_recomputed_change(
    model: Model,
    site: Site,
    source_qk: dict,
    target_qk: dict,
    patterns: dict[Site, Tensor],
    grads: dict[Site, Tensor],
    positions,
) -> tuple[float, np.ndarray]:
    """Σ (pattern_new − pattern) · ∂metric/∂pattern over the heads a q or k patch touches.

    Replacing scores s by s + Δ turns a pattern p into softmax(log p + Δ): no mask or scaling is
    rebuilt, and positions the mask hides (p = 0) stay hidden."""
    if source_qk.get("softcap") is not None:
        raise NotImplementedError(
            "atp* does not handle attention-logit soft-capping yet; use method='atp' or 'ig'"
        )
    query, key, scaling = (
        target_qk["query"].double(),
        target_qk["key"].double(),
        target_qk["scaling"],
    )
    batch, seq = query.shape[0], query.shape[2]
    chosen = torch.zeros(
        batch, seq, dtype=torch.bool
    )  # the positions the patch replaces, per prompt
    if site.pos is None:
        chosen[:] = True
    elif isinstance(site.pos, str):
        chosen[torch.arange(batch), positions[site.pos]] = True
    else:
        chosen[:, site.pos] = True
    chosen = chosen.to(query.device).unsqueeze(-1)
    group = model.dims.n_heads // model.dims.n_kv_heads
    heads = range(site.head * group, (site.head + 1) * group) if site.kind == "k" else [site.head]
    total, shares = 0.0, np.zeros(batch)
    for h in heads:
        kv = h // group
        if site.kind == "k":
            delta_key = torch.where(chosen, source_qk["key"].double()[:, kv] - key[:, kv], 0.0)
            delta = (
                query[:, h] @ delta_key.transpose(-1, -2) * scaling
            )  # (batch, dest_pos, src_pos)
        else:
            delta_query = torch.where(chosen, source_qk["query"].double()[:, h] - query[:, h], 0.0)
            delta = delta_query @ key[:, kv].transpose(-1, -2) * scaling
        pattern_site = Site("pattern", site.layer, head=h)
        pattern = patterns[pattern_site].double()
        new = torch.softmax(torch.log(pattern) + delta, dim=-1)
        head_total, head_shares = _summed((new - pattern) * grads[pattern_site].double())
        total, shares = total + head_total, shares + head_shares
    return total, shares


def _assemble(model, pairs, the_plan, rows, base, method, steps, self_checks, cost) -> xr.DataArray:
    missing = np.full(len(pairs), np.nan) if the_plan.spec.per_prompt else np.nan
    full_rows = [{m: row.get(m, missing) for m in metrics.METRICS} for row in rows]
    graddrop = GRADDROP_METRIC in rows[0]
    result = runner.assemble(model, pairs, the_plan, full_rows, base, self_checks, engine=method)
    result.attrs["analysis"] = "attribute"
    result = result.sel(metric=list(ESTIMATED_METRICS))
    if graddrop:
        magnitudes = xr.zeros_like(result.isel(metric=[0])).assign_coords(metric=[GRADDROP_METRIC])
        magnitudes.values[0] = np.array([row[GRADDROP_METRIC] for row in rows]).reshape(
            magnitudes.shape[1:]
        )
        result = xr.concat([result, magnitudes], dim="metric", combine_attrs="override")
    result.attrs["estimate"] = {"method": method, "steps": steps}
    result.attrs["cost"] = dict(cost)
    return result

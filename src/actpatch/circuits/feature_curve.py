"""Feature circuits' faithfulness curve: the top nodes at MIB's sizes, with the error nodes kept
and with them ranked like any node, each judged exactly.

    f(C) = (m(C) − m(∅)) / (m(clean) − m(∅))     on the mean logit difference m

∅ is every node of every dictionary at its off value (the corrupt run's, or ablated): the same
∅ for both curves, so that the `kept` curve shows what the error nodes alone carry. With every
error node kept, a circuit of few latents is faithful as far as the dictionaries fail to
reconstruct what matters: its f at size 0 (`attrs["errors_alone"]`) says how far. Beside f,
`completeness` is f of the model with the circuit removed (its nodes at their off values, the
rest kept): near 0 when the circuit holds everything the behaviour needs (Marks et al. 2024).
The areas are the edge curve's (`circuits.curve`): CPR and CMD over the fraction of ranked nodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import xarray as xr

from actpatch import metrics
from actpatch.circuits.curve import MIB_PERCENTS, cpr_cmd, prompt_block, with_curve_intervals
from actpatch.circuits.evaluate import Ablation
from actpatch.circuits.feature_nodes import ERRORS, Errors, FeatureScores, all_errors, count_of
from actpatch.circuits.feature_runs import FeatureRuns, check_runs
from actpatch.engine.spec import options_from
from actpatch.models.model import Model
from actpatch.pairs import PromptPairs
from actpatch.stats import bootstrap

CURVE_METRICS = ("faithfulness", "completeness", *metrics.METRICS)


@dataclass(frozen=True)
class FeatureCurveOptions:
    """The keywords `feature_faithfulness_curve()` takes beyond the common ones."""

    chunk: int | None = None  # circuits per forward (default: from the memory budget)


def feature_faithfulness_curve(
    model: Model,
    pairs: PromptPairs,
    scores: FeatureScores,
    *,
    percents: Sequence[float] = MIB_PERCENTS,
    errors: Sequence[Errors] = ERRORS,
    absolute: bool = True,
    ablation: Ablation = None,
    runs: FeatureRuns | None = None,
    ci: float | bootstrap.Bootstrap | None = None,
    **options: Any,
) -> xr.DataArray:
    """f, completeness and every metric of the top `percents` % of nodes by `scores`, dims
    (errors, percent, metric): `errors="kept"` ranks latents only and keeps every error node in
    every circuit (the Sparse Feature Circuits convention); `"ranked"` ranks error nodes with the
    latents and patches those outside the circuit like any node. Coordinates: `n_nodes` (ranked
    nodes in each circuit, ⌊percent/100 · n_ranked⌋), `n_ranked`, and the areas `cpr` and `cmd`
    per curve (as `graph.faithfulness_curve`'s, over the fraction of ranked nodes).

    `absolute` ranks by |effect|, as edge curves do. `ablation`: what nodes outside a circuit take
    (default the corrupt run's values). `runs`: `FeatureRuns` prepared for these pairs,
    dictionaries and ablation. Every circuit of the curve, completeness's too, runs stacked in as
    few forwards as memory allows. `ci=0.95` adds a `stat` dimension (value, lo, hi) on every
    metric and `cpr_lo`... coordinates, over resampled prompts from the same forwards' per-prompt
    rows (`ci=actpatch.Bootstrap(...)` for another count or seed). `chunk` is
    `FeatureCurveOptions`."""
    given = options_from(FeatureCurveOptions, options, "feature_faithfulness_curve")
    ci = bootstrap.Bootstrap.of(ci)
    percents = [float(p) for p in percents]
    if (
        not percents
        or sorted(percents) != percents
        or len(set(percents)) != len(percents)
        or percents[0] <= 0
        or percents[-1] > 100
    ):
        raise ValueError(f"percents must be increasing sizes in (0, 100], got {percents}")
    errors = [errors] if isinstance(errors, str) else list(errors)
    if not errors or any(e not in ERRORS for e in errors) or len(set(errors)) != len(errors):
        raise ValueError(f"errors must name one or both of {ERRORS}, got {errors}")
    if runs is None:
        runs = FeatureRuns(model, pairs, scores.dictionaries, ablation, chunk=given.chunk)
    check_runs(runs, model, pairs, scores.dictionaries, ablation)
    # Every circuit the curves need, each once: ∅, then per curve the sizes, then their removals.
    circuits: list[list] = [[], all_errors(scores.dictionaries)]  # ∅, and the error nodes alone
    directions = ["denoise", "denoise"]
    laid_out = {}
    for mode in errors:
        ranked = scores.ranking(mode, absolute=absolute)
        kept = all_errors(scores.dictionaries) if mode == "kept" else []
        sizes = [count_of(len(ranked), None, p) for p in percents]
        start = len(circuits)
        circuits += [ranked[:k] + kept for k in sizes] * 2
        directions += ["denoise"] * len(sizes) + ["noise"] * len(sizes)
        laid_out[mode] = (start, sizes, len(ranked))
    logits = runs.logits(circuits, directions)
    diffs = torch.stack(
        [metrics.logit_diff(l.double(), runs.base.answers, runs.base.wrong) for l in logits]
    )  # (circuit, batch)
    empty, full = diffs[0], runs.base.clean_logit_diff.double()
    m_empty, m_full = float(empty.mean()), float(full.mean())
    curves = []
    for mode, (start, sizes, n_ranked) in laid_out.items():
        kept_logits = logits[start : start + len(sizes)]
        removed = diffs[start + len(sizes) : start + 2 * len(sizes)].mean(1)
        rows = [metrics.averaged(l, runs.base) for l in kept_logits]
        faithful = [(row["logit_diff"] - m_empty) / (m_full - m_empty) for row in rows]
        complete = ((removed - m_empty) / (m_full - m_empty)).tolist()
        curve = xr.DataArray(
            [
                [f, c, *(row[m] for m in metrics.METRICS)]
                for f, c, row in zip(faithful, complete, rows)
            ],
            dims=["percent", "metric"],
            coords={"percent": percents, "metric": list(CURVE_METRICS)},
        )
        if ci is not None:
            blocks = (
                prompt_block(runs.base, list(kept_logits), empty=empty, full=full),
                prompt_block(runs.base, list(kept_logits)),
            )
            removals = prompt_block(
                runs.base,
                list(logits[start + len(sizes) : start + 2 * len(sizes)]),
                empty=empty,
                full=full,
            )
            curve = with_curve_intervals(curve, blocks, ci, more={"completeness": removals})
        cpr, cmd = cpr_cmd(percents, faithful)
        curve = curve.expand_dims(errors=[mode]).assign_coords(
            n_nodes=(("errors", "percent"), [sizes])
        )
        areas = {"cpr": cpr, "cmd": cmd, "n_ranked": n_ranked}
        areas.update({k: v for k, v in curve.attrs.items() if k[:4] in ("cpr_", "cmd_")})
        curves.append(curve.assign_coords({k: ("errors", [v]) for k, v in areas.items()}))
    result = xr.concat(curves, dim="errors", coords="minimal", combine_attrs="drop")
    result.name = "faithfulness"
    errors_alone = (float(diffs[1].mean()) - m_empty) / (m_full - m_empty)
    result.attrs.update(
        runs.provenance(
            "denoise",
            analysis="feature_faithfulness_curve",
            percents=percents,
            absolute=int(absolute),
            ranked_by={"method": scores.method, "direction": scores.direction},
            empty_logit_diff=m_empty,
            full_logit_diff=m_full,
            errors_alone=errors_alone,
            normalisation="f = (m(C) - m(empty)) / (m(clean) - m(empty)) on the mean logit "
            "difference, empty: every node of every dictionary at its off value; completeness: f "
            "with the circuit's nodes at their off values and the rest kept; CPR, CMD: trapezoids "
            "over the fraction of ranked nodes, not divided by its length",
        )
    )
    if ci is not None:
        result.attrs["interval"] = {**curves[0].attrs["interval"], "n_prompts": len(pairs)}
    return result

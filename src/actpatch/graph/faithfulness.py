"""Faithfulness curves of scored edges: how much of the behaviour the top edges recover, by size.

    f(C) = (m(C) − m(∅)) / (m(full) − m(∅))     on the mean logit difference m

where ∅ is the empty circuit (the corrupt run, or the ablated one) and full the clean run. The
curve evaluates the top edges at MIB's sizes, {0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100} % of all
edges by default, each pruned; every metric is recorded beside f. MIB's summaries CPR and CMD, on
the axis of the *fraction* of edges, are `circuits.curve.cpr_cmd` (feature curves use them too).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import xarray as xr

from actpatch import metrics, results
from actpatch.circuits.curve import MIB_PERCENTS, cpr_cmd, with_curve_intervals
from actpatch.engine.spec import EngineName, options_from
from actpatch.graph.evaluate import Ablation, EdgeRuns, checked_engine
from actpatch.graph.nodes import EdgeError, Graph
from actpatch.graph.scores import EdgeScores
from actpatch.graph.select import top_edges
from actpatch.models.model import Model
from actpatch.pairs import PromptPairs
from actpatch.stats import bootstrap

CURVE_METRICS = ("faithfulness", *metrics.METRICS)


@dataclass(frozen=True)
class CurveOptions:
    """The keywords `faithfulness_curve()` takes beyond the common ones: how it runs. Pass them as
    keywords, or whole as `options=CurveOptions(...)`."""

    chunk: int | None = None
    check_baseline: bool = True
    engine: EngineName = "batched"


@bootstrap.old_keywords("n_boot", "boot_seed")
def faithfulness_curve(
    model: Model,
    pairs: PromptPairs,
    scores: EdgeScores,
    *,
    percents: Sequence[float] = MIB_PERCENTS,
    absolute: bool = True,
    prune: bool = True,
    ablation: Ablation | None = None,
    runs: EdgeRuns | None = None,
    ci: float | bootstrap.Bootstrap | None = None,
    **options: Any,
) -> xr.DataArray:
    """Every metric of the top `percents` % of edges by `scores`, dims (percent, metric), with the
    edges each circuit kept (`n_edges`, after pruning) as a coordinate and CPR and CMD in `attrs`.

    `ablation`: what edges outside the circuit carry (default: the corrupt run's values).
    `absolute`, `prune`: as in `top_edges`. `engine="reference"`: every circuit, the empty and the
    full one included, through the oracle path; the batched engine takes the full circuit (and, with
    the corrupt run's values, the empty one) from the baseline runs, which they equal by the rule.
    `runs`: the `EdgeRuns` the scores were computed with (same model, prompts and ablation), so the
    curve reuses their baseline and recorded outputs instead of running them again. `ci=0.95` adds a
    `stat` dimension (value, lo, hi) on every metric and CPR and CMD intervals in `attrs`, as
    `actpatch.evaluate_circuit` takes it (a level or an `actpatch.Bootstrap`): resamples of the
    prompts, from the same forwards' per-prompt rows (see `curve_intervals`). `chunk`,
    `check_baseline` and `engine` are `CurveOptions`."""
    given = options_from(CurveOptions, options, "faithfulness_curve")
    chunk, check_baseline = given.chunk, given.check_baseline
    engine, ci = checked_engine(given.engine, "faithfulness_curve"), bootstrap.Bootstrap.of(ci)
    percents = [float(p) for p in percents]
    if not percents or sorted(percents) != percents or len(set(percents)) != len(percents):
        raise ValueError(f"percents must be increasing sizes in (0, 100], got {percents}")
    circuits = [top_edges(scores, percent=p, absolute=absolute, prune=prune) for p in percents]
    if Graph.of(model).cfg != scores.graph.cfg:
        raise EdgeError(
            f"these scores are for a graph of {scores.graph.cfg}, but {model.name}'s is {Graph.of(model).cfg}: "
            "score the edges on this model"
        )
    if runs is None:
        runs = EdgeRuns.prepare(model, pairs, ablation=ablation, check_baseline=check_baseline)
    runs.check_for(model, pairs, ablation)
    stack = torch.stack([runs.graph.empty(), runs.graph.full(), *circuits])
    logits = _logits(runs, stack, chunk, engine, known_empty=ablation is None)
    rows = [metrics.averaged(l, runs.base) for l in logits]
    prompt_diffs = np.stack(
        [metrics.per_prompt(l, runs.base)["logit_diff"].double().cpu().numpy() for l in logits]
    )
    empty, full = rows[0]["logit_diff"], rows[1]["logit_diff"]
    faithful = [(row["logit_diff"] - empty) / (full - empty) for row in rows[2:]]
    cpr, cmd = cpr_cmd(percents, faithful)
    values = [[f, *(row[m] for m in metrics.METRICS)] for f, row in zip(faithful, rows[2:])]
    result = results.Result(
        values,
        dims=["percent", "metric"],
        name="faithfulness",
        coords={
            "percent": percents,
            "metric": list(CURVE_METRICS),
            "n_edges": ("percent", [int(c.sum()) for c in circuits]),
        },
    )
    result.attrs.update(
        runs.provenance(
            "faithfulness_curve",
            method=scores.method,
            percents=percents,
            absolute=absolute,
            prune=prune,
            engine=engine,
            check_baseline=check_baseline,
        )
    )
    result.attrs.update(
        cpr=cpr,
        cmd=cmd,
        method=scores.method,
        model=model.name,
        absolute=int(absolute),
        pruned=int(prune),
        ablation=ablation or "corrupt",
        n_edges_total=runs.graph.n_edges,
        n_prompts=len(pairs),
        empty_logit_diff=empty,
        full_logit_diff=full,
        # per prompt, for intervals without another forward (`curve_intervals`): empty, full, then each size
        prompt_logit_diff=prompt_diffs.ravel().tolist(),
        clean_prompt_logit_diff=runs.base.clean_logit_diff.double().cpu().tolist(),
        corrupt_prompt_logit_diff=runs.base.corrupt_logit_diff.double().cpu().tolist(),
        normalisation="f = (m(C) - m(empty)) / (m(full) - m(empty)) on the mean logit difference; "
        "CPR, CMD: trapezoids over the fraction of edges, not divided by its length",
    )
    if ci is None:
        return result
    # Every metric of every prompt is at hand here: each metric's interval, not only f's.
    sized = logits[2:]
    empty_diffs, full_diffs = torch.as_tensor(prompt_diffs[0]), torch.as_tensor(prompt_diffs[1])
    blocks = (
        runs.prompt_block(sized, empty=empty_diffs, full=full_diffs),
        runs.prompt_block(sized),
    )
    return with_curve_intervals(result, blocks, ci)


@bootstrap.old_keywords("n_boot", "seed")
def curve_intervals(
    curve: xr.DataArray, ci: float | bootstrap.Bootstrap = bootstrap.DEFAULT
) -> xr.DataArray:
    """`curve` with a `stat` dimension (value, lo, hi), and CPR and CMD intervals in `attrs`
    (`cpr_lo`, `cpr_hi`, `cmd_lo`, `cmd_hi`): prompts resampled with replacement, each resample's f
    computed from its own empty and full circuits' means, as the curve computes it.

    From the per-prompt logit differences the curve recorded: no forward, and it works on a saved
    curve. Those bound f, `logit_diff` and `norm_logit_diff`; the other metrics' bounds are NaN
    (`faithfulness_curve(..., ci=)` bounds every metric, from the forwards it runs)."""
    ci = bootstrap.Bootstrap.of(ci)
    if "stat" in curve.dims:
        raise ValueError("this curve already has intervals (a `stat` dimension)")
    if "prompt_logit_diff" not in curve.attrs:
        raise ValueError(
            "this curve has no per-prompt logit differences: compute it again with faithfulness_curve"
        )
    diffs = np.asarray(curve.attrs["prompt_logit_diff"], dtype=float).reshape(
        curve.sizes["percent"] + 2, -1
    )
    empty, full, sizes = diffs[0], diffs[1], diffs[2:]
    rows = [{"logit_diff": row} for row in sizes]
    clean = curve.attrs["clean_prompt_logit_diff"]
    corrupt = curve.attrs["corrupt_prompt_logit_diff"]
    blocks = (
        bootstrap.rows_block(rows, full, empty),  # normalised by the empty and full: f
        bootstrap.rows_block(rows, clean, corrupt),
    )
    return with_curve_intervals(curve, blocks, ci)


def _logits(
    runs: EdgeRuns, circuits: torch.Tensor, chunk: int | None, engine: str, *, known_empty: bool
) -> torch.Tensor:
    """(circuit, batch, vocab) logits; with the batched engine a circuit of every edge is the clean
    run and, when out-of-circuit values are the corrupt run's, one of no edge is the corrupt run."""
    if engine == "reference":
        return runs.logits(circuits, chunk=chunk, engine="reference")
    full = (circuits == runs.graph.exists).flatten(1).all(1)
    empty = ~circuits.flatten(1).any(1) & known_empty
    found = torch.empty(
        len(circuits), *runs.base.clean_logits.shape, dtype=runs.base.clean_logits.dtype
    )
    found[full], found[empty] = runs.base.clean_logits.cpu(), runs.base.corrupt_logits.cpu()
    if bool((rest := ~(full | empty)).any()):
        found[rest] = runs.logits(circuits[rest], chunk=chunk).to(found.dtype).cpu()
    return found

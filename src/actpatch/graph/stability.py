"""Is an edge circuit the model's or the prompts'? The top edges found again on resampled prompts
and on other prompt sets (other seeds of the task generator).

Each re-finding scores the edges on the resampled (or other) prompts and takes the top `percent`
of them, pruned, as `faithfulness_curve` does at that size: one scoring per resample. Not here: the
node-level version (`actpatch.circuits.circuit_stability`), which re-finds a frontier's circuit."""

from __future__ import annotations

import logging
from collections.abc import Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from actpatch import deprecation
from actpatch.circuits.stability import check_resamples, inclusion_table
from actpatch.graph.scores import Method, edge_scores
from actpatch.graph.select import top_edges
from actpatch.models.model import Model
from actpatch.pairs import PromptPairs

log = logging.getLogger(__name__)


@deprecation.renamed(n_boot="resamples")
def edge_stability(
    model: Model,
    pairs: PromptPairs,
    *,
    method: Method = "eap",
    percent: float = 5.0,
    resamples: int = 20,
    seed: int = 0,
    others: Sequence[PromptPairs] = (),
    steps: int = 5,
    check_baseline: bool = True,
    progress: bool | None = None,
) -> pd.DataFrame:
    """One row per edge ever chosen: how often it is in the circuit re-found on `resamples`
    bootstrap draws of `pairs` (`inclusion`; each draw costs an edge scoring, hence 20 and not
    `actpatch.Bootstrap`'s 1000 resamples of rows already computed) and on each of `others`
    (`inclusion_others`, e.g. `ap.tasks.ioi(model, n, seed=s)` for other seeds), and whether the
    full-data circuit holds it (`in_circuit`); strongest first. `attrs`: the full-data circuit's
    size, the mean Jaccard overlap of the resampled circuits with it (`mean_jaccard`) and of the
    others' (`mean_jaccard_others`). It scores the edges 1 + `resamples` + len(`others`) times,
    logged before the first; `progress` (default: on a terminal) shows a bar over them.

        table = ap.graph.edge_stability(model, pairs, method="eap", percent=2, resamples=20,
                                        others=[ap.tasks.ioi(model, 16, seed=s) for s in (1, 2)])"""
    check_resamples(resamples)

    def circuit(prompts: PromptPairs) -> frozenset[str]:
        scores = edge_scores(
            model, prompts, method, steps=steps, check_baseline=check_baseline, progress=False
        )
        return frozenset(scores.graph.names(top_edges(scores, percent=percent)))

    searches = 1 + resamples + len(others)
    other_sets = f", {len(others)} other prompt set{'s' * (len(others) != 1)}" if others else ""
    per_scoring = f" at {steps} steps each" if "ig" in method else ""
    log.info(
        "edge_stability: %d edge scorings (1 on all prompts, %d resamples%s) by %s%s",
        searches,
        resamples,
        other_sets,
        method,
        per_scoring,
    )
    rng = np.random.default_rng(seed)
    draws = [sorted(rng.integers(0, len(pairs), len(pairs)).tolist()) for _ in range(resamples)]
    with tqdm(
        total=searches,
        desc="edge circuits (full, resamples, others)",
        disable=None if progress is None else not progress,
    ) as bar:
        found = []
        for prompts in [pairs, *(pairs[d] for d in draws), *others]:
            found.append(circuit(prompts))
            bar.update()
    full, resampled, elsewhere = found[0], found[1 : 1 + resamples], found[1 + resamples :]
    table = inclusion_table("edge", full, resampled, elsewhere)
    table.attrs.update(
        {
            "method": method,
            "percent": percent,
            "n_edges": len(full),
            "resamples": resamples,
            "seed": seed,
        }
    )
    return table

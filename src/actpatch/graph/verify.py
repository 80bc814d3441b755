"""Checking edge scores where exact scores for every edge cost too much: remove the top-k edges by
|score| and a random sample of the rest exactly, one at a time, and compare.

An estimated score (EAP, EAP-IG) is m(every edge) − m(every edge but s→r) to first order; here
that difference is measured for the edges chosen (`graph/exact.py`: stacked copies resumed at
each receiver's layer), under the ablation the scores were computed with."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from actpatch.engine.verify import Verification, check_counts, top_and_sample
from actpatch.graph.evaluate import EdgeRuns
from actpatch.graph.exact import removal_logit_diffs
from actpatch.graph.nodes import EdgeError, Graph
from actpatch.graph.scores import EdgeScores
from actpatch.models.model import Model
from actpatch.pairs import PromptPairs

# One verification result for nodes and edges; the edge-level name stays for existing code.
EdgeVerification = Verification


def verify_edges(
    model: Model,
    pairs: PromptPairs,
    scores: EdgeScores,
    *,
    top_k: int = 20,
    sample: int = 20,
    seed: int = 0,
    chunk: int | None = None,
    check_baseline: bool = True,
) -> Verification:
    """Remove exactly the `top_k` edges with the largest |score| and `sample` random others (seeded),
    and compare each exact score m(all) − m(all but the edge) with its estimate.

        scores = ap.graph.edge_scores(model, pairs, "eap")
        ap.graph.verify_edges(model, pairs, scores, top_k=20)   # spearman, worst misestimates
    """
    check_counts(top_k, sample, "edges")
    if Graph.of(model).cfg != scores.graph.cfg:
        raise EdgeError(
            f"these scores are for a graph of {scores.graph.cfg}, but {model.name}'s is {Graph.of(model).cfg}: "
            "score the edges on this model"
        )
    ablation = scores.attrs.get("ablation")
    runs = EdgeRuns.prepare(
        model,
        pairs,
        ablation=None if ablation in (None, "corrupt") else ablation,
        check_baseline=check_baseline,
    )
    graph = runs.graph
    edges = graph.exists.nonzero()  # matrix order
    estimate = scores.scores[edges[:, 0], edges[:, 1]].double()
    strength = estimate.abs().nan_to_num(nan=-1.0).numpy()
    chosen = top_and_sample(strength, top_k, sample, seed)
    chosen_edges = edges[torch.as_tensor(np.asarray(chosen, dtype=np.int64))]
    removed, cost = removal_logit_diffs(runs, chosen_edges, chunk=chunk)
    full = float(runs.mean_logit_diff(runs.base.clean_logits))
    exact = (full - removed).numpy()
    estimated = estimate[torch.as_tensor(np.asarray(chosen, dtype=np.int64))].numpy()
    table = pd.DataFrame(
        {
            "edge": [graph.edge_name(int(s), int(r)) for s, r in chosen_edges],
            "estimate": estimated,
            "exact": exact,
            "in_top_k": [rank < top_k for rank in range(len(chosen))],
        }
    )
    table["error"] = table["estimate"] - table["exact"]
    shown = min(top_k, len(chosen))
    exact_top = set(np.argsort(-np.abs(exact), kind="stable")[:shown].tolist())
    recall = len(exact_top & set(range(shown))) / max(1, shown)
    table = table.reindex(
        table["error"].abs().sort_values(ascending=False, kind="stable").index
    ).reset_index(drop=True)
    work = {"forward_equivalents": round(cost.forward_equivalents, 3), "naive_forwards": cost.naive}
    return Verification(
        spearman(estimated, exact), recall, top_k, table, cost=work, checked="edges removed exactly"
    )


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation, tied values sharing their average rank (edges that change
    nothing tie exactly); NaN with fewer than two values or a constant side."""
    if len(a) < 2:
        return float("nan")
    ranks_a = pd.Series(np.asarray(a, dtype=np.float64)).rank(method="average").to_numpy()
    ranks_b = pd.Series(np.asarray(b, dtype=np.float64)).rank(method="average").to_numpy()
    if ranks_a.std() == 0 or ranks_b.std() == 0:
        return float("nan")
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])

"""Greedy circuits: grown edge by edge (or a few at a time) by the exact gain in faithfulness.

Top-n takes the n best-scored edges at once, and scores are first-order estimates made with every
edge present; growing instead evaluates, at each step, the circuit so far plus each of the
`candidates` best-scored edges not yet in it (stacked copies, `EdgeRuns.logits`), and keeps the
`step` that raise m(C) most. The cost is about (n / step) × candidates circuit evaluations, so
it is for small circuits and small models; the scores only choose which edges are tried.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from actpatch.graph.evaluate import Ablation, EdgeRuns
from actpatch.graph.nodes import EdgeError, Graph
from actpatch.graph.scores import EdgeScores
from actpatch.models.model import Model
from actpatch.pairs import PromptPairs


@dataclass
class Grown:
    """A greedily grown circuit: its (sender, receiver) bool matrix, the edges in the order they
    were added, and the faithfulness f = (m(C) − m(∅)) / (m(full) − m(∅)) after each step."""

    circuit: Tensor
    order: list[str]
    faithfulness: list[float]


def grow_circuit(
    model: Model,
    pairs: PromptPairs,
    scores: EdgeScores,
    n: int,
    *,
    candidates: int = 20,
    step: int = 1,
    absolute: bool = True,
    ablation: Ablation | None = None,
    chunk: int | None = None,
    check_baseline: bool = True,
) -> Grown:
    """A circuit of `n` edges grown from the empty one, each step adding the `step` edges (among
    the `candidates` best by |score|, or signed score without `absolute`, not yet in it) whose
    addition alone raises the mean logit difference most.

        grown = ap.graph.grow_circuit(model, pairs, scores, 20, candidates=30)
        ap.graph.evaluate(model, pairs, grown.circuit)
    """
    graph = Graph.of(model)
    if graph.cfg != scores.graph.cfg:
        raise EdgeError(
            f"these scores are for a graph of {scores.graph.cfg}, but {model.name}'s is {graph.cfg}: "
            "score the edges on this model"
        )
    for name, value, least in (("n", n, 0), ("candidates", candidates, 1), ("step", step, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < least:
            raise ValueError(f"{name} must be a whole number, {least} or more, got {value!r}")
    if n > graph.n_edges:
        raise EdgeError(f"n must be at most the graph's {graph.n_edges} edges, got {n}")
    runs = EdgeRuns.prepare(model, pairs, ablation=ablation, check_baseline=check_baseline)
    ranked = scores.scores.abs() if absolute else scores.scores.clone()
    ranked = (
        ranked.double().nan_to_num(nan=-math.inf).masked_fill(~graph.exists, -math.inf).flatten()
    )
    order = torch.sort(ranked, descending=True, stable=True).indices[: graph.n_edges]
    ends = runs.logits(torch.stack([graph.empty(), graph.full()]), chunk=chunk)
    empty, full = (float(runs.mean_logit_diff(l)) for l in ends)
    circuit = graph.empty().flatten()
    added: list[str] = []
    faithfulness: list[float] = []
    while len(added) < n:
        tried = order[~circuit[order]][:candidates]
        stack = circuit[None].repeat(len(tried), 1)
        stack[torch.arange(len(tried)), tried] = True
        logits = runs.logits(stack.view(len(tried), *graph.exists.shape), chunk=chunk)
        gains = torch.tensor([float(runs.mean_logit_diff(l)) for l in logits], dtype=torch.float64)
        chosen = torch.sort(gains, descending=True, stable=True).indices[
            : min(step, n - len(added))
        ]
        best = tried[chosen]
        circuit[best] = True
        added += [
            graph.edge_name(int(i) // graph.exists.shape[1], int(i) % graph.exists.shape[1])
            for i in best
        ]
        current = (
            float(gains[chosen[0]])
            if len(best) == 1  # that very circuit was just evaluated
            else float(
                runs.mean_logit_diff(
                    runs.logits(circuit.view(1, *graph.exists.shape), chunk=chunk)[0]
                )
            )
        )
        faithfulness.append((current - empty) / (full - empty))
    return Grown(circuit.view(graph.exists.shape).clone(), added, faithfulness)

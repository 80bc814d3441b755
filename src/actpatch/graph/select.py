"""Choosing edge circuits from scores: the top n edges (or a percent of them), pruned to what
connects the input to the logits. Not here: evaluating them (`graph/evaluate.py`)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from actpatch.graph.nodes import EdgeError, Graph
from actpatch.graph.scores import EdgeScores


def top_edges(
    scores: EdgeScores,
    n: int | None = None,
    *,
    percent: float | None = None,
    absolute: bool = True,
    prune: bool = True,
) -> Tensor:
    """The circuit of the `n` best-scored edges, or of `percent` % of all edges (as MIB counts:
    ⌊percent/100 · n_edges⌋), as a (sender, receiver) bool matrix.

    `absolute`: rank by |score| (edges that matter either way, MIB's default); otherwise by the
    signed score, largest first (edges that help the clean behaviour). `prune`: then drop edges
    that no longer lie on a path from `input` to `logits` (so the count can fall below n); with the
    corrupt run's values such edges change nothing, since a sender cut off from the input computes
    its corrupt output and a receiver that reaches no logit moves none."""
    graph = scores.graph
    count = _count(graph, n, percent)
    ranked = scores.scores.abs() if absolute else scores.scores.clone()
    # Unscored edges (NaN, e.g. from a file) rank last, like edges that do not exist.
    ranked = (
        ranked.double().nan_to_num(nan=-math.inf).masked_fill(~graph.exists, -math.inf).flatten()
    )
    circuit = torch.zeros(ranked.shape, dtype=torch.bool)
    # A stable sort, so that ties (e.g. zero scores) are broken the same way every time: by matrix order.
    circuit[torch.sort(ranked, descending=True, stable=True).indices[:count]] = True
    circuit = circuit.view(graph.exists.shape)
    return prune_circuit(graph, circuit) if prune else circuit


def prune_circuit(graph: Graph, circuit: Tensor) -> Tensor:
    """`circuit` without the edges off every path from `input` to `logits` through the circuit."""
    circuit = graph.checked(circuit).clone()
    n_senders = len(graph.senders)
    # the sender index of each receiver's node (-1: the logits)
    owner = torch.tensor(
        [
            -1 if graph.receiver_node(r) == "logits" else graph.sender(graph.receiver_node(r))
            for r in range(len(graph.receivers))
        ]
    )
    reached = torch.zeros(n_senders, dtype=torch.bool)
    reached[0] = True
    for s in range(
        1, n_senders
    ):  # senders are in forward order: everything feeding s comes before it
        reached[s] = bool(circuit[reached][:, owner == s].any())
    live = torch.zeros(n_senders + 1, dtype=torch.bool)  # last slot: the logits
    live[-1] = True
    for s in reversed(range(n_senders)):
        live[s] = bool((circuit[s] & live[owner]).any())
    return circuit & reached[:, None] & live[owner][None, :]


def nodes_in_circuit(graph: Graph, circuit: Tensor) -> dict[str, bool]:
    """Each node's membership as EAP-IG counts it: input when it sends an edge, logits always,
    any other node when it both receives and sends one."""
    circuit = graph.checked(circuit)
    receives = {name: False for name in graph.nodes}
    for r in circuit.any(0).nonzero().flatten().tolist():
        receives[graph.receiver_node(r)] = True
    sends = dict(zip(graph.senders, circuit.any(1).tolist()))
    return {
        name: name == "logits" or (sends[name] and (name == "input" or receives[name]))
        for name in graph.nodes
    }


def _count(graph: Graph, n: int | None, percent: float | None) -> int:
    if (n is None) == (percent is None):
        raise EdgeError(
            "give exactly one of n= (a number of edges) or percent= (a share of all edges, in (0, 100])"
        )
    if percent is not None:
        if (
            isinstance(percent, bool)
            or not isinstance(percent, (int, float))
            or not 0 < percent <= 100
        ):
            raise EdgeError(
                f"percent must be in (0, 100] (a share of all {graph.n_edges} edges), got {percent!r}; "
                "for a number of edges pass n= instead"
            )
        return int(percent / 100 * graph.n_edges)
    if isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= graph.n_edges:
        raise EdgeError(
            f"n must be a whole number of edges from 0 to {graph.n_edges}, got {n!r}; "
            "for a share of the edges pass percent= instead"
        )
    return n

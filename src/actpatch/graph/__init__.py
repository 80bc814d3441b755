"""Circuits as edges of the computational graph (docs/edges.md).

    nodes.py     the graph: nodes, edges and their EAP-IG names, circuits as (sender, receiver) matrices
    evaluate.py  exact evaluation of edge circuits (the clean prompt, missing edges at off values)
    scores.py    edge scores: EAP, EAP-IG on inputs or activations, clean-corrupted, exact
    select.py    top-n edges (or a percent of them), pruned to paths from input to logits
    faithfulness.py  faithfulness curves at MIB's sizes, CPR and CMD, and their bootstrap intervals
    files.py     scored graphs and circuits as EAP-IG / MIB JSON
    exact.py     one-edge removals, stacked and resumed at each receiver's layer (exact scores, verification)
    verify.py    verify_edges(): the top-k and a random sample of scored edges removed exactly
    grow.py      grow_circuit(): circuits grown greedily by the exact gain of each candidate edge
    stability.py edge_stability(): the top edges found again on resampled prompts and other prompt sets
Hooks live in `actpatch.hooks` (edges.py, edge_gradients.py, edge_removal.py).
"""

from actpatch.graph.evaluate import EdgeRuns, evaluate
from actpatch.graph.faithfulness import (
    MIB_PERCENTS,
    CurveOptions,
    cpr_cmd,
    curve_intervals,
    faithfulness_curve,
)
from actpatch.graph.files import GraphFileError, load_graph, save_graph
from actpatch.graph.grow import Grown, grow_circuit
from actpatch.graph.nodes import EdgeError, Graph
from actpatch.graph.scores import METHODS, EdgeScores, edge_scores
from actpatch.graph.select import nodes_in_circuit, prune_circuit, top_edges
from actpatch.graph.stability import edge_stability
from actpatch.graph.verify import EdgeVerification, verify_edges

__all__ = [
    "METHODS",
    "MIB_PERCENTS",
    "CurveOptions",
    "EdgeError",
    "EdgeRuns",
    "EdgeScores",
    "EdgeVerification",
    "Graph",
    "GraphFileError",
    "Grown",
    "cpr_cmd",
    "curve_intervals",
    "edge_scores",
    "edge_stability",
    "evaluate",
    "faithfulness_curve",
    "grow_circuit",
    "load_graph",
    "nodes_in_circuit",
    "prune_circuit",
    "save_graph",
    "top_edges",
    "verify_edges",
]

"""Circuits as edges of the computational graph (docs/edges.md).

    nodes.py     the graph: nodes, edges and their EAP-IG names, circuits as (sender, receiver) matrices
    evaluate.py  exact evaluation of edge circuits (the clean prompt, missing edges at off values)
    scores.py    edge scores: EAP, EAP-IG on inputs or activations, clean-corrupted, exact
"""
from actpatch.graph.evaluate import EdgeRuns, evaluate
from actpatch.graph.nodes import EdgeError, Graph
from actpatch.graph.scores import METHODS, EdgeScores, edge_scores

__all__ = ["METHODS", "EdgeError", "EdgeRuns", "EdgeScores", "Graph", "edge_scores", "evaluate"]

"""Circuits as edges of the computational graph (docs/edges.md).

    nodes.py     the graph: nodes, edges and their EAP-IG names, circuits as (sender, receiver) matrices
    evaluate.py  exact evaluation of edge circuits (the clean prompt, missing edges at off values)
"""
from actpatch.graph.evaluate import EdgeRuns, evaluate
from actpatch.graph.nodes import EdgeError, Graph

__all__ = ["EdgeError", "EdgeRuns", "Graph", "evaluate"]

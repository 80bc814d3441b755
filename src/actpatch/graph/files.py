"""Scored graphs and circuits on disk, in the JSON that EAP-IG's `Graph.to_json` writes and MIB reads:

    {"cfg": {"n_layers": 2, "n_heads": 4, "parallel_attn_mlp": false, "d_model": 32},
     "nodes": {"input": {"in_graph": true}, "a0.h0": {"in_graph": false}, ..., "logits": {"in_graph": true}},
     "edges": {"input->a0.h0<q>": {"score": 0.12, "in_graph": true}, ...}}

A node is in the graph as EAP-IG counts it (`select.nodes_in_circuit`). Reading checks the sizes
against the model's and every edge's name, so a file for another model is refused, not misread.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import Tensor

from actpatch.atomic import write_text
from actpatch.graph.nodes import EdgeError, Graph
from actpatch.graph.scores import EdgeScores
from actpatch.graph.select import nodes_in_circuit
from actpatch.models.model import Model


class GraphFileError(ValueError):
    """A graph file that cannot be read for this model; the message says why and what to do."""


def save_graph(path: str | os.PathLike, scores: EdgeScores, circuit: Tensor | None = None) -> Path:
    """Write `scores` (and which edges `circuit` holds; none if omitted) as EAP-IG/MIB JSON."""
    graph = scores.graph
    circuit = graph.empty() if circuit is None else graph.checked(circuit)
    nodes = {
        name: {"in_graph": bool(inside)}
        for name, inside in nodes_in_circuit(graph, circuit).items()
    }
    edges = {
        graph.edge_name(s, r): {
            "score": float(scores.scores[s, r]),
            "in_graph": bool(circuit[s, r]),
        }
        for s, r in graph.exists.nonzero().tolist()
    }
    return write_text(path, json.dumps({"cfg": graph.cfg, "nodes": nodes, "edges": edges}))


def load_graph(path: str | os.PathLike, model: Model) -> tuple[EdgeScores, Tensor]:
    """The scores and the circuit (`in_graph` flags) stored at `path`, for `model`'s graph."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise GraphFileError(f"{path}: no such file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise GraphFileError(
            f"{path} is not JSON ({error}); expected a graph written by save_graph or EAP-IG's Graph.to_json"
        ) from None
    if not isinstance(data, dict) or not {"cfg", "edges"} <= set(data):
        raise GraphFileError(
            f"{path} has no 'cfg' and 'edges': it is not a graph file (EAP-IG's Graph.to_json writes them)"
        )
    graph = Graph.of(model)
    cfg = data["cfg"] if isinstance(data["cfg"], dict) else {}
    theirs = {key: cfg.get(key) for key in graph.cfg}
    if theirs != graph.cfg:
        raise GraphFileError(
            f"{path} is the graph of a model with {theirs}, but {model.name} has {graph.cfg}: "
            "score the edges on this model, or load the model the file was made for"
        )
    scores = torch.zeros(graph.exists.shape, dtype=torch.float64)
    circuit = graph.empty()
    for name, entry in data["edges"].items():
        try:
            s, r = graph.edge(name)
        except EdgeError as error:
            raise GraphFileError(f"{path}: {error}") from None
        if not isinstance(entry, dict) or "score" not in entry:
            raise GraphFileError(
                f"{path}: edge {name} has no score; each edge is {{'score': float, 'in_graph': bool}}"
            )
        scores[s, r] = float(entry["score"]) if entry["score"] is not None else float("nan")
        circuit[s, r] = bool(entry.get("in_graph", False))
    if missing := graph.n_edges - len(data["edges"]):
        raise GraphFileError(
            f"{path} lists {len(data['edges'])} edges of the {graph.n_edges} this graph has "
            f"({missing} missing): write every edge, as Graph.to_json does"
        )
    return EdgeScores(graph, scores, method=f"file:{Path(path).name}"), circuit

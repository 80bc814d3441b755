"""Every analysis's result says what made it, the same way: the model and a fingerprint of its
weights, the prompts (task, seed, corruption, text, count), the package versions and the
analysis's name, as `results.provenance` writes them, and the self-checks it ran.

Edge circuits' self-checks are the edge path's own no-op patches (every edge kept is the clean
run; none kept, the corrupt run); verify's are the sweeps' checks on the sites it patched."""

from __future__ import annotations

import dataclasses
import math

import pytest

import actpatch as ap
from actpatch import graph, results
from random_dictionaries import random_dictionary
from tiny import tiny_task

# What `results.provenance` records from the model and the prompts, whatever the analysis.
PROVENANCE = (
    "model",
    "model_source",
    "weights_fingerprint",
    "task",
    "seed",
    "corruption",
    "n_prompts",
    "seq_len",
    "clean_prompts",
    "corrupt_prompts",
    "versions",
)

HEADS = [ap.Site("head", 1, head=0), ap.Site("head", 0, head=1)]


def _edge_scores(model, pairs):
    return graph.edge_scores(model, pairs, "eap")


def _feature_scores(model, pairs):
    return ap.feature_scores(model, pairs, [random_dictionary(model, "resid_post", "resid_post")])


ANALYSES = {  # the analysis: how to make its result
    "sweep": lambda model, pairs: ap.sweep(model, pairs, "head"),
    "attribute": lambda model, pairs: ap.attribute(model, pairs, "head"),
    "verify": lambda model, pairs: ap.verify(
        model, pairs, ap.attribute(model, pairs, "head"), top_k=2, sample=1
    ),
    "patch_paths": lambda model, pairs: ap.patch_paths(model, pairs, HEADS[1], ["logits"]),
    "sweep_paths": lambda model, pairs: ap.sweep_paths(model, pairs, ["logits"], layers=[0]),
    "evaluate_circuit": lambda model, pairs: ap.evaluate_circuit(model, pairs, HEADS[:1]),
    "pareto_frontier": lambda model, pairs: ap.pareto_frontier(model, pairs, HEADS),
    "minimality": lambda model, pairs: ap.minimality(model, pairs, HEADS),
    "backup": lambda model, pairs: ap.backup(model, pairs, HEADS[1], candidates=HEADS[:1]),
    "find_circuit": lambda model, pairs: ap.find_circuit(model, pairs, recovery=0.5, max_size=2),
    "edge_scores": _edge_scores,
    "edge_evaluate": lambda model, pairs: graph.evaluate(
        model, pairs, graph.top_edges(_edge_scores(model, pairs), n=5)
    ),
    "faithfulness_curve": lambda model, pairs: graph.faithfulness_curve(
        model, pairs, _edge_scores(model, pairs)
    ),
    "evaluate_feature_circuit": lambda model, pairs: ap.evaluate_feature_circuit(
        model, pairs, ap.top_features(_feature_scores(model, pairs), 3)
    ),
    "feature_faithfulness_curve": lambda model, pairs: ap.feature_faithfulness_curve(
        model, pairs, _feature_scores(model, pairs)
    ),
}
# The name each result records: its function's, where that is not the key.
NAMES = {**{a: a for a in ANALYSES}, "edge_evaluate": "graph.evaluate"}


@pytest.fixture(scope="module")
def made():
    """The tiny LLaMA and its pairs, labelled as a task generator labels its own: every value
    provenance copies from the prompts is one an analysis could get wrong."""
    model, pairs = tiny_task("llama")
    labelled = dataclasses.replace(
        pairs,
        task="tiny",
        seed=7,
        corruption="random tokens",
        clean_text=("c0", "c1", "c2"),
        corrupt_text=("x0", "x1", "x2"),
    )
    return model, labelled


@pytest.mark.parametrize("analysis", ANALYSES)
def test_every_analysis_records_the_same_provenance_and_its_self_checks(made, analysis):
    model, pairs = made
    attrs = getattr(ANALYSES[analysis](model, pairs), "attrs", {})
    want = results.provenance(model, pairs, analysis=attrs.get("analysis"))
    assert attrs.get("analysis") == NAMES[analysis]
    assert {key: attrs.get(key) for key in PROVENANCE} == {key: want[key] for key in PROVENANCE}
    checks, tolerance = attrs.get("self_checks"), attrs.get("self_check_tolerance")
    assert checks and tolerance, "no self-checks recorded"
    assert all(math.isfinite(error) and abs(error) <= tolerance for error in checks.values()), (
        checks
    )

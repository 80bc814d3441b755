"""Circuits: sets of components judged as a whole, and the guards against the classic mistakes.

    evaluate.py     a circuit's performance with everything else ablated (or with it knocked out)
    frontier.py     rankings, the Pareto frontier of circuit size against performance
    minimality.py   each member's removal: passengers
    backup.py       components that compensate when another is ablated
    directions.py   denoising beside noising: sufficient, necessary, OR-like, AND-like
    sensitivity.py  components whose effect depends on the corruption
    plot.py         the frontier as a plotly figure (plotly imported only there)
    resume.py       patched runs resumed at their first patched layer (backup's fast path)
    stability.py    the circuit re-found on resampled prompts (circuit_stability)
    search.py       find_circuit: sweep, frontier, smallest circuit, minimality in one call
    curve.py        faithfulness curves' areas (CPR, CMD) and intervals, shared with edge curves
    feature_nodes.py  feature circuits' nodes (dictionary latents, error nodes): scored, chosen, re-chosen
    feature_runs.py   feature circuits evaluated exactly, many stacked per forward
    feature_curve.py  the feature circuit's faithfulness curve, error nodes kept and ranked
Path patching, which these build on for direct effects, is `actpatch.engine.paths`."""

from actpatch.circuits.backup import backup, backup_report
from actpatch.circuits.components import EMBED, components
from actpatch.circuits.directions import label_directions
from actpatch.circuits.evaluate import evaluate
from actpatch.circuits.feature_curve import FeatureCurveOptions, feature_faithfulness_curve
from actpatch.circuits.feature_nodes import (
    FeatureScores,
    feature_circuit_stability,
    feature_scores,
    top_features,
)
from actpatch.circuits.feature_runs import FeatureRuns, evaluate_feature_circuit
from actpatch.circuits.frontier import pareto_frontier, ranking, reached_surely, smallest_circuit
from actpatch.circuits.minimality import minimality
from actpatch.circuits.plot import plot_frontier
from actpatch.circuits.search import CircuitSearch, SearchOptions, find_circuit
from actpatch.circuits.sensitivity import sensitivity_report
from actpatch.circuits.stability import circuit_stability

__all__ = [
    "EMBED",
    "CircuitSearch",
    "FeatureCurveOptions",
    "FeatureRuns",
    "FeatureScores",
    "SearchOptions",
    "backup",
    "backup_report",
    "circuit_stability",
    "components",
    "evaluate",
    "evaluate_feature_circuit",
    "feature_circuit_stability",
    "feature_faithfulness_curve",
    "feature_scores",
    "find_circuit",
    "label_directions",
    "minimality",
    "pareto_frontier",
    "plot_frontier",
    "ranking",
    "reached_surely",
    "sensitivity_report",
    "smallest_circuit",
    "top_features",
]

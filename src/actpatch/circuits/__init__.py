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
Path patching, which these build on for direct effects, is `actpatch.engine.paths`."""

from actpatch.circuits.backup import backup, backup_report
from actpatch.circuits.components import EMBED, components
from actpatch.circuits.directions import label_directions
from actpatch.circuits.evaluate import evaluate
from actpatch.circuits.frontier import pareto_frontier, ranking, reached_surely, smallest_circuit
from actpatch.circuits.minimality import minimality
from actpatch.circuits.plot import plot_frontier
from actpatch.circuits.search import CircuitSearch, SearchOptions, find_circuit
from actpatch.circuits.sensitivity import sensitivity_report
from actpatch.circuits.stability import circuit_stability

__all__ = [
    "EMBED",
    "CircuitSearch",
    "SearchOptions",
    "backup",
    "backup_report",
    "circuit_stability",
    "components",
    "evaluate",
    "find_circuit",
    "label_directions",
    "minimality",
    "pareto_frontier",
    "plot_frontier",
    "ranking",
    "reached_surely",
    "sensitivity_report",
    "smallest_circuit",
]

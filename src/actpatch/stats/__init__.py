"""How sure is this? Uncertainty of patching results, from their per-prompt rows (no extra forwards).

    bootstrap.py   intervals(): every metric with a bootstrap interval over prompts
    compare.py     compare(): two sweeps over the same prompts, site by site, paired, with a false-discovery control
    budget.py      enough_prompts(): how an interval narrows with more prompts, and how many a width needs
docs/uncertainty.md says what is resampled and how to read each. They read results only, and
every analysis's intervals come from them, so they sit below the engines. Re-finding a circuit on
resampled prompts runs the model: `actpatch.circuits.circuit_stability`, beside
`actpatch.graph.edge_stability` (`stats.circuit_stability` is its old, deprecated spelling)."""

import importlib
import warnings
from typing import Any

from actpatch import caller
from actpatch.stats.bootstrap import NotPerPrompt, intervals
from actpatch.stats.budget import EnoughPrompts, enough_prompts
from actpatch.stats.compare import benjamini_hochberg, compare

__all__ = [
    "EnoughPrompts",
    "NotPerPrompt",
    "benjamini_hochberg",
    "compare",
    "enough_prompts",
    "intervals",
]


def __getattr__(name: str) -> Any:
    """The old spelling `stats.circuit_stability`, for one release (imported on use: circuits sit
    above stats, so stats may not import them)."""
    if name == "circuit_stability":
        warnings.warn(
            "actpatch.stats.circuit_stability is deprecated and will be removed in the next release: use "
            "actpatch.circuits.circuit_stability",
            DeprecationWarning,
            stacklevel=caller.stacklevel(),
        )
        return importlib.import_module("actpatch.circuits.stability").circuit_stability
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""How sure is this? Uncertainty of patching results, from their per-prompt rows (no extra forwards).

    bootstrap.py   intervals(): every metric with a bootstrap interval over prompts
    compare.py     compare(): two sweeps over the same prompts, site by site, paired, with a false-discovery control
    budget.py      enough_prompts(): how an interval narrows with more prompts, and how many a width needs
    stability.py   circuit_stability(): how often each component is in the circuit found on resampled prompts
docs/uncertainty.md says what is resampled and how to read each."""
from actpatch.stats.bootstrap import NotPerPrompt, intervals
from actpatch.stats.budget import EnoughPrompts, enough_prompts
from actpatch.stats.compare import benjamini_hochberg, compare
from actpatch.stats.stability import circuit_stability

__all__ = ["EnoughPrompts", "NotPerPrompt", "benjamini_hochberg", "circuit_stability", "compare", "enough_prompts", "intervals"]

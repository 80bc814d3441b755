"""actpatch: activation patching for Hugging Face causal language models.

    import actpatch as ap
    model = ap.load_model()                     # the embedded SmolLM2-135M-Instruct, offline
    pairs = ap.ioi_pairs(model)                 # the classic aligned IOI batch (ap.tasks.ioi for more)
    res = ap.sweep(model, pairs, "resid_pre", direction="denoise")
    res.sel(metric="norm_logit_diff")           # layer × pos, tokens as coordinates
    ap.report.show(res)                         # a plotly figure of it

Names are imported on first use (PEP 562), not by `import actpatch`: torch and transformers take
seconds to import, and the command line must answer `--help` or a mistyped flag without them.
`from actpatch import sweep` and `ap.sweep` work as if everything had been imported up front."""

from __future__ import annotations

import importlib
import importlib.util
from typing import Any

# Public name -> (module, attribute in it); attribute None: the name is the module itself.
_EXPORTS: dict[str, tuple[str, str | None]] = {
    # Sweeps, attribution and their checks.
    "sweep": ("actpatch.engine.sweep", "sweep"),
    "sweep_corruptions": ("actpatch.sensitivity", "sweep_corruptions"),
    "attribute": ("actpatch.engine.attribution", "attribute"),
    "SweepOptions": ("actpatch.engine.spec", "SweepOptions"),
    "AttributeOptions": ("actpatch.engine.spec", "AttributeOptions"),
    "verify": ("actpatch.engine.verify", "verify"),
    "Bootstrap": ("actpatch.stats.bootstrap", "Bootstrap"),
    "Verification": ("actpatch.engine.verify", "Verification"),
    "BaselineError": ("actpatch.engine.collect", "BaselineError"),
    "CheckpointMismatch": ("actpatch.engine.checkpoint", "CheckpointMismatch"),
    "SweepOutOfMemory": ("actpatch.engine.batched", "SweepOutOfMemory"),
    "ShardFailed": ("actpatch.engine.shards", "ShardFailed"),
    "UnshippableModel": ("actpatch.engine.shards", "UnshippableModel"),
    # Hooks, by hand.
    "capture": ("actpatch.hooks", "capture"),
    "patch": ("actpatch.hooks", "patch"),
    "attached_hooks": ("actpatch.hooks", "attached_hooks"),
    "PatchNotApplied": ("actpatch.hooks", "PatchNotApplied"),
    "PatchShapeError": ("actpatch.hooks", "PatchShapeError"),
    # Models.
    "load_model": ("actpatch.models.load", "load_model"),
    "Model": ("actpatch.models.model", "Model"),
    "CorruptCheckpoint": ("actpatch.models.load", "CorruptCheckpoint"),
    "ModelNotFound": ("actpatch.models.load", "ModelNotFound"),
    "UnsupportedArchitecture": ("actpatch.models.arch", "UnsupportedArchitecture"),
    # Dictionaries (SAEs, transcoders): their latents and error nodes are sites.
    "load_dictionary": ("actpatch.bases.load", "load_dictionary"),
    "Dictionary": ("actpatch.bases.dictionary", "Dictionary"),
    "DictionaryError": ("actpatch.bases.dictionary", "DictionaryError"),
    "embedded_dictionary": ("actpatch.embedded", "embedded_dictionary"),
    # Prompts, tasks and corruptions.
    "PromptPairs": ("actpatch.pairs", "PromptPairs"),
    "Run": ("actpatch.run", "Run"),
    "PairsError": ("actpatch.pairs", "PairsError"),
    "tasks": ("actpatch.tasks", None),
    "ioi_pairs": ("actpatch.tasks.ioi", "ioi_pairs"),
    "symmetric_token_replacement": ("actpatch.corrupt", "symmetric_token_replacement"),
    "gaussian_noise": ("actpatch.noise", "gaussian_noise"),
    # Sites and metrics.
    "Site": ("actpatch.sites", "Site"),
    "SiteError": ("actpatch.sites", "SiteError"),
    "SITE_KINDS": ("actpatch.sites", "SITE_KINDS"),
    "METRICS": ("actpatch.metrics", "METRICS"),
    "Baseline": ("actpatch.metrics", "Baseline"),
    "NonFiniteError": ("actpatch.metrics", "NonFiniteError"),
    # Results and pictures of them.
    "Result": ("actpatch.results", "Result"),
    "save": ("actpatch.results", "save"),
    "load": ("actpatch.results", "load"),
    "report": ("actpatch.report", None),
    # Path patching and circuits.
    "patch_paths": ("actpatch.engine.paths", "patch_paths"),
    "sweep_paths": ("actpatch.engine.paths", "sweep_paths"),
    "all_receivers": ("actpatch.engine.paths", "all_receivers"),
    "circuits": ("actpatch.circuits", None),
    "backup": ("actpatch.circuits", "backup"),
    "backup_report": ("actpatch.circuits", "backup_report"),
    "evaluate_circuit": ("actpatch.circuits", "evaluate"),
    "find_circuit": ("actpatch.circuits", "find_circuit"),
    "CircuitSearch": ("actpatch.circuits", "CircuitSearch"),
    "label_directions": ("actpatch.circuits", "label_directions"),
    "minimality": ("actpatch.circuits", "minimality"),
    "pareto_frontier": ("actpatch.circuits", "pareto_frontier"),
    "sensitivity_report": ("actpatch.circuits", "sensitivity_report"),
    "smallest_circuit": ("actpatch.circuits", "smallest_circuit"),
    # Feature circuits: dictionary latents and error nodes as the circuit's nodes.
    "feature_scores": ("actpatch.circuits", "feature_scores"),
    "FeatureScores": ("actpatch.circuits", "FeatureScores"),
    "top_features": ("actpatch.circuits", "top_features"),
    "evaluate_feature_circuit": ("actpatch.circuits", "evaluate_feature_circuit"),
    "feature_faithfulness_curve": ("actpatch.circuits", "feature_faithfulness_curve"),
    "feature_circuit_stability": ("actpatch.circuits", "feature_circuit_stability"),
    # Subspaces: patch part of a site, learn that part, check it.
    "Subspace": ("actpatch.bases.subspace", "Subspace"),
    "patch_subspace": ("actpatch.subspace.patching", "patch_subspace"),
    "das": ("actpatch.subspace.das", "das"),
    "DASResult": ("actpatch.subspace.result", "DASResult"),
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    """Import a public name on first use; a submodule (`ap.metrics`, `ap.hooks`) as `import` would."""
    if name in _EXPORTS:
        module, attribute = _EXPORTS[name]
        value = importlib.import_module(module)
        if attribute is not None:
            value = getattr(value, attribute)
    elif not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})

"""actpatch: activation patching for Hugging Face causal language models.

    import actpatch as ap
    model = ap.load_model()                     # the embedded SmolLM2-135M-Instruct, offline
    pairs = ap.ioi_pairs(model)                 # the classic aligned IOI batch (ap.tasks.ioi for more)
    res = ap.sweep(model, pairs, "resid_pre", direction="denoise")
    res.sel(metric="norm_logit_diff")           # layer × pos, tokens as coordinates
"""
from actpatch.corrupt import symmetric_token_replacement
from actpatch.engine.attribution import attribute
from actpatch.engine.checkpoint import CheckpointMismatch
from actpatch.engine.collect import BaselineError
from actpatch.engine.sweep import sweep
from actpatch.engine.verify import Verification, verify
from actpatch.hooks import PatchNotApplied, PatchShapeError, attached_hooks, capture, patch
from actpatch.metrics import METRICS, Baseline, NonFiniteError
from actpatch.models.arch import UnsupportedArchitecture
from actpatch.engine.batched import SweepOutOfMemory
from actpatch.engine.shards import ShardFailed, UnshippableModel
from actpatch.models.load import CorruptCheckpoint, ModelNotFound, load_model
from actpatch.models.model import Model
from actpatch.noise import gaussian_noise
from actpatch.pairs import PairsError, PromptPairs
from actpatch.results import load, save
from actpatch.sensitivity import sweep_corruptions
from actpatch.sites import SITE_KINDS, Site, SiteError
from actpatch import tasks
from actpatch.tasks.ioi import ioi_pairs

__all__ = [
    "METRICS", "SITE_KINDS", "Baseline", "BaselineError", "CheckpointMismatch", "gaussian_noise", "symmetric_token_replacement", "Verification", "attribute", "verify", "Model", "PairsError", "PatchNotApplied", "PatchShapeError",
    "PromptPairs", "Site", "SiteError", "UnsupportedArchitecture", "attached_hooks", "capture",
    "ioi_pairs", "tasks", "load", "load_model", "patch", "save", "sweep", "sweep_corruptions",
    "CorruptCheckpoint", "ModelNotFound", "NonFiniteError", "SweepOutOfMemory",
    "ShardFailed", "UnshippableModel",
]

# Path patching and circuits (actpatch.engine.paths, actpatch.circuits).
from actpatch import circuits
from actpatch.circuits import backup, backup_report, label_directions, minimality, pareto_frontier, sensitivity_report, smallest_circuit
from actpatch.circuits import evaluate as evaluate_circuit
from actpatch.engine.paths import all_receivers, patch_paths, sweep_paths

__all__ += [
    "all_receivers", "backup", "backup_report", "circuits", "evaluate_circuit", "label_directions", "minimality",
    "pareto_frontier", "patch_paths", "sensitivity_report", "smallest_circuit", "sweep_paths",
]

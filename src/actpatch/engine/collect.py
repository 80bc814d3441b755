"""What every engine does around its patched forwards: baselines, metric rows, labelled results.

Engines differ only in how they produce patched logits; everything they report goes through here,
so their results are laid out, labelled and provenanced identically."""
from __future__ import annotations

from typing import Any

import torch
import xarray as xr

from actpatch import metrics, results
from actpatch.engine.plan import SweepPlan
from actpatch.models.model import Model
from actpatch.pairs import PromptPairs


def baseline(model: Model, pairs: PromptPairs) -> metrics.Baseline:
    """The unpatched clean and corrupt runs: the two ends of every normalised metric."""
    return metrics.Baseline(
        clean_logits=model.last_logits(pairs.clean),
        corrupt_logits=model.last_logits(pairs.corrupt),
        answers=pairs.answers,
        wrong=pairs.wrong,
    )


def row(logits: torch.Tensor, base: metrics.Baseline, *, per_prompt: bool) -> dict[str, Any]:
    """One patched run's metrics: averaged floats, or per-prompt arrays."""
    if per_prompt:
        return {k: v.cpu().numpy() for k, v in metrics.per_prompt(logits, base).items()}
    return metrics.averaged(logits, base)


def finish(
    model: Model,
    pairs: PromptPairs,
    plan: SweepPlan,
    rows: list[dict[str, Any]],
    base: metrics.Baseline,
    self_checks: dict[str, float],
    *,
    engine: str,
    per_prompt: bool,
) -> xr.DataArray:
    """Lay `rows` (in `plan.sites` order) out as a labelled result with its provenance."""
    return results.assemble(
        rows,
        plan.sites,
        layers=plan.layers,
        units=plan.units,
        positions=plan.positions,
        pos_tokens=_pos_tokens(model, pairs, plan.positions),
        n_prompts=len(pairs) if per_prompt else None,
        provenance={
            "model": model.name,
            "model_source": model.provenance,
            "site": plan.kind,
            "direction": plan.direction,
            "engine": engine,
            "attention": model.hf.config._attn_implementation,  # "actpatch_eager" for pattern sweeps
            "n_prompts": len(pairs),
            "corruption": pairs.corruption or "",
            "clean_prompts": list(pairs.clean_text or []),
            "corrupt_prompts": list(pairs.corrupt_text or []),
            "baseline_clean": metrics.averaged(base.clean_logits, base),
            "baseline_corrupt": metrics.averaged(base.corrupt_logits, base),
            "self_checks": self_checks,
            "versions": results.versions(),
        },
    )


def _pos_tokens(model: Model, pairs: PromptPairs, positions) -> dict[str, list[str]]:
    """The first prompt's clean and corrupt token at each swept position, for labels."""
    if positions == [None]:
        return {}

    def at(ids, p):
        index = int(pairs.positions[p][0]) if isinstance(p, str) else p
        return model.token_strings(ids[0, index : index + 1])[0]

    return {"clean_token": [at(pairs.clean, p) for p in positions], "corrupt_token": [at(pairs.corrupt, p) for p in positions]}

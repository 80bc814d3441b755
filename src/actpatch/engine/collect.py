"""What every engine does around its patched forwards: baselines, metric rows, labelled results.

Engines differ only in how they produce patched logits; everything they report goes through here,
so their results are laid out, labelled and provenanced identically."""
from __future__ import annotations

import logging
from typing import Any

import torch
import xarray as xr

from actpatch import hooks, metrics, results
from actpatch.engine import checks
from actpatch.engine.plan import SweepPlan
from actpatch.models.model import Model
from actpatch.pairs import PromptPairs

log = logging.getLogger(__name__)


class BaselineError(ValueError):
    """The model does not do the task on these prompts, so every normalised number would be noise."""


def baseline(model: Model, pairs: PromptPairs, *, check: bool = True) -> metrics.Baseline:
    """The unpatched clean and corrupt runs: the two ends of every normalised metric.

    With `check`, refuse prompts on which the clean run does not beat the corrupt one: the
    normalised metric divides by that gap, so a sweep would only measure noise."""
    with hooks.add_to_input(model, pairs.corrupt_noise):
        corrupt_logits = model.last_logits(pairs.corrupt)
    base = metrics.Baseline(model.last_logits(pairs.clean), corrupt_logits, pairs.answers, pairs.wrong)
    refuse_non_finite(model, base)  # whatever `check` says: a NaN baseline makes every number NaN
    clean, corrupt = float(base.clean_logit_diff.mean()), float(base.corrupt_logit_diff.mean())
    log.info("baseline logit difference: clean %.3f, corrupt %.3f", clean, corrupt)
    if check:
        refuse_unsolved(model.name, clean, corrupt)
    if check and (failing := int((base.clean_logit_diff <= base.corrupt_logit_diff).sum())) > len(pairs) // 4:
        log.warning("on %d of %d prompts the clean logit difference is not above the corrupt one", failing, len(pairs))
    return base


def refuse_non_finite(model: Model, base: metrics.Baseline) -> None:
    """Raise `NonFiniteError` naming the cause when an unpatched run's logits hold NaN or inf."""
    broken = [run for run, logits in (("clean", base.clean_logits), ("corrupt", base.corrupt_logits))
              if not bool(torch.isfinite(logits).all())]
    if not broken:
        return
    runs = " and ".join(broken)
    bad = [name for name, weights in model.hf.named_parameters() if not bool(torch.isfinite(weights).all())]
    if bad:
        raise metrics.NonFiniteError(
            f"{model.name} gives NaN or inf logits on the {runs} prompts because {len(bad)} of its weight tensors hold "
            f"NaN or inf (first: {bad[0]}): the checkpoint is damaged or was saved after a diverged update. "
            "Reload the model from a good checkpoint."
        )
    raise metrics.NonFiniteError(
        f"{model.name} gives NaN or inf logits on the {runs} prompts although its weights are finite: its activations "
        f"overflow in {next(model.hf.parameters()).dtype}, or the embedding noise is too large. Load the model in "
        "bfloat16 or float32 (float16 stops at ±65504)."
    )


def refuse_unsolved(model_name: str, clean: float, corrupt: float) -> None:
    """Raise `BaselineError` unless the mean clean logit difference is above the corrupt one."""
    if not clean > corrupt:
        raise BaselineError(
            f"{model_name} does not perform the task on these prompts: mean logit difference (answer − wrong) is "
            f"{clean:.3f} on clean and {corrupt:.3f} on corrupt, and a sweep needs clean above corrupt. Check that "
            "answers and wrong answers are the right way round and single tokens with their leading space, or pass "
            "check_baseline=False to sweep anyway (normalised metrics will not mean anything)."
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
            "seq_len": pairs.seq_len,
            "corruption": pairs.corruption or "",
            "source": plan.ablation or ("clean" if plan.direction == "denoise" else "corrupt"),
            "clean_prompts": list(pairs.clean_text or []),
            "corrupt_prompts": list(pairs.corrupt_text or []),
            "baseline_clean": metrics.averaged(base.clean_logits, base),
            "baseline_corrupt": metrics.averaged(base.corrupt_logits, base),
            "self_checks": self_checks,
            "self_check_tolerance": checks.tolerance(next(model.hf.parameters()).dtype),
            "versions": results.versions(),
        },
    )


def _pos_tokens(model: Model, pairs: PromptPairs, positions) -> dict[str, list]:
    """Labels for each swept position: the first prompt's clean and corrupt token there, the
    position's name where every prompt has that name at that index (`pos_name`), and the index
    where a named position sits at the same index in every prompt (`pos_index`, else -1)."""
    if positions == [None]:
        return {}

    def at(ids, p):
        index = int(pairs.positions[p][0]) if isinstance(p, str) else p
        return model.token_strings(ids[0, index : index + 1])[0]

    def name(p) -> str:
        if isinstance(p, str):
            return p
        return "/".join(n for n, where in pairs.positions.items() if bool((where == p).all()))

    def index(p) -> int:
        if not isinstance(p, str):
            return p
        where = pairs.positions[p]
        return int(where[0]) if bool((where == where[0]).all()) else -1

    return {
        "clean_token": [at(pairs.clean, p) for p in positions],
        "corrupt_token": [at(pairs.corrupt, p) for p in positions],
        "pos_name": [name(p) for p in positions],
        "pos_index": [index(p) for p in positions],
    }

"""Self-checks that run inside every sweep, at the cost of a few forwards.

A no-op patch (the target's own activation) must leave the target metric unchanged, and a full
patch (resid_pre of layer 0 at every position, i.e. the whole source input) must reproduce the
source metric. Either failing means the hooks patch the wrong thing, and every number is suspect."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from actpatch.engine import sources
from actpatch.engine.plan import SweepPlan
from actpatch.metrics import Baseline, logit_diff
from actpatch.models.model import Model
from actpatch.sites import Site

# float32 forwards through a deep model differ by ~1e-6 relative between batched and unbatched
# kernels; 1e-3 of the clean−corrupt gap is far below any effect worth reporting.
TOLERANCE = 1e-3
# 16-bit weights carry less: bfloat16 rounds to 8 significant bits (2^-8 ≈ 4e-3 relative per
# operation), and on the tiny test models its normalised effects differ from float32's by up to
# ~7e-3 (float16: ~1e-3). A check tighter than the numbers themselves would fail on rounding, not
# on a misplaced hook, which moves the metric by a large part of the gap (tests/test_precision.py).
LOW_PRECISION_TOLERANCE = {torch.bfloat16: 3e-2, torch.float16: 1e-2}


def tolerance(dtype: torch.dtype) -> float:
    """The self-checks' bound, as a fraction of the clean−corrupt gap, for weights in `dtype`."""
    return LOW_PRECISION_TOLERANCE.get(dtype, TOLERANCE)


class SelfCheckFailed(RuntimeError):
    """A sweep's built-in consistency check failed: the patching machinery is not doing what it says."""


def run(
    model: Model,
    plan: SweepPlan,
    baseline: Baseline,
    patched_logits: Callable[[dict[Site, Tensor]], Tensor],
) -> dict[str, float]:
    """Run both checks through the engine's own `patched_logits`; return their errors as fractions
    of the clean−corrupt logit-difference gap, or raise `SelfCheckFailed`.

    An ablation source has no run to compare a full patch with, so only the no-op check runs then."""
    gap = float((baseline.clean_logit_diff - baseline.corrupt_logit_diff).abs().mean())
    bound = tolerance(next(model.hf.parameters()).dtype)
    scale = gap if gap > 0 else 1.0
    denoise = plan.direction == "denoise"
    target_logits = baseline.corrupt_logits if denoise else baseline.clean_logits
    source_logits = baseline.clean_logits if denoise else baseline.corrupt_logits
    answers, wrong = baseline.answers, baseline.wrong
    site = plan.sites[0]
    noop = patched_logits(sources.target_values(model, plan, [site]))

    def error(logits: Tensor, want: Tensor) -> float:
        return (
            float(
                (logit_diff(logits, answers, wrong) - logit_diff(want, answers, wrong)).abs().max()
            )
            / scale
        )

    errors = {"noop_patch_error": error(noop, target_logits)}
    if plan.ablation is None:
        errors["full_patch_error"] = error(
            patched_logits(sources.source_values(model, plan, [sources.WHOLE_INPUT])), source_logits
        )
    if errors["noop_patch_error"] > bound:
        raise SelfCheckFailed(
            f"patching {site} with the target run's own activation moved the logit difference by "
            f"{errors['noop_patch_error']:.2e} of the clean−corrupt gap; the hook for {site.kind} writes the wrong place."
        )
    if errors.get("full_patch_error", 0.0) > bound:
        raise SelfCheckFailed(
            f"patching the whole source input (resid_pre of layer 0) left the logit difference "
            f"{errors['full_patch_error']:.2e} of the gap away from the source run's; positions or "
            "inputs differ between the runs in a way patching cannot see (e.g. an attention mask)."
        )
    return errors


def same_run_error(model: Model, logits: Tensor, baseline: Baseline, direction: str) -> float:
    """How far `logits`, an analysis's own unpatched target run (attribution's forward from input
    embeddings, a circuit's run with everything kept), is from the baseline's target run, as a
    fraction of the clean−corrupt gap; raises `SelfCheckFailed` over the tolerance.

    It is the no-op patch of an analysis that does not patch through hooks: its own way of running
    the model must give the model's own numbers before its estimates mean anything."""
    answers, wrong = baseline.answers, baseline.wrong
    want = baseline.corrupt_logits if direction == "denoise" else baseline.clean_logits
    gap = float((baseline.clean_logit_diff - baseline.corrupt_logit_diff).abs().mean())
    error = float(
        (logit_diff(logits.double(), answers, wrong) - logit_diff(want.double(), answers, wrong))
        .abs()
        .max()
    )
    error /= gap if gap > 0 else 1.0
    if error > tolerance(next(model.hf.parameters()).dtype):
        raise SelfCheckFailed(
            f"the unpatched {direction} target run, as this analysis runs it, is {error:.2e} of the "
            "clean−corrupt gap away from the model's own run: its inputs differ (e.g. input noise lost)"
        )
    return error

"""Self-checks that run inside every sweep, at the cost of a few forwards.

A no-op patch (the target's own activation) must leave the target metric unchanged, and a full
patch (resid_pre of layer 0 at every position, i.e. the whole source input) must reproduce the
source metric. Either failing means the hooks patch the wrong thing, and every number is suspect."""
from __future__ import annotations

from actpatch import hooks
from actpatch.metrics import Baseline, logit_diff
from actpatch.models.model import Model
from actpatch.pairs import PromptPairs
from actpatch.sites import Site

# float32 forwards through a deep model differ by ~1e-6 relative between batched and unbatched
# kernels; 1e-3 of the clean−corrupt gap is far below any effect worth reporting.
TOLERANCE = 1e-3


class SelfCheckFailed(RuntimeError):
    """A sweep's built-in consistency check failed: the patching machinery is not doing what it says."""


def run(model: Model, pairs: PromptPairs, site: Site, source, target, baseline: Baseline) -> dict[str, float]:
    """Run both checks; return their errors as fractions of the clean−corrupt logit-difference gap."""
    gap = float((baseline.clean_logit_diff - baseline.corrupt_logit_diff).abs().mean())
    scale = gap if gap > 0 else 1.0
    target_is_clean = target is pairs.clean
    target_logits = baseline.clean_logits if target_is_clean else baseline.corrupt_logits
    source_logits = baseline.corrupt_logits if target_is_clean else baseline.clean_logits
    answers, wrong = baseline.answers, baseline.wrong

    own = hooks.capture(model, target, [site], positions=pairs.positions)
    with hooks.patch(model, own, positions=pairs.positions):
        noop = model.last_logits(target)
    first = Site("resid_pre", 0)
    whole_source = hooks.capture(model, source, [first])
    with hooks.patch(model, whole_source):
        full = model.last_logits(target)

    errors = {
        "noop_patch_error": float((logit_diff(noop, answers, wrong) - logit_diff(target_logits, answers, wrong)).abs().max()) / scale,
        "full_patch_error": float((logit_diff(full, answers, wrong) - logit_diff(source_logits, answers, wrong)).abs().max()) / scale,
    }
    if errors["noop_patch_error"] > TOLERANCE:
        raise SelfCheckFailed(
            f"patching {site} with the target run's own activation moved the logit difference by "
            f"{errors['noop_patch_error']:.2e} of the clean−corrupt gap; the hook for {site.kind} writes the wrong place."
        )
    if errors["full_patch_error"] > TOLERANCE:
        raise SelfCheckFailed(
            f"patching the whole source input (resid_pre of layer 0) left the logit difference "
            f"{errors['full_patch_error']:.2e} of the gap away from the source run's; positions or "
            "inputs differ between the runs in a way patching cannot see (e.g. an attention mask)."
        )
    return errors

"""Where a sweep's patched values come from: the other run, or an ablation of the target's own.

Every engine and the self-checks get their values here, so a noise corruption's input noise and
the ablation sources (zero, mean, resample) mean the same thing in each of them."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor

from actpatch import hooks
from actpatch.engine.plan import SweepPlan
from actpatch.metrics import NonFiniteError
from actpatch.models.model import Model
from actpatch.pairs import PromptPairs
from actpatch.sites import Site

RESAMPLE_SEED = 0  # fixed, and recorded in the result's provenance


def target_values(model: Model, pairs: PromptPairs, plan: SweepPlan, sites: Sequence[Site]) -> dict[Site, Tensor]:
    """Each site's activation in the unpatched target run."""
    with hooks.add_to_input(model, plan.target_noise):
        return hooks.capture(model, plan.target, sites, positions=pairs.positions)


def source_values(model: Model, pairs: PromptPairs, plan: SweepPlan, sites: Sequence[Site]) -> dict[Site, Tensor]:
    """The value each site is patched with: the source run's activation, or the ablation of the
    target's own that `plan.ablation` names. Refuses NaN or inf values (`NonFiniteError`), which
    would turn that site's row of the result into NaN."""
    values = _values(model, pairs, plan, sites)
    if bad := [s for s, v in values.items() if not bool(torch.isfinite(v).all())]:
        raise NonFiniteError(
            f"the {plan.ablation or 'source'} values to patch hold NaN or inf at {len(bad)} site(s), first {bad[0]}: "
            f"the {'reference prompts' if plan.reference is not None else 'source run'} overflowed in "
            f"{next(model.hf.parameters()).dtype} or its input noise is not finite. Load the model in bfloat16 or float32."
        )
    return values


def _values(model: Model, pairs: PromptPairs, plan: SweepPlan, sites: Sequence[Site]) -> dict[Site, Tensor]:
    if plan.ablation is None:
        with hooks.add_to_input(model, plan.source_noise):
            return hooks.capture(model, plan.source, sites, positions=pairs.positions)
    own = target_values(model, pairs, plan, sites)
    if plan.ablation == "zero":
        return {s: torch.zeros_like(v) for s, v in own.items()}
    if plan.ablation == "resample":
        order = derangement(len(pairs), RESAMPLE_SEED)
        return {s: v[order] for s, v in own.items()}
    if plan.reference is None:
        # Named positions were gathered prompt by prompt, so this averages each role (e.g. S2) over prompts.
        return {s: v.mean(0, keepdim=True).expand_as(v).clone() for s, v in own.items()}
    reference = hooks.capture(model, plan.reference.clean, sites, positions=plan.reference.positions)
    return {s: reference[s].mean(0, keepdim=True).expand_as(v).clone() for s, v in own.items()}


def derangement(n: int, seed: int) -> Tensor:
    """A seeded permutation of 0..n-1 that moves every index: each prompt takes another's value."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n, generator=generator)
        if not bool((order == torch.arange(n)).any()):
            return order

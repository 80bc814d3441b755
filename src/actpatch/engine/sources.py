"""Where patched values come from: the other run, or an ablation of the target's own.

Every engine, the self-checks and the circuits get their values here, so a noise corruption's
input noise and the ablations (zero, mean, resample) mean the same thing in each of them."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from actpatch import hooks
from actpatch.engine.plan import SweepPlan
from actpatch.engine.spec import ABLATIONS, Ablation
from actpatch.metrics import NonFiniteError
from actpatch.models.model import Model
from actpatch.pairs import PromptPairs
from actpatch.run import Run
from actpatch.sites import Site

RESAMPLE_SEED = 0  # fixed, and recorded in the result's provenance


# What the full-patch self-check writes: the whole source input (engine/checks.py).
WHOLE_INPUT = Site("resid_pre", 0)


def captured(model: Model, run: Run, sites: Sequence[Site]) -> dict[Site, Tensor]:
    """Each site's activation in `run` (its input noise included), from one forward."""
    with hooks.add_to_input(model, run.noise):
        return hooks.capture(model, run.tokens, sites, named_positions=run.positions)


def recorded(
    model: Model, plan: SweepPlan, *, record_target: bool = False
) -> tuple[SweepPlan, Tensor, Tensor]:
    """The baseline's two forwards, each capturing what the sweep will read from its run: `plan`
    with those values in `plan.captured`, and the clean and corrupt final-position logits.
    `record_target`: the target's forward also records its layer calls and key/value cache, in
    `plan.recorded_target`, for an engine that resumes copies from them.

    Without this, the patch values and both self-checks' values each took a forward of their own
    (four more forwards per sweep direction), and the batched engine recorded the target again;
    the values are the same, bit for bit."""
    source_sites = [] if plan.ablation is not None else [*plan.sites, WHOLE_INPUT]
    found: dict[tuple[str, Site], Tensor] = {}
    logits: dict[str, Tensor] = {}
    target_recording = None
    for role, run, sites in (
        ("source", plan.source, source_sites),
        ("target", plan.target, plan.sites),
    ):
        unique = list(dict.fromkeys(sites))
        if role == "target" and record_target:
            with hooks.recording(model) as (target_recording, cache):
                values, logits[role] = hooks.capture_with_logits(model, run, unique, cache=cache)
        else:
            values, logits[role] = hooks.capture_with_logits(
                model, run, unique
            )  # a Run: its noise and positions
        found.update({(role, site): value for site, value in values.items()})
    clean, corrupt = (
        (logits["source"], logits["target"])
        if plan.direction == "denoise"
        else (logits["target"], logits["source"])
    )
    return (
        dataclasses.replace(plan, captured=found, recorded_target=target_recording),
        clean,
        corrupt,
    )


def _run_values(
    model: Model, plan: SweepPlan, role: str, sites: Sequence[Site]
) -> dict[Site, Tensor]:
    """Each site's activation in the plan's `role` run ("source" or "target"): from the baseline's
    forward where `recorded` captured it, else from a forward now."""
    if all((role, site) in plan.captured for site in sites):
        return {site: plan.captured[(role, site)] for site in sites}
    return captured(model, plan.source if role == "source" else plan.target, sites)


def target_values(model: Model, plan: SweepPlan, sites: Sequence[Site]) -> dict[Site, Tensor]:
    """Each site's activation in the unpatched target run."""
    return _run_values(model, plan, "target", sites)


def source_values(model: Model, plan: SweepPlan, sites: Sequence[Site]) -> dict[Site, Tensor]:
    """The value each site is patched with: the source run's activation, or the ablation of the
    target's own that `plan.ablation` names. Refuses NaN or inf values (`NonFiniteError`), which
    would turn that site's row of the result into NaN."""
    if plan.ablation is None:
        values = _run_values(model, plan, "source", sites)
    else:
        own = target_values(model, plan, sites)
        mean_over = (
            None if plan.mean_over is None else captured(model, plan.mean_over.clean_run, sites)
        )
        values = ablate(own, plan.ablation, mean_over=mean_over)
    if bad := [s for s, v in values.items() if not bool(torch.isfinite(v).all())]:
        raise NonFiniteError(
            f"the {plan.ablation or 'source'} values to patch hold NaN or inf at {len(bad)} site(s), first {bad[0]}: "
            f"the {'mean_over prompts' if plan.mean_over is not None else 'source run'} overflowed in "
            f"{next(model.hf.parameters()).dtype} or its input noise is not finite. Load the model in bfloat16 or float32."
        )
    return values


def ablate(
    values: Mapping[Site, Tensor],
    ablation: Ablation,
    *,
    mean_over: Mapping[Site, Tensor] | None = None,
) -> dict[Site, Tensor]:
    """`values` (batch first) knocked out: zeroed, replaced by their mean over the prompts (or over
    `mean_over`'s values), or resampled (each prompt takes another prompt's value).

    The one definition of an ablation: sweeps, attribution and circuits all call it."""
    if ablation not in ABLATIONS:
        raise ValueError(f"ablation must be one of {ABLATIONS}, got {ablation!r}")
    if ablation == "zero":
        return {s: torch.zeros_like(v) for s, v in values.items()}
    if ablation == "resample":
        order = derangement(next(iter(values.values())).shape[0], RESAMPLE_SEED)
        return {s: v[order] for s, v in values.items()}
    # Named positions were gathered prompt by prompt, so this averages each role (e.g. S2) over prompts.
    averaged = values if mean_over is None else mean_over
    return {s: averaged[s].mean(0, keepdim=True).expand_as(v).clone() for s, v in values.items()}


def check_ablation(ablation: Ablation | None, pairs: PromptPairs, none_means: str) -> None:
    """Refuse an ablation that is not one of ABLATIONS (None: `none_means`), and a resample of a
    single prompt, which has no other prompt to take a value from."""
    if ablation is not None and ablation not in ABLATIONS:
        raise ValueError(
            f"ablation must be one of {ABLATIONS} or None ({none_means}), got {ablation!r}"
        )
    if ablation == "resample" and len(pairs) < 2:
        raise ValueError(
            "ablation='resample' takes each prompt's value from another prompt: it needs at least 2 prompts"
        )


def derangement(n: int, seed: int) -> Tensor:
    """A seeded permutation of 0..n-1 that moves every index: each prompt takes another's value."""
    generator = torch.Generator().manual_seed(seed)
    while True:
        order = torch.randperm(n, generator=generator)
        if not bool((order == torch.arange(n)).any()):
            return order

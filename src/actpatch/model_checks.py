"""Checks that patching works on a model, before trusting any sweep on it: what `actpatch check` runs.

Every sweep already runs two self-checks at its own site; this runs them at every site kind, through
both engines, and adds one the sweeps cannot: the head sum. Each check comes back with its error and
whether it passed, rather than raising at the first failure, so that a new architecture-table
entry shows everything that is wrong with it at once.

- *no-op patch*: patching a site with the target run's own activation must change nothing.
- *full patch*: patching the whole source input (resid_pre of layer 0) must reproduce the source run.
- *head sum*: every head's z, each pushed alone through the output projection, sums to the
  attention output (less the projection's bias): the `head` site is the projection's input split
  where the heads are.
- *hooks removed*: no hook is left on the model afterwards."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from actpatch import hooks
from actpatch.engine.checks import SelfCheckFailed, tolerance
from actpatch.engine.sweep import ENGINES, sweep
from actpatch.models.model import Model
from actpatch.pairs import PromptPairs
from actpatch.sites import SITE_KINDS, Site, unit_dim

log = logging.getLogger(__name__)

# Relative error allowed for the head sum: float32 sums of a few products differ by ~1e-7
# relative; half-precision weights round each term to ~1e-3.
HEAD_SUM_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-10}
HALF_HEAD_SUM_TOLERANCE = 1e-2


@dataclass(frozen=True)
class Check:
    """One check's outcome. `error` is in the check's own unit (see `unit`); None if it could not run."""

    name: str
    engine: str  # "batched", "reference", or "-" for checks that patch nothing
    error: float | None
    tolerance: float
    unit: str
    passed: bool
    detail: str = ""


def check_model(model: Model, pairs: PromptPairs, *, progress: bool | None = None) -> list[Check]:
    """Run every check on `model` with `pairs` (any prompts: the model need not solve the task)."""
    hooks_before = hooks.attached_hooks(model)
    kinds = [
        k for k in SITE_KINDS if not (k == "resid_mid" and model.arch.is_parallel(model.hf.config))
    ]
    found: list[Check] = []
    runs = [(kind, engine) for engine in ENGINES for kind in kinds]
    for kind, engine in tqdm(
        runs, desc="self-checks", disable=None if progress is None else not progress
    ):
        found.extend(_sweep_checks(model, pairs, kind, engine, full_patch=kind == kinds[0]))
    found.extend(_head_sums(model, pairs))
    left = hooks.attached_hooks(model) - hooks_before
    found.append(
        Check(
            "hooks removed afterwards",
            "-",
            float(left),
            0.0,
            "hooks",
            left == 0,
            "" if left == 0 else f"{left} hooks left attached",
        )
    )
    return found


def _sweep_checks(
    model: Model, pairs: PromptPairs, kind: str, engine: str, *, full_patch: bool
) -> list[Check]:
    """A one-site sweep of `kind` at the last layer and position; its self-checks, as `Check`s.

    The full patch is the same patch (resid_pre of layer 0) for every kind, so it is reported once."""
    last = model.dims.n_layers - 1
    unit = unit_dim(kind)
    options = dict(
        layers=[last],
        positions=[pairs.seq_len - 1],
        engine=engine,
        check_baseline=False,
        progress=False,
        heads=[0] if unit in ("head", "kv_head") else None,
        neurons=[0] if unit == "neuron" else None,
    )
    site = Site(
        kind,
        last,
        head=0 if unit in ("head", "kv_head") else None,
        neuron=0 if unit == "neuron" else None,
        pos=pairs.seq_len - 1,
    )
    noop, full = f"no-op patch at {site}", "full patch (resid_pre of layer 0 at every position)"
    unit_name = "of the clean-corrupt gap"
    bound = tolerance(
        next(model.hf.parameters()).dtype
    )  # what the sweep itself holds the checks to
    try:
        errors = sweep(model, pairs, kind, **options).attrs["self_checks"]
    except SelfCheckFailed as failure:
        which = noop if "target run's own activation" in str(failure) else full
        log.warning("%s (%s engine) failed: %s", which, engine, failure)
        return [Check(which, engine, None, bound, unit_name, False, str(failure))]
    found = [
        Check(
            noop,
            engine,
            errors["noop_patch_error"],
            bound,
            unit_name,
            errors["noop_patch_error"] <= bound,
        )
    ]
    if full_patch:
        found.append(
            Check(
                full,
                engine,
                errors["full_patch_error"],
                bound,
                unit_name,
                errors["full_patch_error"] <= bound,
            )
        )
    return found


@torch.no_grad()
def _head_sums(model: Model, pairs: PromptPairs) -> list[Check]:
    """Per layer: Σ_h o_proj(z_h alone) − bias, against the attention output less the bias."""
    d, tokens = model.dims, pairs.clean.to(model.device)
    heads = [Site("head", layer, head=h) for layer in range(d.n_layers) for h in range(d.n_heads)]
    outputs = [Site("attn_out", layer) for layer in range(d.n_layers)]
    captured = hooks.capture(model, tokens, heads + outputs)
    dtype = next(model.hf.parameters()).dtype
    tolerance = HEAD_SUM_TOLERANCE.get(dtype, HALF_HEAD_SUM_TOLERANCE)
    worst, where = 0.0, 0
    for layer in range(d.n_layers):
        o_proj = model.submodule(layer, model.arch.o_proj)
        bias = o_proj.bias if getattr(o_proj, "bias", None) is not None else 0.0
        total = 0.0
        for h in range(d.n_heads):
            alone = torch.zeros(
                *tokens.shape, d.n_heads * d.d_head, dtype=dtype, device=model.device
            )
            alone[..., h * d.d_head : (h + 1) * d.d_head] = captured[Site("head", layer, head=h)]
            total = total + o_proj(alone) - bias
        attn_out = captured[Site("attn_out", layer)]
        if model.arch.o_proj.startswith(model.arch.attn + "."):
            want, got = attn_out - bias, total
        else:  # attention's output passes through a module of its own (Gemma 3's post-norm) before the residual stream
            want, got = attn_out, model.submodule(layer, model.arch.attn)(total + bias)
        error = float(
            (got.double() - want.double()).abs().max() / want.double().abs().max().clamp_min(1e-30)
        )
        if error > worst:
            worst, where = error, layer
    name = f"head sum: each head's z through {model.arch.o_proj}, summed, equals the attention output less bias"
    detail = f"worst at layer {where}"
    return [Check(name, "-", worst, tolerance, "relative", worst <= tolerance, detail)]

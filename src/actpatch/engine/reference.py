"""Reference engine: one patch per forward pass, in the plainest code we can write.

Every faster engine is tested against this one, so it stays slow and obvious."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Sequence

import torch
import xarray as xr
from tqdm.auto import tqdm

from actpatch import hooks
from actpatch.engine import checks, collect, sources
from actpatch.engine.plan import Ablation, Direction, Positions, plan
from actpatch.models.model import Model
from actpatch.pairs import PromptPairs


@torch.no_grad()
def sweep(
    model: Model,
    pairs: PromptPairs,
    site: str,
    *,
    direction: Direction = "denoise",
    layers: Sequence[int] | None = None,
    positions: Positions = None,
    heads: Sequence[int] | None = None,
    neurons: Sequence[int] | None = None,
    per_prompt: bool = False,
    progress: bool | None = None,
    ablation: Ablation | None = None,
    reference: PromptPairs | None = None,
    check_baseline: bool = True,
) -> xr.DataArray:
    """Patch each site of a kind, one forward at a time, and measure every metric."""
    the_plan = plan(model, pairs, site, direction=direction, layers=layers, positions=positions, heads=heads,
                    neurons=neurons, ablation=ablation, reference=reference)
    # Pattern patches run under our eager attention, so the baselines they are measured against must
    # too: in bfloat16, eager and sdpa attention differ by more than the self-checks allow.
    with hooks.eager_attention(model) if the_plan.kind == "pattern" else nullcontext():
        base = collect.baseline(model, pairs, check=check_baseline)

        def patched_logits(values):
            with hooks.add_to_input(model, the_plan.target_noise), hooks.patch(model, values, positions=pairs.positions):
                return model.last_logits(the_plan.target)

        self_checks = checks.run(model, pairs, the_plan, base, patched_logits)
        cache = sources.source_values(model, pairs, the_plan, the_plan.sites)
        rows = []
        for s in tqdm(the_plan.sites, desc=f"{direction} {the_plan.kind}", disable=None if progress is None else not progress):
            rows.append(collect.row(patched_logits({s: cache[s]}), base, per_prompt=per_prompt))
        result = collect.finish(model, pairs, the_plan, rows, base, self_checks, engine="reference", per_prompt=per_prompt)
    result.attrs["cost"] = {"patches": len(the_plan.sites), "forward_equivalents": float(len(the_plan.sites))}
    return result

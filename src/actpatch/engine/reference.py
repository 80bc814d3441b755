"""Reference engine: one patch per forward pass, in the plainest code we can write.

Every faster engine is tested against this one, so it stays slow and obvious."""
from __future__ import annotations

from typing import Sequence

import torch
import xarray as xr
from tqdm.auto import tqdm

from actpatch import hooks, metrics, results
from actpatch.engine import checks
from actpatch.engine.plan import Direction, Positions, SweepPlan, plan
from actpatch.models.model import Model
from actpatch.pairs import PromptPairs


def sweep(
    model: Model,
    pairs: PromptPairs,
    site: str,
    *,
    direction: Direction | Sequence[Direction] = "denoise",
    layers: Sequence[int] | None = None,
    positions: Positions = None,
    heads: Sequence[int] | None = None,
    neurons: Sequence[int] | None = None,
    per_prompt: bool = False,
    progress: bool | None = None,
) -> xr.DataArray:
    """Patch each site of a kind, one forward at a time, and measure every metric.

    `direction="denoise"` writes clean activations into the corrupt run (which sites are
    *sufficient*); `"noise"` writes corrupt ones into the clean run (which are *necessary*); a list
    of both adds a `direction` dimension. `positions`: "each" (one patch per position; the default
    for residual sites), "all" (every position at once; the default for per-head and neuron sites),
    or a list of indices and named positions. `progress=None` shows a bar only on a terminal."""
    if not isinstance(direction, str):
        parts = [sweep(model, pairs, site, direction=d, layers=layers, positions=positions, heads=heads,
                       neurons=neurons, per_prompt=per_prompt, progress=progress) for d in direction]
        return xr.concat(parts, dim="direction", combine_attrs="drop_conflicts").assign_coords(direction=list(direction))
    the_plan = plan(model, pairs, site, direction=direction, layers=layers, positions=positions, heads=heads, neurons=neurons)
    with torch.no_grad():
        return _run(model, pairs, the_plan, per_prompt=per_prompt, progress=progress)


def _run(model: Model, pairs: PromptPairs, the_plan: SweepPlan, *, per_prompt: bool, progress: bool | None) -> xr.DataArray:
    baseline = metrics.Baseline(
        clean_logits=model.last_logits(pairs.clean),
        corrupt_logits=model.last_logits(pairs.corrupt),
        answers=pairs.answers,
        wrong=pairs.wrong,
    )
    self_checks = checks.run(model, pairs, the_plan.sites[0], the_plan.source, the_plan.target, baseline)
    cache = hooks.capture(model, the_plan.source, the_plan.sites, positions=pairs.positions)
    rows = []
    bar = tqdm(the_plan.sites, desc=f"{the_plan.direction} {the_plan.kind}", disable=None if progress is None else not progress)
    for site in bar:
        with hooks.patch(model, {site: cache[site]}, positions=pairs.positions):
            logits = model.last_logits(the_plan.target)
        if per_prompt:
            rows.append({k: v.cpu().numpy() for k, v in metrics.per_prompt(logits, baseline).items()})
        else:
            rows.append(metrics.averaged(logits, baseline))
    return results.assemble(
        rows,
        the_plan.sites,
        layers=the_plan.layers,
        units=the_plan.units,
        positions=the_plan.positions,
        pos_tokens=_pos_tokens(model, pairs, the_plan.positions),
        n_prompts=len(pairs) if per_prompt else None,
        provenance=_provenance(model, pairs, the_plan, baseline, self_checks),
    )


def _pos_tokens(model: Model, pairs: PromptPairs, positions) -> dict[str, list[str]]:
    """The first prompt's clean and corrupt token at each swept position, for labels."""
    def at(ids, p):
        index = int(pairs.positions[p][0]) if isinstance(p, str) else p
        return model.token_strings(ids[0, index : index + 1])[0]
    if positions == [None]:
        return {}
    return {"clean_token": [at(pairs.clean, p) for p in positions], "corrupt_token": [at(pairs.corrupt, p) for p in positions]}


def _provenance(model, pairs, the_plan, baseline, self_checks) -> dict:
    clean = metrics.averaged(baseline.clean_logits, baseline)
    corrupt = metrics.averaged(baseline.corrupt_logits, baseline)
    return {
        "model": model.name,
        "model_source": model.provenance,
        "site": the_plan.kind,
        "direction": the_plan.direction,
        "engine": "reference",
        "n_prompts": len(pairs),
        "clean_prompts": list(pairs.clean_text or []),
        "corrupt_prompts": list(pairs.corrupt_text or []),
        "baseline_clean": clean,
        "baseline_corrupt": corrupt,
        "self_checks": self_checks,
        "versions": results.versions(),
    }

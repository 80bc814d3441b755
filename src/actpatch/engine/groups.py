"""Sweeps over prompts of different token lengths: one sweep per length group, combined exactly.

A batch needs one length, and padding would shift positions (or need masks that patching must
then respect), so prompts are grouped by length instead and the groups are swept at *named*
positions (`S2`, `END`), which mean the same role in every group. Combining is exact: every
metric is a mean over prompts, and the normalised logit difference is recomputed from the pooled
means, as one batch of all prompts would give."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import xarray as xr

from actpatch.engine import collect
from actpatch.engine.spec import SweepSpec
from actpatch.metrics import METRICS
from actpatch.models.model import Model
from actpatch.pairs import PromptPairs
from actpatch.sites import SiteError, default_positions, parse_kind


def sweep_groups(
    run: Callable[[PromptPairs, SweepSpec], xr.DataArray],
    model: Model,
    groups: Sequence[PromptPairs],
    spec: SweepSpec,
) -> xr.DataArray:
    """`run(group, spec)` (one engine's sweep) on each group, laid out as one sweep over all their prompts."""
    groups = list(groups) if isinstance(groups, (list, tuple)) else [groups]
    if not groups or not all(isinstance(g, PromptPairs) for g in groups):
        got = type(groups[0]).__name__ if groups else "an empty list"
        raise TypeError(
            f"pairs must be PromptPairs, or a non-empty list of them (one per token length); got {got}"
        )
    positions = (
        default_positions(parse_kind(spec.site)[0]) if spec.positions is None else spec.positions
    )
    if len(groups) > 1:
        _check_named(positions)
    bases = [collect.baseline(model, g, check=False) for g in groups]
    total = sum(len(g) for g in groups)
    clean = sum(float(b.clean_logit_diff.sum()) for b in bases) / total
    corrupt = sum(float(b.corrupt_logit_diff.sum()) for b in bases) / total
    if spec.check_baseline:
        collect.refuse_unsolved(model.name, clean, corrupt)
    each = spec.replace(positions=positions, per_prompt=True, check_baseline=False)
    parts = [run(g, each) for g in groups]
    # Token labels on `pos` are the first group's; each group's own prompts are in the provenance.
    pooled = xr.concat(
        parts, dim="batch", coords="minimal", compat="override", combine_attrs="override"
    )
    pooled = pooled.assign_coords(batch=list(range(total)))
    if (
        "pos_index" in pooled.coords
    ):  # a named position's index is one number only if every group agrees
        indices = [part["pos_index"].values for part in parts]
        agreed = [int(column[0]) if len(set(column)) == 1 else -1 for column in zip(*indices)]
        pooled = pooled.assign_coords(pos_index=("pos", agreed))
    pooled.attrs.update(_pooled_attrs(parts, [len(g) for g in groups]))
    if spec.per_prompt:
        return pooled
    averaged = pooled.mean("batch", keep_attrs=True)
    averaged.attrs.pop("per_prompt_baseline_logit_diff", None)
    averaged.loc[{"metric": "norm_logit_diff"}] = (averaged.sel(metric="logit_diff") - corrupt) / (
        clean - corrupt
    )
    return averaged.transpose("metric", ...)


def _check_named(positions) -> None:
    listed = [positions] if isinstance(positions, (str, int)) else positions
    if positions == "each" or (positions != "all" and any(not isinstance(p, str) for p in listed)):
        raise SiteError(
            f"positions={positions!r}: in prompts of different lengths an index means a different token in each group; "
            "sweep named positions (e.g. positions=['S2', 'END']) or 'all'"
        )


def _pooled_attrs(parts: list[xr.DataArray], sizes: list[int]) -> dict[str, Any]:
    total = sum(sizes)

    def weighted(key: str) -> dict[str, float]:
        return {m: sum(p.attrs[key][m] * n for p, n in zip(parts, sizes)) / total for m in METRICS}

    checks = [p.attrs["self_checks"] for p in parts]
    cost = [p.attrs.get("cost", {}) for p in parts]
    return {
        "n_prompts": total,
        "group_sizes": sizes,
        "group_lengths": [int(p.attrs.get("seq_len", 0)) for p in parts],
        "baseline_clean": weighted("baseline_clean"),
        "baseline_corrupt": weighted("baseline_corrupt"),
        "self_checks": {k: max(c[k] for c in checks) for k in checks[0]},
        "per_prompt_baseline_logit_diff": {
            run: [v for p in parts for v in p.attrs["per_prompt_baseline_logit_diff"][run]]
            for run in ("clean", "corrupt")
        },
        "clean_prompts": [t for p in parts for t in p.attrs["clean_prompts"]],
        "corrupt_prompts": [t for p in parts for t in p.attrs["corrupt_prompts"]],
        "cost": {
            k: sum(c.get(k, 0) for c in cost)
            for k in ("patches", "forward_equivalents", "patches_from_checkpoint")
        },
    }

"""Is the circuit a property of the model or of the prompts? The circuit found again on resamples.

A node circuit is read off a ranking (a sweep) and a Pareto frontier (circuits evaluated on the
prompts): both depend on which prompts were drawn. Re-finding it on bootstrap resamples of the
prompts — the ranking from the resampled rows, the frontier evaluated on the resampled prompts —
says which components are in it for nearly any draw and which ride on a few prompts. It costs one
frontier (one forward per size) per resample; the ranking is free (the sweep's rows)."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pandas as pd
import xarray as xr
from tqdm.auto import tqdm

from actpatch import deprecation
from actpatch.circuits.evaluate import Ablation
from actpatch.circuits.frontier import pareto_frontier, ranking, smallest_circuit
from actpatch.models.model import Model
from actpatch.pairs import PromptPairs
from actpatch.stats import bootstrap

log = logging.getLogger(__name__)


@deprecation.renamed(n_boot="resamples")
def circuit_stability(
    model: Model,
    pairs: PromptPairs,
    per_prompt_sweep: xr.DataArray,
    *,
    recovery: float = 0.8,
    resamples: int = 20,
    seed: int = 0,
    direction: str | None = None,
    ablation: Ablation = None,
    sizes: Sequence[int] | None = None,
    others: Sequence[tuple[PromptPairs, xr.DataArray]] = (),
    check_baseline: bool = True,
    progress: bool | None = None,
) -> pd.DataFrame:
    """One row per component ever in a circuit: how often (`inclusion`, a share of `resamples`
    bootstrap draws of the prompts, each costing a circuit search, hence 20 and not
    `actpatch.Bootstrap`'s 1000 resamples of rows already computed) the smallest circuit reaching
    `recovery` contains it, and whether the full-data circuit does (`in_circuit`), strongest first;
    `attrs` hold the full-data `circuit`, the mean Jaccard overlap of the resampled circuits with it
    (`mean_jaccard`), and the share of resamples whose frontier reached `recovery` at all
    (`reached`).

    `per_prompt_sweep` is a `head` or `mlp_out` sweep of `pairs` with `per_prompt=True` (one
    direction): each resample ranks its components by the resampled rows (the sweep's numbers,
    a ratio of means, on those prompts) and evaluates the frontier on those prompts, in `direction`
    (default: the sweep's), as `actpatch.circuits.pareto_frontier` and `smallest_circuit` do.
    A resample whose frontier never reaches `recovery` counts as an empty circuit. Length groups
    are not supported: a frontier runs on one batch. `others`: other prompt sets with a sweep of each
    (per prompt or not), e.g. other seeds of the task generator; each one's circuit is found as on
    the full data, giving `inclusion_others` and `mean_jaccard_others`.

    The cost is 1 + `resamples` + len(`others`) circuit searches, each a frontier of one forward per
    size (every size of the ranking by default: pass `sizes` to bound it); it is logged before the
    first, and `progress` (default: on a terminal) shows a bar over the searches. `check_baseline`
    as in `evaluate_circuit`, for every search."""
    if not 0 < recovery <= 1:
        raise ValueError(
            f"recovery is the share of the behaviour the circuit must restore, in (0, 1]; got {recovery!r}"
        )
    check_resamples(resamples)
    blocks, layout = bootstrap.split(per_prompt_sweep)
    if layout.labels is not None or "direction" in layout.cell_dims:
        raise ValueError(
            "circuit_stability reads one sweep of one direction and one corruption: select one first, "
            "e.g. result.sel(direction='denoise')"
        )
    block = blocks[0]
    if block.n != len(pairs) or len(block.groups) > 1:
        raise ValueError(
            f"the sweep holds {block.n} prompts in {len(block.groups)} length group(s) and pairs {len(pairs)}: "
            "pass the one batch of pairs the sweep was run on"
        )
    direction = direction or _direction(per_prompt_sweep)

    def found_on(ranked_by: xr.DataArray, prompts: PromptPairs) -> frozenset[str]:
        frontier = pareto_frontier(
            model,
            prompts,
            ranking(ranked_by),
            direction=direction,
            ablation=ablation,
            sizes=sizes,
            progress=False,
            check_baseline=check_baseline,
        )
        return frozenset(str(s) for s in smallest_circuit(frontier, recovery) or [])

    def circuit(counts: np.ndarray, prompts: PromptPairs) -> frozenset[str]:
        averaged = layout.lay_out(
            [bootstrap.statistic(block, counts[None])], "stat", ["value"]
        ).sel(stat="value", drop=True)
        if "direction" in per_prompt_sweep.coords and "direction" not in averaged.coords:
            averaged = averaged.assign_coords(direction=per_prompt_sweep["direction"])
        averaged.attrs["direction"] = _direction(per_prompt_sweep)
        return found_on(averaged, prompts)

    cells = int(np.prod(layout.template.isel(metric=0).shape))  # the ranking's length
    n_sizes = len(sizes) if sizes is not None else cells + 1
    searches = 1 + resamples + len(others)
    other_sets = f", {len(others)} other prompt set{'s' * (len(others) != 1)}" if others else ""
    log.info(
        "circuit_stability: %d circuit searches (1 on all prompts, %d resamples%s), each a "
        "Pareto frontier of up to %d sizes: about %d forwards",
        searches,
        resamples,
        other_sets,
        n_sizes,
        searches * n_sizes,
    )
    bar = tqdm(
        total=searches, desc="circuit searches", disable=None if progress is None else not progress
    )
    with bar:
        full = circuit(np.ones(block.n), pairs)
        bar.update()
        counts = bootstrap.resample_counts(block, resamples, bootstrap.rngs(seed, 1)[0])
        found = []
        for row in counts:
            drawn = np.repeat(np.arange(block.n), row.astype(int)).tolist()
            found.append(circuit(row, pairs[drawn]))
            bar.update()
        elsewhere = []
        for prompts, sweep in others:
            elsewhere.append(found_on(_with_direction(bootstrap.averaged(sweep), sweep), prompts))
            bar.update()
    table = inclusion_table("component", full, found, elsewhere)
    if not elsewhere:
        table = table.drop(columns="inclusion_others")
    table.attrs.update(
        {
            "circuit": sorted(full),
            "recovery": recovery,
            "resamples": resamples,
            "seed": seed,
            "direction": direction,
            "reached": float(np.mean([bool(c) for c in found])),
        }
    )
    return table


def _direction(result: xr.DataArray) -> str:
    if "direction" in result.coords and result["direction"].ndim == 0:
        return str(result["direction"].values)
    direction = result.attrs.get("direction")
    if direction not in ("denoise", "noise"):
        raise ValueError(
            "the sweep does not say its direction (attrs['direction']); select one direction first"
        )
    return direction


def _with_direction(averaged: xr.DataArray, sweep: xr.DataArray) -> xr.DataArray:
    averaged = averaged.copy(deep=False)  # the caller's sweep keeps its attributes
    averaged.attrs["direction"] = _direction(sweep)  # what circuits.ranking reads
    return averaged


def inclusion_table(
    unit: str, full: frozenset, resampled: list[frozenset], elsewhere: list[frozenset]
) -> pd.DataFrame:
    """One row per `unit` (component, edge) in any circuit found: the share of the `resampled`
    circuits holding it (`inclusion`), of the circuits found on other prompt sets
    (`inclusion_others`, NaN without them), and whether the `full`-data circuit holds it; the most
    included first. `attrs`: the mean Jaccard overlap of each set of circuits with the full one."""
    inclusion = Counter(u for c in resampled for u in c)
    inclusion_others = Counter(u for c in elsewhere for u in c)
    names = sorted(
        set(inclusion) | set(inclusion_others) | full,
        key=lambda u: (-inclusion[u], -inclusion_others[u], u),
    )
    table = pd.DataFrame(
        {
            unit: names,
            "inclusion": [inclusion[u] / len(resampled) for u in names],
            "inclusion_others": [
                inclusion_others[u] / len(elsewhere) if elsewhere else np.nan for u in names
            ],
            "in_circuit": [u in full for u in names],
        }
    )
    table.attrs.update(
        {
            "mean_jaccard": float(np.mean([jaccard(c, full) for c in resampled])),
            "n_others": len(elsewhere),
            "mean_jaccard_others": float(np.mean([jaccard(c, full) for c in elsewhere]))
            if elsewhere
            else float("nan"),
        }
    )
    return table


def check_resamples(resamples: int) -> None:
    """Raise unless `resamples` (draws of the prompts, each a circuit search) is a positive count."""
    if isinstance(resamples, bool) or not isinstance(resamples, int) or resamples < 1:
        raise ValueError(f"resamples must be a positive number of draws, got {resamples!r}")


def jaccard(a: frozenset, b: frozenset) -> float:
    """The overlap of two circuits (1 for two empty ones)."""
    return 1.0 if not a and not b else len(a & b) / len(a | b)

"""Intervals from per-prompt rows: resample the prompts, recompute each metric as the sweep does.

No extra forwards: a per-prompt sweep already holds every prompt's metrics at every site, so a
bootstrap resample is a weighting of those rows. B resamples of n prompts are one (B, n) matrix of
counts, and every metric at every site of every resample is one matrix product with the rows.
What is *not* resampled: the model, the sites, the corruption scheme — an interval says how much
the number would move with other prompts from the same generator, nothing more.

The normalised logit difference is a ratio of means, (mean patched − mean corrupt) / (mean clean −
mean corrupt), so each resample takes its prompts' clean and corrupt logit differences along
(`attrs["per_prompt_baseline_logit_diff"]`); averaging per-prompt ratios instead would let one
prompt whose clean and corrupt runs nearly agree blow the interval up."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal, TypeVar

import numpy as np
import pandas as pd
import xarray as xr

from actpatch import deprecation
from actpatch.metrics import METRICS
from actpatch.results import Result
from actpatch.sites import Site, unit_dim

Method = Literal["percentile"]
METHODS = ("percentile",)
STATS = ("value", "lo", "hi")
# Cells of one resampled product held at once: (n_boot × cells) float64, about 128 MiB.
_CELLS_AT_ONCE = 16_000_000


F = TypeVar("F", bound=Callable[..., Any])


def check_options(ci: float, n_boot: int, method: str = "percentile") -> None:
    if not 0 < ci < 1:
        raise ValueError(
            f"ci is the interval's coverage, between 0 and 1 (0.95 for 95 %), got {ci!r}"
        )
    if not isinstance(n_boot, (int, np.integer)) or n_boot < 1:
        raise ValueError(
            f"n_boot is a number of bootstrap resamples (1000 is usual), got {n_boot!r}"
        )
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")


@dataclass(frozen=True)
class Bootstrap:
    """How every interval over prompts is drawn: the central `ci` share of `n_boot` resamples of the
    prompts (with replacement) drawn from `seed`. Every analysis takes it as `ci=`, where a plain
    level (`ci=0.95`) means `Bootstrap(0.95)`, and so do the `stats` functions; these defaults are
    the only ones. `ci=Bootstrap(0.9, n_boot=5000, seed=1)` for another count or seed."""

    ci: float = 0.95
    n_boot: int = 1000
    seed: int = 0

    def __post_init__(self) -> None:
        check_options(self.ci, self.n_boot)
        if isinstance(self.seed, bool) or not isinstance(self.seed, (int, np.integer)):
            raise ValueError(f"seed seeds the resamples: a whole number, got {self.seed!r}")

    @classmethod
    def of(cls, ci: float | Bootstrap | None) -> Bootstrap | None:
        """`ci=` as every analysis takes it: None (no intervals), a level, or a Bootstrap."""
        return ci if ci is None or isinstance(ci, Bootstrap) else cls(ci)

    def note(self, **more: Any) -> dict[str, Any]:
        """What `attrs["interval"]` records of these intervals (and `more` about them)."""
        return {"ci": self.ci, "n_boot": self.n_boot, "seed": self.seed, **more}


DEFAULT = Bootstrap()  # where intervals are what a function returns (stats, intervals_of)


def old_keywords(*names: str) -> Callable[[F], F]:
    """A decorator for the spellings before `Bootstrap`: `n_boot=` and the seed (`boot_seed=` in
    analyses, `seed=` in `stats`) given beside `ci=` fold into it, with a DeprecationWarning; the
    numbers are those of `ci=Bootstrap(ci, n_boot=..., seed=...)`."""
    field = {"n_boot": "n_boot", "boot_seed": "seed", "seed": "seed"}

    def decorate(function: F) -> F:
        signature = inspect.signature(function)

        @functools.wraps(function)
        def wrapper(*args: Any, **keywords: Any) -> Any:
            old = {name: keywords.pop(name) for name in names if name in keywords}
            if not old:
                return function(*args, **keywords)
            given = ", ".join(f"{name}=" for name in old)
            bound = signature.bind_partial(*args, **keywords)
            if isinstance(bound.arguments.get("ci"), Bootstrap):
                raise TypeError(
                    f"{function.__name__}() got {given} beside ci=Bootstrap(...): pass them inside it"
                )
            deprecation.warn(
                f"{function.__name__}({given})",
                "ci=actpatch.Bootstrap(level, n_boot=..., seed=...), one value for the intervals",
            )
            ci = Bootstrap.of(bound.arguments.get("ci", signature.parameters["ci"].default))
            if ci is not None:  # without intervals the old keywords did nothing either
                changes = {field[name]: value for name, value in old.items()}
                bound.arguments["ci"] = replace(ci, **changes)
            return function(*bound.args, **bound.kwargs)

        return wrapper  # type: ignore[return-value]

    return decorate


class NotPerPrompt(ValueError):
    """A result without a `batch` dimension: its prompts were averaged away, so they cannot be resampled."""


@dataclass(frozen=True)
class Block:
    """The prompts of one corruption (or of a result without one), ready to resample.

    `values` is (prompt, metric, cell): every non-metric, non-batch cell of the result flattened,
    directions included, since directions patch the same prompts."""

    label: str | None
    values: np.ndarray
    clean: np.ndarray  # (prompt,) unpatched clean logit differences
    corrupt: np.ndarray
    groups: tuple[int, ...]  # length-group sizes, in prompt order

    @property
    def n(self) -> int:
        return self.values.shape[0]


@dataclass(frozen=True)
class Layout:
    """How a per-prompt result's cells were flattened, to lay statistics back out without `batch`."""

    template: xr.DataArray  # the result without batch (and corruption): coords and attrs
    cell_dims: tuple[str, ...]
    labels: tuple[str, ...] | None  # the corruption labels, or None

    def lay_out(
        self, per_block: Sequence[np.ndarray], dim: str, names: Sequence[Any]
    ) -> xr.DataArray:
        """(names, metric, cell) arrays, one per block, as a labelled result with `dim` last."""
        shape = (len(names), len(METRICS), *(self.template.sizes[d] for d in self.cell_dims))
        parts = [
            Result(values.reshape(shape), dims=(dim, "metric", *self.cell_dims))
            for values in per_block
        ]
        laid = parts[0] if self.labels is None else xr.concat(parts, dim="corruption")
        laid = laid.assign_coords({dim: list(names), **self.template.coords}).transpose(
            *self.template.dims, dim
        )
        laid.attrs = dict(self.template.attrs)
        laid.name = self.template.name
        return laid


@old_keywords("n_boot", "seed")
def intervals(
    per_prompt_result: xr.DataArray,
    *,
    ci: float | Bootstrap = DEFAULT,
    method: Method = "percentile",
) -> xr.DataArray:
    """Every metric with its bootstrap interval: the result without `batch`, with a `stat` dimension
    ["value", "lo", "hi"].

    `value` is the sweep's own number (the same as `sweep(..., per_prompt=False)`: plain means, and
    the normalised logit difference as a ratio of means); `lo`/`hi` bound the central `ci` share of
    `n_boot` recomputations on prompts resampled with replacement (`ci`: a level or a `Bootstrap`),
    within each length group when the prompts came in several (`attrs["group_sizes"]`), each
    corruption's prompts on their own, and the same resamples for every direction (they patch the
    same prompts). Percentile intervals.

    The trap: an interval covers prompt-to-prompt variation only. A narrow interval on 16 prompts
    of one template says nothing about other templates, corruptions or models."""
    drawn = Bootstrap.of(ci)
    ci, n_boot = drawn.ci, drawn.n_boot
    check_options(ci, n_boot, method)
    blocks, layout = split(per_prompt_result)
    rng_per_block = rngs(drawn.seed, len(blocks))
    out = []
    for block, rng in zip(blocks, rng_per_block):
        value = statistic(block, np.ones((1, block.n)))[0]
        lo, hi = np.empty_like(value), np.empty_like(value)
        counts = resample_counts(block, n_boot, rng)
        for cells in cell_chunks(block, n_boot):
            boot = statistic(block, counts, cells)
            lo[:, cells], hi[:, cells] = percentile(boot, ci)
        out.append(np.stack([value, lo, hi]))
    result = layout.lay_out(out, "stat", STATS)
    result.attrs.pop("per_prompt_baseline_logit_diff", None)
    result.attrs["interval"] = drawn.note(
        method=method,
        resampled="prompts, with replacement"
        + (" within length groups" if any(len(b.groups) > 1 for b in blocks) else ""),
        n_prompts=blocks[0].n if layout.labels is None else {b.label: b.n for b in blocks},
    )
    return result


def rows_block(rows: Sequence[Mapping[str, Any]], clean: np.ndarray, corrupt: np.ndarray) -> Block:
    """Per-prompt metric rows, one mapping per cell (a circuit size, a removed member, a verified
    site), as one Block to resample; a metric a row lacks is NaN (attribution estimates two).

    For analyses that run their own forwards (circuits, verification): each forward's per-prompt
    metrics (`metrics.per_prompt`) are the rows, so an interval costs no forward of its own."""
    clean, corrupt = np.asarray(clean, dtype=float), np.asarray(corrupt, dtype=float)
    missing = np.full(clean.shape[0], np.nan)
    values = np.array(
        [[np.asarray(row.get(m, missing), dtype=float) for m in METRICS] for row in rows]
    )  # (cell, metric, prompt)
    return Block(None, values.transpose(2, 1, 0), clean, corrupt, (clean.shape[0],))


def replicates(block: Block, boot: Bootstrap) -> np.ndarray:
    """(n_boot, metric, cell): every metric as the sweep defines it on `boot.n_boot` resamples of the
    block's prompts, the same resamples for every cell, so differences between cells (a member's
    drop, a component's growth) and rank correlations across them are paired. `percentile` of a
    function of these bounds that function; with one seed they are the resamples `intervals` draws."""
    return statistic(block, resample_counts(block, boot.n_boot, rngs(boot.seed, 1)[0]))


def averaged(result: xr.DataArray) -> xr.DataArray:
    """A per-prompt result as the analysis's own numbers over all its prompts (each corruption
    pooled as its sweep pools), its attributes kept; a result without `batch` as it is."""
    if "batch" not in result.dims:
        return result
    blocks, layout = split(result)
    values = [statistic(block, np.ones((1, block.n))) for block in blocks]
    found = layout.lay_out(values, "stat", ["value"]).sel(stat="value", drop=True)
    if "direction" in result.coords and "direction" not in found.coords:
        found = found.assign_coords(direction=result["direction"])
    found.attrs = {k: v for k, v in result.attrs.items() if k != "per_prompt_baseline_logit_diff"}
    return found


def split(result: xr.DataArray) -> tuple[list[Block], Layout]:
    """A per-prompt result as one Block per corruption (one Block without a corruption dimension)."""
    if not isinstance(result, xr.DataArray) or "batch" not in result.dims:
        raise NotPerPrompt(
            "intervals need every prompt's numbers: sweep with per_prompt=True (a result with a 'batch' "
            "dimension); an averaged result cannot be resampled"
        )
    if "metric" not in result.dims or set(result["metric"].values) != set(METRICS):
        raise ValueError(
            f"a per-prompt sweep result holds every metric ({', '.join(METRICS)}) on a 'metric' dimension"
        )
    labels = (
        None
        if "corruption" not in result.dims
        else tuple(str(c) for c in result["corruption"].values)
    )
    cell_dims = tuple(d for d in result.dims if d not in ("batch", "metric", "corruption"))
    ordered = result.sel(metric=list(METRICS)).transpose(
        *(("corruption",) if labels else ()), "batch", "metric", *cell_dims
    )
    template = result.sel(metric=list(METRICS)).isel(batch=0, drop=True)
    raw = ordered.values if labels else ordered.values[None]
    blocks = [
        _block(label, raw[i], result.attrs, len(raw)) for i, label in enumerate(labels or (None,))
    ]
    return blocks, Layout(template, cell_dims, labels)


def _block(label: str | None, values: np.ndarray, attrs: dict, n_blocks: int) -> Block:
    values = values.reshape(values.shape[0], values.shape[1], -1)  # (batch, metric, cell)
    # Corruptions of different prompt counts are stacked with NaN past each one's last prompt.
    present = ~np.isnan(values).all(axis=(1, 2))
    n = int(present.sum())
    if not present[:n].all():
        raise ValueError(
            f"prompts of {label or 'this result'} are missing in the middle of 'batch'; "
            "only trailing prompts may be absent (a shorter corruption stacked with a longer one)"
        )
    if n < 2:
        raise ValueError(
            f"{label or 'this result'} holds {n} prompt(s): a bootstrap needs at least 2"
        )
    values = values[:n]
    clean, corrupt = _baselines(label, values, attrs.get("per_prompt_baseline_logit_diff"))
    groups = _groups(label, attrs.get("group_sizes"), n)
    return Block(label, values, clean, corrupt, groups)


def _baselines(
    label: str | None, values: np.ndarray, stored: dict | None
) -> tuple[np.ndarray, np.ndarray]:
    """Each prompt's unpatched clean and corrupt logit differences: as the sweep stored them (shared,
    or one entry per corruption label), or else recovered from the rows themselves."""
    if isinstance(stored, dict) and label in stored:
        stored = stored[label]
    if isinstance(stored, dict) and "clean" in stored and "corrupt" in stored:
        clean, corrupt = (
            np.asarray(stored["clean"], dtype=float),
            np.asarray(stored["corrupt"], dtype=float),
        )
        if clean.shape == corrupt.shape == (values.shape[0],):
            return clean, corrupt
    return _recovered_baselines(label, values)


def _recovered_baselines(label: str | None, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Baselines read back from the rows: per prompt, norm_logit_diff = (logit_diff − corrupt) / (clean −
    corrupt) at every cell, a line in logit_diff whose slope and intercept give both ends.

    Results stacked over corruptions lose the per-prompt baselines they disagree on; two cells of
    different logit difference recover them to rounding, and every other cell checks the line."""
    diff = values[:, METRICS.index("logit_diff")]
    norm = values[:, METRICS.index("norm_logit_diff")]
    rows = np.arange(diff.shape[0])
    low, high = diff.argmin(axis=1), diff.argmax(axis=1)
    spread = diff[rows, high] - diff[rows, low]
    where = label or "this result"
    if not (spread > 0).all():
        raise ValueError(
            f"{where} carries no per-prompt baselines (attrs['per_prompt_baseline_logit_diff']) and some "
            "prompt's logit difference is the same at every site, so they cannot be read back: "
            "sweep each corruption on its own with per_prompt=True"
        )
    slope = (norm[rows, high] - norm[rows, low]) / spread  # 1 / (clean − corrupt)
    corrupt = diff[rows, low] - norm[rows, low] / slope
    clean = corrupt + 1 / slope
    misfit = np.abs(norm - (diff - corrupt[:, None]) * slope[:, None]).max()
    if not np.isfinite(misfit) or misfit > 1e-8 * (1 + np.abs(norm).max()):
        raise ValueError(
            f"{where} carries no per-prompt baselines (attrs['per_prompt_baseline_logit_diff']) and its "
            "rows do not determine them; sweep with per_prompt=True and keep the sweep's attrs"
        )
    return clean, corrupt


def _groups(label: str | None, stored: Any, n: int) -> tuple[int, ...]:
    if isinstance(stored, dict):
        stored = stored.get(label)
    if stored is not None and sum(int(s) for s in stored) == n:
        return tuple(int(s) for s in stored)
    return (n,)


def rngs(seed: int, n: int) -> list[np.random.Generator]:
    """One generator per block: each corruption's prompts are resampled on their own, reproducibly."""
    return [np.random.default_rng(child) for child in np.random.SeedSequence(seed).spawn(n)]


def resample_counts(
    block: Block, n_boot: int, rng: np.random.Generator, size: int | None = None
) -> np.ndarray:
    """(n_boot, n) how many times each prompt is drawn in each resample, within its length group.

    `size` draws that many prompts per resample from all of them (a sub-sample size for
    `enough_prompts`) instead of n within groups."""
    n = block.n
    if size is not None:
        picks = rng.integers(0, n, size=(n_boot, size))
    else:
        starts = np.cumsum((0, *block.groups[:-1]))
        picks = np.concatenate(
            [
                start + rng.integers(0, g, size=(n_boot, g))
                for start, g in zip(starts, block.groups)
            ],
            axis=1,
        )
    flat = (np.arange(n_boot)[:, None] * n + picks).ravel()
    return np.bincount(flat, minlength=n_boot * n).reshape(n_boot, n).astype(float)


def cell_chunks(block: Block, n_boot: int) -> list[slice]:
    cells = block.values.shape[2]
    step = max(1, _CELLS_AT_ONCE // (n_boot * len(METRICS)))
    return [slice(start, min(start + step, cells)) for start in range(0, cells, step)]


def statistic(
    block: Block, counts: np.ndarray, cells: slice | np.ndarray = slice(None)
) -> np.ndarray:
    """(resample, metric, cell): each metric as the sweep defines it, for prompts drawn `counts` times.

    Plain means, but the normalised logit difference is a ratio of means with the resample's own
    baselines. The difference from the corrupt run is taken prompt by prompt before summing, so a
    patch that leaves every prompt at its corrupt run gives exactly 0 in every resample."""
    values = block.values[:, :, cells]
    weights = counts / counts.sum(axis=1, keepdims=True)
    n, metrics, width = values.shape
    means = (weights @ values.reshape(n, metrics * width)).reshape(-1, metrics, width)
    norm = METRICS.index("norm_logit_diff")
    above_corrupt = values[:, METRICS.index("logit_diff")] - block.corrupt[:, None]
    gap = weights @ (block.clean - block.corrupt)
    means[:, norm] = (weights @ above_corrupt) / gap[:, None]
    return means


def cell_table(layout: Layout) -> pd.DataFrame:
    """One row per cell, in the order `split` flattened them: the `site` it patched (as it prints)
    and each dimension's coordinate, with the tokens at its position so a row reads without a heatmap."""
    template = layout.template
    if not layout.cell_dims:
        return pd.DataFrame(index=range(1))
    index = pd.MultiIndex.from_product(
        [template[d].values for d in layout.cell_dims], names=list(layout.cell_dims)
    )
    table = index.to_frame(index=False)
    if "site" in template.attrs and "layer" in table:
        kind, unit = template.attrs["site"], unit_dim(template.attrs["site"])
        table.insert(
            0,
            "site",
            [
                str(
                    Site(
                        kind,
                        int(row["layer"]),
                        head=int(row[unit]) if unit in ("head", "kv_head") else None,
                        neuron=int(row[unit]) if unit == "neuron" else None,
                        pos=_pos(row["pos"]) if "pos" in row else None,
                    )
                )
                for _, row in table.iterrows()
            ],
        )
    if "pos" in layout.cell_dims:
        for label in ("pos_name", "clean_token", "corrupt_token"):
            if label in template.coords:
                table[label] = table["pos"].map(
                    dict(zip(template["pos"].values, template[label].values))
                )
    return table


def _pos(label: Any) -> int | str:
    return int(label) if isinstance(label, (int, np.integer)) else str(label)


def percentile(boot: np.ndarray, ci: float | Bootstrap) -> tuple[np.ndarray, np.ndarray]:
    """The central `ci` share of the resamples (axis 0)."""
    tail = (1 - (ci.ci if isinstance(ci, Bootstrap) else ci)) / 2
    lo, hi = np.quantile(boot, [tail, 1 - tail], axis=0)
    return lo, hi

"""Results: sweep outputs as labelled xarray data, and their lossless save and load.

A result is a `Result`, an `xr.DataArray` with dimensions named as everywhere else (`metric`,
`layer`, `head`/`kv_head`/`neuron`, `pos`, optionally `batch` and `direction`), the clean and
corrupt token strings as coordinates on `pos`, and its provenance (model, site, direction,
baselines, self-checks, versions) in `attrs`; it differs from a plain `xr.DataArray` only in how
it prints."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from actpatch.atomic import write_atomically
from actpatch.metrics import METRICS
from actpatch.models.model import Model, weights_fingerprint
from actpatch.pairs import PromptPairs
from actpatch.sites import Site, unit_dim

_ATTRS_KEY = "actpatch_provenance"  # netCDF attrs are flat; provenance travels as one JSON string
_TOP = 5  # cells a printed result lists
_SITE_DIMS = ("layer", "head", "kv_head", "neuron", "latent", "pos")


class Result(xr.DataArray):
    """An analysis's labelled result: an `xr.DataArray` in every way except that it prints short.

    xarray's text view lists every number of a small array and every attribute; `print(result)`
    says what the result is and lists its strongest cells instead (`summary`). Notebooks keep
    xarray's HTML view; `xr.DataArray(result)` is the plain array with xarray's text view.
    Indexing, arithmetic, reductions, `xr.concat`, pickling and `load` keep the type; a few
    xarray functions (`where`, `fillna`, `apply_ufunc`) return a plain `xr.DataArray`, which
    works the same. `xarray.testing` asserts compare types: compare a result with a result, or
    wrap the other side (`Result(other)`)."""

    __slots__ = ()  # xarray asks every subclass for it: a DataArray keeps its state in slots

    def __repr__(self) -> str:
        if "analysis" not in self.attrs:  # a reduction that dropped the provenance: a plain array
            return super().__repr__()
        return summary(self)


def assemble(
    rows: Sequence[dict[str, Any]],
    sites: Sequence[Site],
    *,
    layers: Sequence[int],
    units: Sequence[int] | None,
    positions: Sequence[int | str | None],
    pos_tokens: dict[str, list[str]] | None,
    n_prompts: int | None,
    provenance: dict[str, Any],
) -> xr.DataArray:
    """Lay per-site metric rows (in `sites.grid` order) out on labelled dimensions.

    Each row maps a metric name to a float, or to a (batch,) array when per-prompt values were kept."""
    kind = sites[0].kind
    unit = unit_dim(kind)
    dims, coords = ["layer"], {"layer": list(layers)}
    if unit:
        dims.append(unit)
        coords[unit] = list(units or [])
    every_position = list(positions) == [None]
    if not every_position:
        dims.append("pos")
        coords["pos"] = _pos_labels(positions)
    shape = [len(coords[d]) for d in dims]
    values = np.array(
        [[row[m] for m in METRICS] for row in rows], dtype=np.float64
    )  # (site, metric[, batch])
    values = values.reshape(*shape, len(METRICS), *values.shape[2:])
    values = np.moveaxis(values, len(shape), 0)  # metric first
    dims = ["metric", *dims] + (["batch"] if n_prompts is not None else [])
    coords["metric"] = list(METRICS)
    if n_prompts is not None:
        coords["batch"] = list(range(n_prompts))
    result = Result(values, dims=dims, coords=coords, name="patching_effect")
    if pos_tokens and not every_position:
        for name, tokens in pos_tokens.items():
            result = result.assign_coords({name: ("pos", tokens)})
    if not every_position:
        # Which swept positions were named ("S2") rather than indices: `sites` reads them back.
        result = result.assign_coords(pos_named=("pos", [isinstance(p, str) for p in positions]))
    result.attrs.update(provenance)
    result.attrs.setdefault("positions", "all" if every_position else "each")
    return result


def sites(result: xr.DataArray, *, basis: Any = None) -> list[Site]:
    """The sites a result's cells were patched at, in the order of its flattened non-metric
    dimensions (`layer`, then the unit, then `pos`): the inverse of `assemble`.

    Named positions come back as their names (resolved prompt by prompt when patched again), index
    positions as indices, from the coordinates `assemble` wrote; nothing is parsed from strings.
    A feature result holds its dictionary's name, not the dictionary: pass it as `basis`."""
    kind = result.attrs.get("site")
    if kind is None:
        raise ValueError(
            "this result has no attrs['site']: sites() reads results made by actpatch (sweep, attribute)"
        )
    if "dictionary" in result.attrs:
        name = result.attrs["dictionary"].get("name")
        if getattr(basis, "name", None) != name:
            raise ValueError(
                f"this result is over sites of the dictionary {name}; a result holds its name, not "
                "its weights: pass that dictionary, sites(result, basis=it)"
            )
    elif basis is not None:
        raise ValueError(f"basis= goes with feature results; this one is over {kind} sites")
    unit = unit_dim(kind)
    layers = [int(l) for l in result["layer"].values]
    units = [int(u) for u in result[unit].values] if unit else [None]
    if "pos" in result.dims:
        labels = result["pos"].values
        named = (
            result["pos_named"].values
            if "pos_named" in result.coords
            else [isinstance(p, str) for p in labels]
        )
        indices = result["pos_index"].values if "pos_index" in result.coords else labels
        positions = [
            str(label) if is_named else int(index)
            for label, is_named, index in zip(labels, named, indices)
        ]
    else:
        positions = [None]
    found = []
    for layer in layers:
        for u in units:
            for p in positions:
                head = u if unit in ("head", "kv_head") else None
                neuron = u if unit == "neuron" else None
                latent = u if unit == "latent" else None
                found.append(Site(kind, layer, head, neuron, pos=p, latent=latent, basis=basis))
    return found


def baselines(attrs: dict[str, Any], metric: str) -> tuple[float, float]:
    """(clean, corrupt) unpatched values of `metric` a result carries (norm_logit_diff: 1 and 0)."""
    if metric in attrs.get("baseline_clean", {}) and metric in attrs.get("baseline_corrupt", {}):
        return float(attrs["baseline_clean"][metric]), float(attrs["baseline_corrupt"][metric])
    if metric == "norm_logit_diff":
        return 1.0, 0.0
    raise ValueError(
        f"the result carries no baselines to measure {metric!r} from; use norm_logit_diff"
    )


def effects(
    attrs: dict[str, Any], values: Any, metric: str, direction: str | None = None
) -> np.ndarray:
    """Each patch's effect: how far it moved `metric` from the unpatched target run, counted towards
    the source run (denoising: up from the corrupt baseline; noising: down from the clean one).

    The one reading of "effect" that rankings, sensitivity, labels and verification share: 0 is
    "changed nothing" in either direction, and positive helps the source run's answer."""
    direction = direction or attrs.get("direction")
    if direction not in ("denoise", "noise"):
        raise ValueError(
            "the result does not say its direction (attrs['direction']); select one direction first"
        )
    clean, corrupt = baselines(attrs, metric)
    values = np.asarray(values, dtype=float)
    return values - corrupt if direction == "denoise" else clean - values


def provenance(model: Model, pairs: PromptPairs, *, analysis: str, **extra: Any) -> dict[str, Any]:
    """What made a result, the same for every analysis: the model (name, where it was loaded from,
    a fingerprint of its weights), the prompts (task, seed, corruption, text, count), the package
    versions, and `extra` (the analysis's own arguments and checks)."""
    return {
        "analysis": analysis,
        "model": model.name,
        "model_source": model.provenance,
        "weights_fingerprint": weights_fingerprint(model),
        "task": pairs.task or "",
        "seed": -1 if pairs.seed is None else pairs.seed,
        "corruption": pairs.corruption or "",
        "n_prompts": len(pairs),
        "seq_len": pairs.seq_len,
        "clean_prompts": list(pairs.clean_text or []),
        "corrupt_prompts": list(pairs.corrupt_text or []),
        "versions": versions(),
        **extra,
    }


def versions() -> dict[str, str]:
    """Versions of the packages that decide a result's numbers."""
    found = {}
    for package in ("actpatch", "torch", "transformers"):
        try:
            found[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            found[package] = "unknown"
    return found


def save(result: xr.DataArray, path: str | os.PathLike) -> Path:
    """Write `result` (values, coordinates, provenance) to a netCDF file, atomically."""
    if not isinstance(result, xr.DataArray):
        raise TypeError(
            f"save() writes the xarray.DataArray a sweep returns, not {type(result).__name__}"
        )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    on_disk = result.copy()
    on_disk.attrs = {_ATTRS_KEY: json.dumps(result.attrs, default=_jsonable)}
    return write_atomically(path, lambda temporary: on_disk.to_netcdf(temporary, engine="h5netcdf"))


def load(path: str | os.PathLike) -> Result:
    """Read a result written by `save`, provenance included, as the `Result` it was."""
    if not Path(path).is_file():
        raise FileNotFoundError(
            f"{path}: no such result file; results are written by actpatch.save(result, path)"
        )
    try:
        with xr.open_dataarray(path, engine="h5netcdf") as stored:
            result = stored.load()
    except (OSError, ValueError) as error:
        raise ValueError(
            f"{path} is not a result written by actpatch.save ({' '.join(str(error).split())[:200]}); "
            "pass the .nc file that save() wrote"
        ) from None
    result = Result(result)
    result.attrs = json.loads(result.attrs.get(_ATTRS_KEY, "{}"))
    return result


def summary(result: xr.DataArray) -> str:
    """What `print(result)` shows: what made it (analysis, site, direction, interval level), its
    dimensions, metrics, model and prompts, then every metric of a single cell (a circuit's
    evaluation, a selected site), or else the `_TOP` cells of largest effect on the logit
    difference (`effects`; of largest |value| where the result holds no baselines or direction),
    each with its interval when the result has a `stat` dimension."""
    attrs = result.attrs
    about = [str(attrs.get("analysis", "result"))]
    about += [f"{k}={attrs[k]}" for k in ("site", "direction") if isinstance(attrs.get(k), str)]
    at = [
        f"{d}={result[d].item()}" for d in _SITE_DIMS if d in result.coords and not result[d].ndim
    ]
    if at:  # a site selected from a sweep
        about.append(f"at {attrs.get('site', '')}[{', '.join(at)}]")
    interval = attrs.get("interval") if "stat" in result.dims else None
    if isinstance(interval, dict) and "ci" in interval:
        about.append(f"{100 * interval['ci']:g} % intervals ({interval.get('n_boot')} resamples)")
    shape = " × ".join(f"{dim} {size}" for dim, size in result.sizes.items()) or "one number"
    lines = [f"<actpatch.Result {result.name or ''}: {', '.join(about)}>", f"  {shape}"]
    metrics = (
        [str(m) for m in np.atleast_1d(result["metric"].values)]
        if "metric" in result.coords
        else []
    )
    if "metric" in result.dims:
        lines.append(f"  metrics: {', '.join(metrics)}")
    if "model" in attrs:
        task = f", task {attrs['task']}" if attrs.get("task") else ""
        lines.append(f"  {attrs['model']}{task}, {attrs.get('n_prompts', '?')} prompts")
    averaged = result.mean("batch", keep_attrs=True) if "batch" in result.dims else result
    by_metric = {
        m: averaged.sel(metric=m) if "metric" in averaged.dims else averaged
        for m in metrics or ["value"]
    }
    if set(averaged.dims) <= {"metric", "stat"}:
        width = max(len(m) for m in by_metric)
        lines += [f"    {m:<{width}}  {_bounded(one, [], 0)}" for m, one in by_metric.items()]
    else:
        metric = "logit_diff" if "logit_diff" in by_metric else next(iter(by_metric))
        lines += _strongest(by_metric[metric], metric)
    lines.append("  numbers: result.sel(...).values; xarray's view: xr.DataArray(result)")
    return "\n".join(lines)


def _strongest(one: xr.DataArray, metric: str) -> list[str]:
    cells = [d for d in one.dims if d != "stat"]
    value = _flat(one.sel(stat="value") if "stat" in one.dims else one, cells)
    try:
        effect = _cell_effects(one, cells, value, metric)
        what = f"the largest effect on {metric}: effect, {metric}"
    except (ValueError, TypeError, KeyError):  # no baselines or no direction to measure from
        effect, what = None, f"the largest |{metric}|"
    strength = np.abs(value if effect is None else effect)
    order = [i for i in np.argsort(-strength, kind="stable") if np.isfinite(strength[i])][:_TOP]
    labels = [_cell_label(one, cells, i) for i in order]
    width = max((len(label) for label in labels), default=0)
    interval = " [interval]" if "stat" in one.dims else ""
    lines = [f"  {len(order)} of {value.size} cells with {what}{interval}:"]
    for label, i in zip(labels, order):
        shown = "" if effect is None else f"{effect[i]:+.3g}   "
        lines.append(f"    {label:<{width}}  {shown}{_bounded(one, cells, i)}")
    return lines


def _flat(values: xr.DataArray, cells: list[str]) -> np.ndarray:
    return np.asarray(values.transpose(*cells).values, dtype=float).ravel()


def _bounded(one: xr.DataArray, cells: list[str], i: int) -> str:
    """Cell `i`'s value, and its interval where `one` has a `stat` dimension."""
    if "stat" not in one.dims:
        return f"{_flat(one, cells)[i]:.4g}"
    value, lo, hi = (_flat(one.sel(stat=s), cells)[i] for s in ("value", "lo", "hi"))
    return f"{value:.4g} [{lo:.4g}, {hi:.4g}]"


def _cell_effects(
    one: xr.DataArray, cells: list[str], values: np.ndarray, metric: str
) -> np.ndarray:
    """`effects` of flattened cells, each read in its own direction (a `direction` dimension's)."""
    if "direction" not in cells:
        chosen = one.coords.get("direction")
        return effects(one.attrs, values, metric, None if chosen is None else str(chosen.item()))
    which = np.unravel_index(np.arange(values.size), [one.sizes[d] for d in cells])
    which = which[cells.index("direction")]
    found = np.empty_like(values)
    for k, direction in enumerate(one["direction"].values):
        found[which == k] = effects(one.attrs, values[which == k], metric, str(direction))
    return found


def _cell_label(one: xr.DataArray, cells: list[str], flat: int) -> str:
    """A cell as a site prints (`head[layer=9, head=6]`), other dimensions after it."""
    index = np.unravel_index(flat, [one.sizes[d] for d in cells]) if cells else ()
    parts = {d: f"{d}={one[d].values[i] if d in one.coords else i}" for d, i in zip(cells, index)}
    at = ", ".join(parts[d] for d in cells if d in _SITE_DIMS)
    kind = one.attrs.get("site")
    site = f"{kind}[{at}]" if kind and at else at
    return (
        " ".join(p for p in (site, *(parts[d] for d in cells if d not in _SITE_DIMS)) if p) or "all"
    )


def _pos_labels(positions: Sequence[int | str | None]) -> list:
    if all(isinstance(p, int) for p in positions):
        return list(positions)
    return [str(p) for p in positions]


def _jsonable(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (set, tuple)):
        return list(value)
    return str(value)

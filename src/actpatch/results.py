"""Results: sweep outputs as labelled xarray data, and their lossless save and load.

A result is an `xr.DataArray` with dimensions named as everywhere else (`metric`, `layer`,
`head`/`kv_head`/`neuron`, `pos`, optionally `batch` and `direction`), the clean and corrupt token
strings as coordinates on `pos`, and its provenance (model, site, direction, baselines,
self-checks, versions) in `attrs`."""

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
    result = xr.DataArray(values, dims=dims, coords=coords, name="patching_effect")
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


def load(path: str | os.PathLike) -> xr.DataArray:
    """Read a result written by `save`, provenance included."""
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
    result.attrs = json.loads(result.attrs.get(_ATTRS_KEY, "{}"))
    return result


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

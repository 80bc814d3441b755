"""Results: sweep outputs as labelled xarray data, and their lossless save and load.

A result is an `xr.DataArray` with dimensions named as everywhere else (`metric`, `layer`,
`head`/`kv_head`/`neuron`, `pos`, optionally `batch` and `direction`), the clean and corrupt token
strings as coordinates on `pos`, and its provenance (model, site, direction, baselines,
self-checks, versions) in `attrs`."""
from __future__ import annotations

import json
import os
from importlib import metadata
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import xarray as xr

from actpatch.atomic import write_atomically
from actpatch.metrics import METRICS
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
    values = np.array([[row[m] for m in METRICS] for row in rows], dtype=np.float64)  # (site, metric[, batch])
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
    result.attrs.update(provenance)
    result.attrs["positions"] = "all" if every_position else "each"
    return result


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
        raise TypeError(f"save() writes the xarray.DataArray a sweep returns, not {type(result).__name__}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    on_disk = result.copy()
    on_disk.attrs = {_ATTRS_KEY: json.dumps(result.attrs, default=_jsonable)}
    return write_atomically(path, lambda temporary: on_disk.to_netcdf(temporary, engine="h5netcdf"))


def load(path: str | os.PathLike) -> xr.DataArray:
    """Read a result written by `save`, provenance included."""
    if not Path(path).is_file():
        raise FileNotFoundError(f"{path}: no such result file; results are written by actpatch.save(result, path)")
    try:
        with xr.open_dataarray(path, engine="h5netcdf") as stored:
            result = stored.load()
    except (OSError, ValueError) as error:
        raise ValueError(f"{path} is not a result written by actpatch.save ({' '.join(str(error).split())[:200]}); "
                         "pass the .nc file that save() wrote") from None
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

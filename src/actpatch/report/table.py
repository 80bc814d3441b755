"""Plain-text tables of a result: layer rows against position (or head) columns, for terminals."""
from __future__ import annotations

import xarray as xr


def layer_table(result: xr.DataArray, metric: str = "norm_logit_diff", *, width: int = 6) -> str:
    """A layer × pos (or layer × head) grid of one metric, columns headed by the clean tokens."""
    grid = result.sel(metric=metric)
    extra = [d for d in grid.dims if d not in ("layer",)]
    if len(extra) != 1:
        raise ValueError(f"a table needs exactly one dimension beside layer, this result has {extra}")
    column_dim = extra[0]
    if "clean_token" in grid.coords and column_dim == "pos":
        headers = [_fit(str(t).replace("\n", "\\n"), width) for t in grid.clean_token.values]
    else:
        headers = [_fit(f"{column_dim[0]}{v}", width) for v in grid[column_dim].values]
    lines = [f"{metric} ({result.attrs.get('direction', '')} {result.attrs.get('site', '')}); rows: layer"]
    lines.append("layer " + " ".join(h.rjust(width) for h in headers))
    for layer in grid.layer.values:
        row = grid.sel(layer=layer).values
        lines.append(f"{int(layer):>5} " + " ".join(f"{v:>{width}.2f}" for v in row))
    return "\n".join(lines)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"

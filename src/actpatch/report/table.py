"""Plain-text tables of a result: layer rows against position (or head) columns, for terminals."""

from __future__ import annotations

import xarray as xr


def layer_table(result: xr.DataArray, metric: str = "norm_logit_diff", *, width: int = 6) -> str:
    """A layer × pos (or layer × head) grid of one metric, columns headed by the clean tokens."""
    grid = result.sel(metric=metric)
    extra = [d for d in grid.dims if d not in ("layer",)]
    if len(extra) != 1:
        raise ValueError(
            f"a table needs exactly one dimension beside layer, this result has {extra}"
        )
    column_dim = extra[0]
    if "clean_token" in grid.coords and column_dim == "pos":
        headers = [_fit(str(t).replace("\n", "\\n"), width) for t in grid.clean_token.values]
    else:
        headers = [_fit(f"{column_dim[0]}{v}", width) for v in grid[column_dim].values]
    lines = [
        f"{metric} ({result.attrs.get('direction', '')} {result.attrs.get('site', '')}); rows: layer"
    ]
    lines.append("layer " + " ".join(h.rjust(width) for h in headers))
    for layer in grid.layer.values:
        row = grid.sel(layer=layer).values
        lines.append(f"{int(layer):>5} " + " ".join(f"{v:>{width}.2f}" for v in row))
    return "\n".join(lines)


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def strongest_table(result: xr.DataArray, metric: str = "norm_logit_diff", *, top: int = 10) -> str:
    """The `top` patches that move `metric` furthest from the unpatched target run, one per line.

    For results a layer grid cannot show (several dimensions beside layer, or none). The target
    value is the corrupt baseline when denoising and the clean one when noising."""
    values = result.sel(metric=metric)
    if "batch" in values.dims:
        values = values.mean("batch")
    direction = result.attrs.get("direction")
    baseline = (
        result.attrs.get("baseline_corrupt" if direction == "denoise" else "baseline_clean") or {}
    )
    target = baseline.get(
        metric, 0.0 if direction == "denoise" else 1.0 if metric == "norm_logit_diff" else 0.0
    )
    flat = values.stack(patch=list(values.dims)) if values.dims else values.expand_dims(patch=[0])
    order = abs(flat - target).argsort()[::-1][:top].values
    lines = [
        f"strongest {min(top, flat.size)} of {flat.size} patches by {metric} "
        f"({direction or ''} {result.attrs.get('site', '')}; unpatched: {target:.3f})"
    ]
    for index in order:
        where = ", ".join(
            f"{dim}={_label(value)}" for dim, value in zip(values.dims, flat["patch"].values[index])
        )
        lines.append(f"  {where or 'all'}: {float(flat.values[index]):+.3f}")
    return "\n".join(lines)


def _label(value: object) -> str:
    return str(value.item() if hasattr(value, "item") else value)


def latent_table(result: xr.DataArray, metric: str = "norm_logit_diff", *, top: int = 10) -> str:
    """A feature result's `top` latents by |effect| on `metric`, one per line, with intervals where
    the result has them; one block per direction."""
    from actpatch.report.features import directions, top_latents

    lines = []
    for direction, part in directions(result):
        table = top_latents(part, metric, top=top, direction=direction or None)
        lines.append(
            f"strongest {len(table)} of {part.sizes['latent']} latents × {part.sizes.get('pos', 1)} "
            f"positions by {metric} ({direction} {result.attrs.get('site', '')}; effect: from the "
            "unpatched run, towards the source)"
        )
        for row in table.itertuples(index=False):
            where = f"pos {row.pos}" + (f" {row.token!r}" if hasattr(row, "token") else "")
            interval = f" [{row.lo:+.3f}, {row.hi:+.3f}]" if hasattr(row, "lo") else ""
            lines.append(
                f"  latent {int(row.latent):>6} at {where}: {row.value:+.3f}{interval}  effect {row.effect:+.3f}"
            )
    return "\n".join(lines)

"""Static PNG images of results, for papers, slides and places that show no HTML.

Drawn with matplotlib, not by exporting the plotly figures: plotly's image export (kaleido)
drives a headless Chrome, which a CI runner or a cluster node often lacks, while matplotlib
draws in-process with its Agg backend. We build `matplotlib.figure.Figure` objects directly, never
through `pyplot`, so no global state (backend, style, open figures) is touched. The panels and
their labels come from report/layout.py, as the interactive figures' do, so both show the same."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from actpatch import atomic
from actpatch.report import layout

COLORMAP = "RdBu"  # the same diverging scales as the interactive figures, white where a patch changes nothing
BACKGROUND = (1.0, 1.0, 1.0)  # of every plot, as in the interactive figures
# Over cells whose interval holds the no-effect value: towards the background, so they recede.
FADE = (*BACKGROUND, 0.7)


def render_pngs(
    results: xr.DataArray | Sequence[xr.DataArray] | Mapping[str, xr.DataArray],
    folder: str | os.PathLike,
    *,
    metric: str | None = None,
    dpi: int = 150,
) -> list[Path]:
    """Write one PNG per result into `folder` (created if needed); return their paths.

    Files are named after the result (`resid_pre_denoise_norm_logit_diff.png`, or the mapping's
    key). Each shows `metric` (default: normalised logit difference) with every direction and
    corruption panel side by side, as the HTML report does."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, result in _named(results).items():
        shown = f"_{metric or layout.default_metric(result)}" if "metric" in result.dims else ""
        path = folder / f"{name}{shown}.png"
        figure = draw(result, metric)
        atomic.write_atomically(
            path, lambda temporary, figure=figure: figure.savefig(temporary, dpi=dpi, format="png")
        )
        paths.append(path)
    return paths


def draw(result: xr.DataArray, metric: str | None = None) -> Figure:
    """A matplotlib Figure of `result`: layer heatmaps, or a line where one dimension is left."""
    if layout.is_layer_grid(result):
        return _heatmaps(result, metric)
    return _line(result, metric)


def _heatmaps(result: xr.DataArray, metric: str | None) -> Figure:
    grid = layout.grid(result, metric)
    n_columns = max(p.values.shape[1] for p in grid.panels)
    n_layers = max(len(p.layers) for p in grid.panels)
    tick_lines = max(len(t) for p in grid.panels for t in p.ticks)
    panel_width = min(max(3.5, 0.55 * n_columns + 1.5), 16) if grid.column_dim != "neuron" else 12
    panel_height = max(2.5, 0.22 * n_layers + 1.0 + 0.15 * tick_lines)
    size = (panel_width * grid.columns_per_row + 1.2, panel_height * grid.rows + 1.0)
    figure = Figure(figsize=size, layout="constrained", facecolor=BACKGROUND)
    axes = figure.subplots(grid.rows, grid.columns_per_row, squeeze=False)
    images: dict[
        int, tuple[object, list]
    ] = {}  # per colour scale: an image drawn with it, and its axes
    for i, panel in enumerate(grid.panels):
        ax = axes.flat[i]
        ax.set_facecolor(BACKGROUND)
        low, high = grid.limits(panel.scale)
        image = ax.imshow(
            panel.values, cmap=COLORMAP, vmin=low, vmax=high, aspect="auto", interpolation="nearest"
        )
        if panel.faded is not None and panel.faded.any():
            ax.imshow(_fade(panel.faded), aspect="auto", interpolation="nearest")
        images.setdefault(panel.scale, (image, []))[1].append(ax)
        ax.set_title(_text(panel.title), fontsize=9)
        ax.set_ylabel("layer")
        ax.set_yticks(
            range(len(panel.layers)),
            [str(layer) for layer in panel.layers] if n_layers <= 32 else None,
        )
        if n_layers > 32:
            ax.set_yticks(
                range(0, n_layers, 4), [str(panel.layers[j]) for j in range(0, n_layers, 4)]
            )
        if len(panel.ticks) <= 40:
            ax.set_xticks(
                range(len(panel.ticks)),
                ["\n".join(_text(line) for line in t) for t in panel.ticks],
                fontsize=7,
            )
        ax.set_xlabel(layout.axis_title(grid.column_dim), fontsize=8)
    for ax in list(axes.flat)[len(grid.panels) :]:
        ax.set_visible(False)
    for scale, (image, scale_axes) in sorted(images.items()):
        label = grid.scales[scale].label
        figure.colorbar(
            image,
            ax=scale_axes,
            label=_text(grid.metric + (f"\n{label}" if label else "")),
            shrink=0.9,
        )
    heading = layout.title(result) + f"\n{grid.metric}" + (f"; {grid.note}" if grid.note else "")
    figure.suptitle(_text(heading), fontsize=10)
    return figure


def _fade(faded: np.ndarray) -> np.ndarray:
    """An RGBA layer: translucent white over the faded cells (the interval holds the no-effect value), clear elsewhere."""
    layer = np.zeros((*faded.shape, 4))
    layer[faded] = FADE
    return layer


def _line(curve: xr.DataArray, metric: str | None) -> Figure:
    if "metric" in curve.dims:
        metric = metric or layout.default_metric(curve)
        curve = curve.sel(metric=metric)
    bounds = None
    if (
        "stat" in curve.dims
    ):  # a band over each point's interval, as the interactive line plot draws
        bounds = curve.sel(stat=["lo", "hi"])
        curve = curve.sel(stat="value", drop=True)
    if curve.ndim != 1:
        raise ValueError(f"a line needs exactly one dimension; this curve has {list(curve.dims)}")
    x = curve.dims[0]
    figure = Figure(figsize=(6, 4), layout="constrained")
    ax = figure.subplots()
    (line,) = ax.plot(curve[x].values, curve.values, marker="o")
    if bounds is not None:
        lo, hi = bounds.transpose(x, "stat").values.T
        ax.fill_between(curve[x].values, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    y_name = metric or str(curve.name or "value")
    if y_name == layout.DEFAULT_METRIC:
        for label, level in (("clean", 1.0), ("corrupt", 0.0)):
            ax.axhline(level, linestyle=":", color="grey")
            ax.annotate(
                label,
                (1.0, level),
                xycoords=("axes fraction", "data"),
                ha="right",
                va="bottom",
                color="grey",
            )
    ax.set_xlabel(_text(str(x)))
    if x == "percent":  # a faithfulness curve: MIB's sizes span 0.1 to 100 % of edges
        ax.set_xscale("log")
        ax.set_xlabel("percent of edges (log scale)")
    ax.set_ylabel(_text(y_name))
    ax.set_title(_text(str(curve.attrs.get("title") or curve.name or y_name)))
    return figure


def _named(
    results: xr.DataArray | Sequence[xr.DataArray] | Mapping[str, xr.DataArray],
) -> dict[str, xr.DataArray]:
    if isinstance(results, xr.DataArray):
        results = [results]
    if isinstance(results, Mapping):
        return {_file_stem(str(k)): v for k, v in results.items()}
    named: dict[str, xr.DataArray] = {}
    for result in results:
        stem = _file_stem(_stem(result))
        name, n = stem, 2
        while name in named:
            name, n = f"{stem}_{n}", n + 1
        named[name] = result
    return named


def _stem(result: xr.DataArray) -> str:
    attrs = result.attrs
    parts = [str(attrs.get("site") or result.name or "result")]
    if "direction" in result.dims:
        parts.append("_".join(str(d) for d in result.direction.values))
    elif attrs.get("direction"):
        parts.append(str(attrs["direction"]))
    if "corruption" in result.dims:
        parts.append("corruptions")
    return "_".join(parts)


def _file_stem(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_") or "result"


def _text(text: str) -> str:
    # A "$" would start matplotlib's mathtext; tokens and prompts are plain text.
    return text.replace("$", r"\$")

"""Interactive figures of results (plotly): layer heatmaps, and lines for curves such as Pareto fronts.

`show(result)` is what a notebook wants: it returns a plotly Figure, which notebooks render.
Pages (report/html.py) and static images (report/png.py) are built elsewhere; what goes in which
panel is decided by report/layout.py for all of them."""

from __future__ import annotations

import html
from collections.abc import Mapping

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

from actpatch.report import layout
from actpatch.report.layout import Grid

COLORSCALE = (
    "RdBu"  # diverging; each direction's scale is centred at its no-effect value, drawn white
)
# Hover values carry 8 significant digits: results are float64 computed from float32 logits,
# so this is every digit that means anything.
VALUE_FORMAT = ".8g"
_LINE_COLOURS = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
)  # plotly's own
_MARGIN_TOP, _MARGIN_BOTTOM = (
    120,
    110,
)  # pixels: two title lines and the menu; three tick lines and the axis title


def show(result: xr.DataArray, metric: str | None = None) -> go.Figure:
    """A result as a plotly Figure: layer heatmaps, or a line where a single dimension is left.

        from actpatch import report
        report.show(res)                      # in a notebook, the figure renders in place
        report.show(res, metric="logit_diff")

    Results with several metrics get a menu to switch between them; `metric` picks the first shown."""
    if layout.is_layer_grid(result):
        return heatmaps(result, metric)
    return line_plot(result, metric=metric)


def heatmaps(result: xr.DataArray, metric: str | None = None) -> go.Figure:
    """Layer × position (or × head, × KV head, × neuron) heatmaps, one panel per direction, corruption
    or other extra coordinate. Each direction has its own colour scale, white at the value of a patch
    that changes nothing (normalised logit difference: 0 denoising, 1 noising), and all scales span
    the same distance from their centres, so that panels compare by eye. A result with intervals
    (`stat`: value, lo, hi) shows `value`, with `value [lo, hi]` on hover, and fades the cells
    whose interval holds that no-effect value."""
    metrics = layout.metrics_of(result) or [None]
    chosen = metric or layout.default_metric(result)
    if chosen not in metrics:
        raise ValueError(f"metric must be one of {metrics}, got {metric!r}")
    grids = {m: layout.grid(result, m) for m in metrics}
    shown = grids[chosen]
    figure = make_subplots(
        rows=shown.rows,
        cols=shown.columns_per_row,
        subplot_titles=[_escape(p.title) for p in shown.panels] if len(shown.panels) > 1 else None,
        horizontal_spacing=0.08,
        vertical_spacing=min(0.12, 0.5 / max(shown.rows, 1)),
    )
    for i, panel in enumerate(shown.panels):
        row, col = divmod(i, shown.columns_per_row)
        x = _x_values(result, shown, panel)
        figure.add_trace(
            go.Heatmap(
                z=panel.values,
                x=x,
                y=panel.layers,
                coloraxis=_axis_name(panel.scale),
                customdata=_customdata(panel),
                hovertemplate=_hover(shown.metric, panel),
                name=panel.title or shown.metric,
            ),
            row=row + 1,
            col=col + 1,
        )
        figure.update_xaxes(
            tickmode="array",
            tickvals=x,
            ticktext=["<br>".join(_escape(line) for line in t) for t in panel.ticks],
            tickangle=0,
            title_text=layout.axis_title(shown.column_dim) if row == shown.rows - 1 else None,
            row=row + 1,
            col=col + 1,
        )
        figure.update_yaxes(
            autorange="reversed",
            title_text="layer" if col == 0 else None,
            dtick=1 if len(panel.layers) <= 32 else None,
            row=row + 1,
            col=col + 1,
        )
    # Faded cells are a second, translucent layer of the background over each panel: plotly heatmaps
    # have no hatching, and a layer keeps the colours themselves those of the value.
    for i, panel in enumerate(shown.panels):
        if panel.faded is not None:
            row, col = divmod(i, shown.columns_per_row)
            figure.add_trace(
                _fade(panel, _x_values(result, shown, panel)), row=row + 1, col=col + 1
            )
    figure.update_layout(
        title=dict(text=_title(result, shown)),
        **{
            _axis_name(i): dict(
                colorscale=COLORSCALE,
                **_scale(shown, i),
                colorbar=dict(
                    title=dict(text=_bar_title(shown, i)),
                    len=1 / len(shown.scales),
                    y=1 - (i + 0.5) / len(shown.scales),
                    yanchor="middle",
                ),
            )
            for i in range(len(shown.scales))
        },
        height=_height(shown),
        margin=dict(t=_MARGIN_TOP, b=_MARGIN_BOTTOM),
        plot_bgcolor=BACKGROUND,
        paper_bgcolor=BACKGROUND,
    )
    if len(grids) > 1:
        # The menu sits 40 px above the panels: clear of the subplot titles below it and of the
        # toolbar above it. Menus are placed in plot fractions, so the pixels are converted here.
        above = 1 + 40 / (_height(shown) - _MARGIN_TOP - _MARGIN_BOTTOM)
        figure.update_layout(updatemenus=[_metric_menu(result, grids, chosen, y=above)])
    return figure


def line_plot(
    curve: xr.DataArray,
    *,
    x: str | None = None,
    metric: str | None = None,
    title: str | None = None,
    x_label: str | None = None,
    y_label: str | None = None,
    references: Mapping[str, float] | None = None,
) -> go.Figure:
    """A 1-D DataArray as a line, e.g. recovered performance against circuit size (dim `size`).

    A second dimension draws one line per value (e.g. one per ranking method). `references` draws
    labelled horizontal lines; for normalised logit difference they default to corrupt = 0, clean = 1,
    the two ends a circuit's performance is read between. A curve with intervals (a `stat`
    dimension: value, lo, hi) is drawn at `value`, in a translucent band from `lo` to `hi`."""
    if "metric" in curve.dims:
        metric = metric or layout.default_metric(curve)
        curve = curve.sel(metric=metric)
    if "batch" in curve.dims:
        curve = curve.mean("batch", keep_attrs=True)
    bounds = None
    if "stat" in curve.dims:  # an interval per point: the line is the value, a band spans [lo, hi]
        bounds = curve.sel(stat=["lo", "hi"])
        curve = curve.sel(stat="value", drop=True)
    x = x or (
        curve.dims[0]
        if curve.ndim == 1
        else next((d for d in ("size", "k", "step") if d in curve.dims), None)
    )
    if x is None or x not in curve.dims or curve.ndim > 2:
        raise ValueError(
            f"a line plot needs one dimension for x (and at most one more); this curve has {list(curve.dims)}: pass x="
        )
    others = [d for d in curve.dims if d != x]
    lines = (
        [(str(v), curve.sel({others[0]: v})) for v in curve[others[0]].values]
        if others
        else [(None, curve)]
    )
    y_name = y_label or metric or str(curve.name or "value")
    figure = go.Figure()
    for i, (name, line) in enumerate(lines):
        colour = _LINE_COLOURS[i % len(_LINE_COLOURS)]
        hover = f"{_escape(x)} %{{x}}<br>{_escape(y_name)} = %{{y:{VALUE_FORMAT}}}"
        band = None
        if bounds is not None:
            band = (
                (bounds.sel({others[0]: line[others[0]].values.item()}) if others else bounds)
                .transpose(x, "stat")
                .values
            )
            figure.add_trace(
                go.Scatter(
                    x=np.concatenate([line[x].values, line[x].values[::-1]]),
                    y=np.concatenate([band[:, 1], band[:, 0][::-1]]),
                    fill="toself",
                    fillcolor=colour,
                    opacity=0.2,
                    line=dict(width=0),
                    hoverinfo="skip",
                    showlegend=False,
                    name=_escape(f"{name or y_name} interval"),
                )
            )
            hover += (
                " [%{customdata[0]:" + VALUE_FORMAT + "}, %{customdata[1]:" + VALUE_FORMAT + "}]"
            )
        figure.add_trace(
            go.Scatter(
                x=line[x].values,
                y=line.values,
                mode="lines+markers",
                name=_escape(name or y_name),
                line=dict(color=colour),
                customdata=band,
                hovertemplate=hover + "<extra></extra>",
            )
        )
    if references is None and (metric or curve.name) == layout.DEFAULT_METRIC:
        references = {"clean": 1.0, "corrupt": 0.0}
    for label, level in (references or {}).items():
        figure.add_hline(
            y=level, line_dash="dot", line_color="grey", annotation_text=_escape(label)
        )
    figure.update_layout(
        title=dict(text=_escape(title or curve.attrs.get("title") or str(curve.name or y_name))),
        xaxis_title=_escape(x_label or x),
        yaxis_title=_escape(y_name),
        showlegend=bool(others),
        height=450,
    )
    return figure


def _x_values(result: xr.DataArray, grid: Grid, panel) -> list:
    # Positions are drawn at their index, labelled by token: a categorical axis would merge two
    # columns that carry the same token (" John" at S1 and S2).
    if grid.column_dim in (None, "pos"):
        return list(range(len(panel.ticks)))
    return [
        int(v) if isinstance(v, (int, np.integer)) else str(v)
        for v in result[grid.column_dim].values
    ]


FADED_NAME = "interval holds the no-effect value"
BACKGROUND = "white"  # of every plot: faded cells are drawn towards it, so that they recede
FADE_OPACITY = 0.7
# An opaque colour at a trace opacity: plotly.js has interpolated rgba colour scales towards black
# (a grey veil over near-white cells), while a heatmap's own opacity always composites.
_FADE_SCALE = [[0, BACKGROUND], [1, BACKGROUND]]


def _customdata(panel) -> np.ndarray:
    """Per cell, its column's description; with intervals, also `[lo, hi]`."""
    columns = np.broadcast_to(
        np.array([_escape(h) for h in panel.hover], dtype=object), panel.values.shape
    )
    if panel.intervals is None:
        return columns
    bounds = np.vectorize(
        lambda lo, hi: f"[{lo:{VALUE_FORMAT}}, {hi:{VALUE_FORMAT}}]", otypes=[object]
    )(panel.intervals[..., 0], panel.intervals[..., 1])
    return np.stack([columns, bounds], axis=-1)


def _hover(metric: str, panel=None) -> str:
    if panel is not None and panel.intervals is not None:
        return (
            f"layer %{{y}}<br>%{{customdata[0]}}<br>{_escape(metric)} = %{{z:{VALUE_FORMAT}}} "
            "%{customdata[1]}<extra></extra>"
        )
    return f"layer %{{y}}<br>%{{customdata}}<br>{_escape(metric)} = %{{z:{VALUE_FORMAT}}}<extra></extra>"


def _fade_values(panel) -> np.ndarray:
    return np.where(panel.faded, 1.0, np.nan)


def _fade(panel, x: list) -> go.Heatmap:
    return go.Heatmap(
        z=_fade_values(panel),
        x=x,
        y=panel.layers,
        colorscale=_FADE_SCALE,
        opacity=FADE_OPACITY,
        showscale=False,
        hoverinfo="skip",
        name=FADED_NAME,
    )


def _metric_menu(
    result: xr.DataArray, grids: dict[str | None, Grid], chosen: str | None, *, y: float
) -> dict:
    buttons = []
    for metric, grid in grids.items():
        axes: dict[str, object] = {}
        for i in range(len(grid.scales)):
            axes.update({f"{_axis_name(i)}.{key}": value for key, value in _scale(grid, i).items()})
            axes[f"{_axis_name(i)}.colorbar.title.text"] = _bar_title(grid, i)
        faded = [p for p in grid.panels if p.faded is not None]
        buttons.append(
            dict(
                label=str(metric),
                method="update",
                args=[
                    # One entry per trace, in figure order: the panels, then their faded layers.
                    {
                        "z": [p.values for p in grid.panels] + [_fade_values(p) for p in faded],
                        "customdata": [_customdata(p) for p in grid.panels] + [None] * len(faded),
                        "hovertemplate": [_hover(grid.metric, p) for p in grid.panels]
                        + [None] * len(faded),
                    },
                    {**axes, "title.text": _title(result, grid)},
                ],
            )
        )
    return dict(
        buttons=buttons,
        active=list(grids).index(chosen),
        direction="down",
        x=1.0,
        xanchor="right",
        y=y,
        yanchor="bottom",
        showactive=True,
    )


def _axis_name(scale: int) -> str:
    return "coloraxis" if scale == 0 else f"coloraxis{scale + 1}"


def _scale(grid: Grid, scale: int) -> dict[str, float]:
    low, high = grid.limits(scale)
    return {"cmid": grid.scales[scale].centre, "cmin": low, "cmax": high}


def _bar_title(grid: Grid, scale: int) -> str:
    # The colour bar says where white is: on the noising panel it is 1, not 0.
    label = grid.scales[scale].label
    return _escape(grid.metric) + (f"<br><sup>{_escape(label)}</sup>" if label else "")


def _title(result: xr.DataArray, grid: Grid) -> str:
    text = f"{_escape(layout.title(result))}<br><sup>{_escape(grid.metric)}"
    if grid.note:
        text += f"; {_escape(grid.note)}"
    return text + "</sup>"


def _height(grid: Grid) -> int:
    per_row = max(260, 18 * max(len(p.layers) for p in grid.panels) + 120)
    return int(per_row * grid.rows + 120)


def _escape(text: str) -> str:
    # Plotly reads a few HTML tags in every string it draws: a token like "<br>" or "<23>" must stay text.
    return html.escape(str(text), quote=False)

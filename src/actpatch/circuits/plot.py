"""A Pareto frontier as an interactive figure. Plotly is imported here only, when a figure is asked for."""

from __future__ import annotations

from collections.abc import Sequence

import xarray as xr

from actpatch.circuits.frontier import smallest_circuit


def plot_frontier(
    frontier: xr.DataArray,
    *,
    recoveries: Sequence[float] = (0.8, 0.9),
    metric: str = "norm_logit_diff",
):
    """A plotly figure of `metric` against circuit size, each point labelled with the component
    added there, and a dotted line at each of `recoveries` with the smallest circuit reaching it.
    A frontier with intervals (`ci=`) is drawn at its value inside a band from lo to hi."""
    try:
        import plotly.graph_objects as go
    except ImportError as error:
        raise ImportError(
            "plot_frontier draws with plotly, which is not installed: pip install plotly"
        ) from error
    values = frontier.sel(metric=metric)
    sizes = frontier["size"].values.tolist()
    labels = [str(c) or "(none)" for c in frontier["component"].values]
    figure = go.Figure()
    hover = "size %{x}: %{y:.3f}<br>added %{text}<extra></extra>"
    if "stat" in values.dims:
        lo, hi = (values.sel(stat=s).values.tolist() for s in ("lo", "hi"))
        figure.add_trace(
            go.Scatter(
                x=sizes + sizes[::-1],
                y=hi + lo[::-1],
                fill="toself",
                opacity=0.25,
                line=dict(width=0),
                hoverinfo="skip",
                name=f"{100 * frontier.attrs['interval']['ci']:g} % interval",
            )
        )
        labels = [f"{label}<br>[{a:.3f}, {b:.3f}]" for label, a, b in zip(labels, lo, hi)]
        values = values.sel(stat="value")
    figure.add_trace(
        go.Scatter(
            x=sizes,
            y=values.values.tolist(),
            mode="lines+markers",
            text=labels,
            hovertemplate=hover,
            name=metric,
        )
    )
    for recovery in recoveries:
        circuit = smallest_circuit(frontier, recovery, metric=metric)
        level = recovery if frontier.attrs["direction"] == "denoise" else 1 - recovery
        note = (
            f"{recovery:.0%}: {len(circuit)} components"
            if circuit is not None
            else f"{recovery:.0%}: not reached"
        )
        figure.add_hline(y=level, line_dash="dot", annotation_text=note)
    figure.update_layout(
        title=f"Pareto frontier ({frontier.attrs['direction']}, ablation: {frontier.attrs['ablation']})",
        xaxis_title="circuit size (components, strongest first)",
        yaxis_title=metric,
        template="plotly_white",
    )
    return figure

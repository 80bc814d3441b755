"""A Pareto frontier as an interactive figure. Plotly is imported here only, when a figure is asked for."""
from __future__ import annotations

from typing import Sequence

import xarray as xr

from actpatch.circuits.frontier import smallest_circuit


def plot_frontier(frontier: xr.DataArray, *, recoveries: Sequence[float] = (0.8, 0.9), metric: str = "norm_logit_diff"):
    """A plotly figure of `metric` against circuit size, each point labelled with the component
    added there, and a dotted line at each of `recoveries` with the smallest circuit reaching it."""
    try:
        import plotly.graph_objects as go
    except ImportError as error:
        raise ImportError("plot_frontier draws with plotly, which is not installed: pip install plotly") from error
    values = frontier.sel(metric=metric)
    sizes = frontier["size"].values.tolist()
    labels = [str(c) or "(none)" for c in frontier["component"].values]
    figure = go.Figure(go.Scatter(x=sizes, y=values.values.tolist(), mode="lines+markers", text=labels,
                                  hovertemplate="size %{x}: %{y:.3f}<br>added %{text}<extra></extra>", name=metric))
    for recovery in recoveries:
        circuit = smallest_circuit(frontier, recovery, metric=metric)
        level = recovery if frontier.attrs["direction"] == "denoise" else 1 - recovery
        note = f"{recovery:.0%}: {len(circuit)} components" if circuit is not None else f"{recovery:.0%}: not reached"
        figure.add_hline(y=level, line_dash="dot", annotation_text=note)
    figure.update_layout(
        title=f"Pareto frontier ({frontier.attrs['direction']}, ablation: {frontier.attrs['ablation']})",
        xaxis_title="circuit size (components, strongest first)", yaxis_title=metric, template="plotly_white",
    )
    return figure

"""A DAS result as a report section: its accuracy beside every control, and where prompts fall.

A learned subspace is judged by comparison, so the section puts every number side by side: the
subspace on held-out pairs next to the same subspace on its training pairs, the whole component,
the parts the next weights read and ignore, random subspaces of the same rank and the search on
a re-initialised model, each with its interval. The projection plot shows each held-out prompt's
coordinate along the learned direction in the source and target runs: a variable the model
stores there separates the runs' values; an illusion often does not."""

from __future__ import annotations

import html

import numpy as np
import plotly.graph_objects as go
import xarray as xr
from plotly.subplots import make_subplots

from actpatch.report.html import Section, provenance_html
from actpatch.subspace.result import CONTROLS, DASResult

# What each control patches, as a reader needs it beside the number.
DESCRIBED = {
    "subspace": "the learned subspace, held-out pairs",
    "subspace_train": "the learned subspace, its training pairs",
    "full_component": "the whole component (x_t ← x_s)",
    "row_space": "the part the next weights read",
    "null_space": "the part the next weights ignore",
    "random_subspaces": "random subspaces of the same rank (mean, central interval)",
    "random_model": "the same search on a re-initialised model",
    "unpatched": "nothing (the target run)",
}
SCORE_NAMES = {"iia": "interchange-intervention accuracy", "norm_logit_diff": "norm. logit diff"}
_COLOURS = {"subspace": "#1f77b4", "subspace_train": "#9ecae1"}  # the rest: grey
_LATENTS_DRAWN = 4


def das_section(result: DASResult, title: str | None = None) -> Section:
    """The section of one DAS result: the controls side by side (a figure and a table, with the
    flags), the held-out prompts' projection on the learned subspace, the training loss, and the
    provenance."""
    if not isinstance(result, DASResult):
        raise TypeError(f"das_section draws a DASResult (from actpatch.das), not {result!r}")
    attrs = result.table.attrs
    site = attrs.get("site", str(result.subspace.site))
    figures = [controls_plot(result), projection_plot(result)]
    if result.losses:
        figures.append(_loss_plot(result))
    parts = [_flags(result), controls_table(result), provenance_html(attrs)]
    return Section(
        title or f"DAS at {site}, rank {result.subspace.rank}",
        figures=figures,
        html="\n".join(p for p in parts if p),
    )


def ran(result: DASResult) -> list[str]:
    """The controls this result holds numbers for, in the order a reader compares them."""
    return [
        c
        for c in CONTROLS
        if not np.isnan(float(result.table.sel(control=c, metric="iia", stat="value")))
    ]


def controls_plot(result: DASResult) -> go.Figure:
    """One panel per score: a bar per control at its value, whiskers from lo to hi; each random
    subspace's own value as a point over its bar."""
    controls = ran(result)
    scores = list(SCORE_NAMES)
    figure = make_subplots(
        rows=1, cols=len(scores), subplot_titles=[SCORE_NAMES[s] for s in scores]
    )
    for col, score in enumerate(scores, start=1):
        cells = result.table.sel(metric=score, control=controls)
        value, lo, hi = (cells.sel(stat=s).values for s in ("value", "lo", "hi"))
        figure.add_trace(
            go.Bar(
                x=controls,
                y=value,
                error_y=dict(
                    type="data",
                    array=np.nan_to_num(hi - value),
                    arrayminus=np.nan_to_num(value - lo),
                ),
                marker_color=[_COLOURS.get(c, "#999999") for c in controls],
                customdata=np.array(
                    list(zip(lo, hi, [DESCRIBED[c] for c in controls])), dtype=object
                ),
                hovertemplate="%{x}: %{y:.4g} [%{customdata[0]:.4g}, %{customdata[1]:.4g}]"
                "<br>%{customdata[2]}<extra></extra>",
                name=score,
                showlegend=False,
            ),
            row=1,
            col=col,
        )
        if "random_subspaces" in controls and result.random_subspaces.sizes["draw"]:
            draws = result.random_subspaces.sel(metric=score).values
            figure.add_trace(
                go.Scatter(
                    x=["random_subspaces"] * len(draws),
                    y=draws,
                    mode="markers",
                    marker=dict(color="black", size=5, opacity=0.5),
                    name="each random subspace",
                    showlegend=col == 1,
                    hovertemplate="a random subspace: %{y:.4g}<extra></extra>",
                ),
                row=1,
                col=col,
            )
    figure.update_layout(
        title=html.escape(
            f"Held-out accuracy beside its controls ({len(result.test)} held-out, "
            f"{len(result.train)} training pairs)"
        ),
        height=450,
    )
    figure.update_yaxes(title_text="held-out value (training pairs for subspace_train)", col=1)
    return figure


def projection_plot(result: DASResult) -> go.Figure:
    """Each held-out prompt's coordinate x·u along each learned direction u, in the source run
    (the value patched in) and the target run (the value it replaced), joined per prompt; one
    panel per direction (the first few). A subspace over every position is drawn at the last."""
    projection = result.projection
    note = ""
    if "pos" in projection.dims:
        projection = projection.isel(pos=-1)
        note = " (every position patched; drawn at the last)"
    latents = list(range(min(projection.sizes["latent"], _LATENTS_DRAWN)))
    figure = make_subplots(
        rows=len(latents), cols=1, shared_xaxes=True, subplot_titles=[f"u{i}" for i in latents]
    )
    prompts = [str(b) for b in projection["batch"].values]
    text = _prompt_text(result.table.attrs, projection["batch"].values)
    for row, latent in enumerate(latents, start=1):
        source = projection.sel(run="source").isel(latent=latent).values
        target = projection.sel(run="target").isel(latent=latent).values
        joins_x = [v for p in prompts for v in (p, p, None)]
        joins_y = [v for s, t in zip(source, target) for v in (float(s), float(t), None)]
        figure.add_trace(
            go.Scatter(
                x=joins_x,
                y=joins_y,
                mode="lines",
                line=dict(color="#cccccc", width=1),
                hoverinfo="skip",
                showlegend=False,
            ),
            row=row,
            col=1,
        )
        for run, values, colour in (("source", source, "#d62728"), ("target", target, "#1f77b4")):
            figure.add_trace(
                go.Scatter(
                    x=prompts,
                    y=values,
                    mode="markers",
                    marker=dict(color=colour, size=7),
                    name=f"{run} run",
                    legendgroup=run,
                    showlegend=row == 1,
                    text=text,
                    hovertemplate=f"pair %{{x}}, {run} run: %{{y:.4g}}<br>%{{text}}<extra></extra>",
                ),
                row=row,
                col=1,
            )
    figure.update_xaxes(type="category", title_text="held-out pair", row=len(latents), col=1)
    figure.update_layout(
        title=html.escape(f"Held-out prompts projected on the learned subspace{note}"),
        height=200 + 220 * len(latents),
    )
    return figure


def controls_table(result: DASResult) -> str:
    """The numbers of the controls plot as an HTML table, with what each control patches."""
    header = "".join(f"<th>{html.escape(SCORE_NAMES[s])}</th>" for s in SCORE_NAMES)
    rows = []
    for control in CONTROLS:
        cells = result.table.sel(control=control)
        if np.isnan(float(cells.sel(metric="iia", stat="value"))):
            numbers = "<td>not run</td>" * len(SCORE_NAMES)
        else:
            numbers = "".join(_cell(cells.sel(metric=s)) for s in SCORE_NAMES)
        rows.append(
            f"<tr><th>{control}</th><td>{html.escape(DESCRIBED[control])}</td>{numbers}</tr>"
        )
    interval = result.table.attrs.get("interval", {})
    ci = interval.get("ci") if isinstance(interval, dict) else None
    caption = f"value [lo, hi], {100 * ci:g} % bootstrap intervals over prompts" if ci else ""
    return (
        f"<h3>Controls</h3><p>{html.escape(caption)}</p><table class='numbers'>"
        f"<tr><th>control</th><th>patches</th>{header}</tr>{''.join(rows)}</table>"
    )


def _cell(cell: xr.DataArray) -> str:
    value, lo, hi = (float(cell.sel(stat=s)) for s in ("value", "lo", "hi"))
    return f"<td>{value:.3f} [{lo:.3f}, {hi:.3f}]</td>"


def _flags(result: DASResult) -> str:
    if not result.flags:
        return (
            "<h3>Guards</h3><p class='ok'>No guard raised a flag (the guards run passed; that is "
            "not proof of a variable).</p>"
        )
    items = "".join(f"<li class='failed'>{html.escape(flag)}</li>" for flag in result.flags)
    return f"<h3>Guards: {len(result.flags)} flag(s)</h3><ul>{items}</ul>"


def _loss_plot(result: DASResult) -> go.Figure:
    every = result.table.attrs.get("training", {}).get("check_every", 1)
    steps = [i * every for i in range(len(result.losses))]
    steps[-1] = min(steps[-1], result.table.attrs.get("steps_run", steps[-1]))
    figure = go.Figure(go.Scatter(x=steps, y=list(result.losses), mode="lines+markers"))
    figure.update_layout(
        title="Training loss (cross-entropy on the counterfactual answers, training pairs)",
        xaxis_title="optimiser step",
        yaxis_title="loss",
        height=350,
    )
    return figure


def _prompt_text(attrs: dict, rows: np.ndarray) -> list[str]:
    clean, corrupt = attrs.get("clean_prompts") or [], attrs.get("corrupt_prompts") or []
    if len(clean) <= int(max(rows, default=0)) or len(corrupt) != len(clean):
        return [""] * len(rows)
    return [
        html.escape(f"clean: {clean[int(i)]!r}")
        + "<br>"
        + html.escape(f"corrupt: {corrupt[int(i)]!r}")
        for i in rows
    ]

"""Figures of edge circuits: faithfulness curves (with a node circuit's frontier on the same axis)
and a picture of the circuit itself, nodes placed by layer and head.

    from actpatch import graph, report
    curve = graph.faithfulness_curve(model, pairs, scores)
    report.faithfulness_plot(curve, frontier, graph=graph.Graph.of(model))   # edges and nodes, one axis
    report.circuit_plot(scores, graph.top_edges(scores, percent=5))          # the circuit, hover for scores

Not here: computing curves or scores (`actpatch.graph`), pages (`report/html.py`)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import plotly.graph_objects as go
import xarray as xr

if TYPE_CHECKING:
    from torch import Tensor

    from actpatch.graph import EdgeScores, Graph

NODE_AXIS_NOTE = (
    "node circuit: x = its edges (every edge between two of its nodes, Graph.node_circuit) "
    "as a percent of the graph's edges"
)
_HELPS, _HURTS = (
    "#2166ac",
    "#b2182b",
)  # positive scores help the clean behaviour (blue), negative hurt it (red)
_WIDTH_BINS = 4  # edges are drawn in this many widths per sign: one trace each, not one per edge


def faithfulness_plot(
    edge_curve: xr.DataArray,
    node_frontier: xr.DataArray | None = None,
    *,
    graph: Graph | None = None,
) -> go.Figure:
    """The edge circuit's faithfulness against the percent of edges it keeps (log scale), with CPR
    and CMD in the title; with `node_frontier` (`actpatch.pareto_frontier`'s result) its recovered
    performance on the same axis.

    A node circuit is placed at the share of the graph's edges its nodes' edges make up (`graph`,
    `Graph.of(model)`, is needed for that): the node circuit evaluated as the edge circuit between
    its nodes is the same intervention (docs/edges.md), and its normalised logit difference is the
    edge curve's faithfulness when both ablate to the corrupt run. The caption says so."""
    faithful = edge_curve.sel(metric="faithfulness") if "metric" in edge_curve.dims else edge_curve
    band = None
    if "stat" in faithful.dims:  # graph.curve_intervals: a band over each size's interval
        band, faithful = faithful.sel(stat=["lo", "hi"]), faithful.sel(stat="value", drop=True)
    if faithful.dims != ("percent",):
        raise ValueError(
            f"an edge curve has a percent dimension (graph.faithfulness_curve), got {list(edge_curve.dims)}"
        )
    edges = (
        faithful["n_edges"].values
        if "n_edges" in faithful.coords
        else [None] * faithful.sizes["percent"]
    )
    figure = go.Figure(
        go.Scatter(
            x=faithful["percent"].values,
            y=faithful.values,
            mode="lines+markers",
            name=f"edges ({edge_curve.attrs.get('method', 'scores')})",
            customdata=np.array(edges, dtype=object)[:, None],
            hovertemplate="%{x:.4g}% of edges (%{customdata[0]} after pruning)<br>faithfulness %{y:.4f}<extra></extra>",
        )
    )
    caption = [
        "edge circuit: the top edges by |score|, pruned; "
        "f = (m(C) − m(∅)) / (m(full) − m(∅)) on the mean logit difference"
    ]
    if band is not None:
        x = faithful["percent"].values
        lo, hi = band.sel(stat="lo").values, band.sel(stat="hi").values
        figure.add_trace(
            go.Scatter(
                x=np.concatenate([x, x[::-1]]),
                y=np.concatenate([hi, lo[::-1]]),
                fill="toself",
                fillcolor="rgba(31, 119, 180, 0.18)",
                line={"width": 0},
                hoverinfo="skip",
                name=f"{100 * edge_curve.attrs['interval']['ci']:g} % interval (prompts resampled)"
                if isinstance(edge_curve.attrs.get("interval"), dict)
                else "interval",
            )
        )
        figure.data[0].customdata = np.stack([np.array(edges, dtype=object), lo, hi], axis=1)
        figure.data[0].hovertemplate = (
            "%{x:.4g}% of edges (%{customdata[0]} after pruning)<br>faithfulness %{y:.4f} "
            "[%{customdata[1]:.4f}, %{customdata[2]:.4f}]<extra></extra>"
        )
    if node_frontier is not None:
        if graph is None:
            raise ValueError(
                "placing a node frontier on the axis of edges needs graph=Graph.of(model)"
            )
        percents, _ = node_percents(node_frontier, graph)
        performance = node_frontier.sel(metric="norm_logit_diff").values
        shown = percents > 0  # a log axis has no place for a circuit without edges
        components = (
            node_frontier["component"].values
            if "component" in node_frontier.coords
            else [""] * len(percents)
        )
        figure.add_trace(
            go.Scatter(
                x=percents[shown],
                y=performance[shown],
                mode="lines+markers",
                name="nodes (Pareto frontier)",
                customdata=np.stack(
                    [
                        node_frontier["size"].values[shown],
                        np.asarray(components, dtype=object)[shown],
                    ],
                    axis=1,
                ),
                hovertemplate="%{customdata[0]} components (last added %{customdata[1]})<br>%{x:.4g}% of edges"
                "<br>norm_logit_diff %{y:.4f}<extra></extra>",
            )
        )
        caption.append(
            NODE_AXIS_NOTE
            + "; y = its norm_logit_diff, the same normalisation as f under corrupt-run ablation"
            + (
                f"; {dropped} size(s) with no edges left off the log axis"
                if (dropped := int((~shown).sum()))
                else ""
            )
        )
    for label, level in (("full circuit", 1.0), ("empty circuit", 0.0)):
        figure.add_hline(
            y=level,
            line_dash="dot",
            line_color="grey",
            annotation_text=label,
            annotation_position="bottom right",
        )
    cpr, cmd = edge_curve.attrs.get("cpr"), edge_curve.attrs.get("cmd")
    summary = (
        f"CPR {cpr:.3f}, CMD {cmd:.3f}"
        if isinstance(cpr, (int, float)) and isinstance(cmd, (int, float))
        else ""
    )
    if summary and "cpr_lo" in edge_curve.attrs:
        a = edge_curve.attrs
        summary = f"CPR {cpr:.3f} [{a['cpr_lo']:.3f}, {a['cpr_hi']:.3f}], CMD {cmd:.3f} [{a['cmd_lo']:.3f}, {a['cmd_hi']:.3f}]"
    figure.update_layout(
        title=f"Faithfulness against circuit size{': ' + summary if summary else ''}",
        xaxis={"type": "log", "title": "percent of edges (log scale)"},
        yaxis={"title": "faithfulness"},
        height=520,
        margin={"b": 150},
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom"},
        annotations=[
            *figure.layout.annotations,
            go.layout.Annotation(
                text="<br>".join(caption),
                showarrow=False,
                xref="paper",
                yref="paper",
                x=0,
                y=-0.22,
                xanchor="left",
                yanchor="top",
                align="left",
                font={"size": 11, "color": "#555"},
            ),
        ],
    )
    return figure


def node_percents(frontier: xr.DataArray, graph: Graph) -> tuple[np.ndarray, list[list[str]]]:
    """Each frontier size's node circuit as a percent of `graph`'s edges, and its nodes.

    Denoising keeps the top-k of the ranking and ablates the rest of the frontier's `components`;
    noising knocks the top-k out. Nodes of kinds the frontier never ablates (MLPs and the input for
    a frontier of heads) stay in the circuit, as they ran untouched."""
    from actpatch.sites import Site

    ranking = [Site.parse(s) for s in frontier.attrs["ranking"]]
    universe = [Site.parse(s) for s in frontier.attrs.get("components", frontier.attrs["ranking"])]
    if positioned := [s for s in (*ranking, *universe) if s.pos is not None]:
        raise ValueError(
            f"edges span every position, so a frontier of components at one position ({positioned[0]}) "
            "has no edge circuit: rank components over all positions"
        )
    ablated = {_node(s) for s in universe}
    percents, node_sets = [], []
    for size in frontier["size"].values.tolist():
        top = {_node(s) for s in ranking[:size]}
        kept = top if frontier.attrs.get("direction", "denoise") == "denoise" else ablated - top
        nodes = [n for n in graph.nodes if n not in ablated or n in kept]
        node_sets.append(nodes)
        percents.append(100 * int(graph.node_circuit(nodes).sum()) / graph.n_edges)
    return np.array(percents, dtype=float), node_sets


def _node(site) -> str:
    if site.kind == "head":
        return f"a{site.layer}.h{site.head}"
    if site.kind == "mlp_out":
        return f"m{site.layer}"
    if site.kind == "resid_pre":
        return "input"
    raise ValueError(f"{site} is not a component of the edge graph (heads, MLPs and the input are)")


DRAWN_EDGES = 40  # the default picture: the strongest edges up to this budget (all: max_edges=None)
LABELLED_NODES = 12  # nodes named on the picture: those whose drawn edges carry the most |score|
_MEMBER, _OUTSIDE = "#333", "white"  # filled: in the circuit; hollow: not in it
_NODE_LINE = {"color": "#999", "width": 1}


def circuit_plot(
    scores: EdgeScores,
    circuit: Tensor,
    *,
    max_edges: int | None = DRAWN_EDGES,
    labels: int = LABELLED_NODES,
) -> go.Figure:
    """The circuit's nodes by layer (x) and head (y; the MLP above the heads), its strongest
    `max_edges` edges drawn (None: every edge), width by |score| and blue where the edge helps the
    clean behaviour, red where it hurts; hovering a node or an edge's midpoint gives the scores.

    Nodes in the circuit are filled, the others hollow, and those on a drawn edge larger and
    darker; the `labels` nodes whose drawn edges carry the most |score| are named. A circuit of
    thousands of edges drawn whole is a hairball: the default budget shows its backbone, which
    the legend says."""
    graph = scores.graph
    circuit = graph.checked(circuit)
    values = scores.scores.double()
    place = _places(graph)
    magnitude = values.abs().nan_to_num(nan=0.0)  # unscored edges (NaN, from a file) drawn last
    inside = sorted(circuit.nonzero().tolist(), key=lambda sr: -float(magnitude[sr[0], sr[1]]))
    drawn = inside if max_edges is None else inside[:max_edges]
    figure = go.Figure()
    strongest = max((float(magnitude[s, r]) for s, r in drawn), default=0.0) or 1.0
    for sign, colour in ((1, _HELPS), (-1, _HURTS)):
        for b in range(_WIDTH_BINS):
            xs: list[float | None] = []
            ys: list[float | None] = []
            for s, r in drawn:
                helps = not float(values[s, r]) < 0
                if (
                    helps != (sign > 0)
                    or min(int(float(magnitude[s, r]) / strongest * _WIDTH_BINS), _WIDTH_BINS - 1)
                    != b
                ):
                    continue
                (x0, y0), (x1, y1) = place[graph.senders[s]], place[graph.receiver_node(r)]
                xs += [x0, x1, None]
                ys += [y0, y1, None]
            if xs:
                figure.add_trace(
                    go.Scatter(
                        x=xs,
                        y=ys,
                        mode="lines",
                        hoverinfo="skip",
                        showlegend=False,
                        line={"color": colour, "width": 0.6 + 1.6 * b},
                        opacity=0.35 + 0.15 * b,
                    )
                )
    for trace in _legend():
        figure.add_trace(trace)
    if drawn:
        mids = [
            tuple(
                (a + c) / 2 for a, c in zip(place[graph.senders[s]], place[graph.receiver_node(r)])
            )
            for s, r in drawn
        ]
        figure.add_trace(
            go.Scatter(
                x=[m[0] for m in mids],
                y=[m[1] for m in mids],
                mode="markers",
                showlegend=False,
                marker={
                    "size": 5,
                    "color": [_HELPS if float(values[s, r]) >= 0 else _HURTS for s, r in drawn],
                    "opacity": 0.5,
                },
                text=[
                    f"{graph.edge_name(s, r)}<br>score {float(values[s, r]):.6g}" for s, r in drawn
                ],
                hovertemplate="%{text}<extra></extra>",
            )
        )
    total_in = circuit.double() * magnitude
    sent, received = total_in.sum(1).tolist(), total_in.sum(0).tolist()
    receiving = {name: 0.0 for name in graph.nodes}
    for r, amount in enumerate(received):
        receiving[graph.receiver_node(r)] += amount
    carried = {name: 0.0 for name in graph.nodes}  # |score| of the drawn edges at each node
    for s, r in drawn:
        carried[graph.senders[s]] += float(magnitude[s, r])
        carried[graph.receiver_node(r)] += float(magnitude[s, r])
    named = set(
        sorted(
            (n for n in graph.nodes if carried[n] > 0 and n not in ("input", "logits")),
            key=lambda n: -carried[n],
        )[:labels]
    )
    from actpatch.graph import nodes_in_circuit

    member = nodes_in_circuit(graph, circuit)
    names = list(graph.nodes)
    sending = dict(zip(graph.senders, sent))
    on_drawn = [carried[n] > 0 for n in names]
    figure.add_trace(
        go.Scatter(
            x=[place[n][0] for n in names],
            y=[place[n][1] for n in names],
            mode="markers+text",
            showlegend=False,
            marker={
                "size": [13 if on else 8 for on in on_drawn],
                "opacity": [1.0 if on else 0.35 for on in on_drawn],
                "symbol": ["square" if n.startswith("m") else "circle" for n in names],
                "color": [_MEMBER if member[n] else _OUTSIDE for n in names],
                "line": _NODE_LINE,
            },
            text=[n if n in named else "" for n in names],
            textposition="top center",
            textfont={"size": 10},
            hovertext=[
                f"{n} ({'in' if member[n] else 'not in'} the circuit)<br>Σ|score| of its "
                f"circuit edges: out {sending.get(n, 0.0):.4g}, in {receiving[n]:.4g}"
                for n in names
            ],
            hovertemplate="%{hovertext}<extra></extra>",
        )
    )
    shown = (
        f"the {len(drawn)} strongest of its {len(inside)} edges"
        if len(drawn) < len(inside)
        else f"its {len(inside)} edges"
    )
    figure.update_layout(
        title=f"The circuit: {sum(member.values())} nodes, {shown} (blue helps, red hurts; width |score|)",
        xaxis={
            "title": "layer",
            "tickvals": list(range(-1, graph.n_layers + 1)),
            "ticktext": ["input", *map(str, range(graph.n_layers)), "logits"],
            "zeroline": False,
        },
        yaxis={
            "title": "head",
            "tickvals": list(range(graph.n_heads + 1)),
            "ticktext": [*map(str, range(graph.n_heads)), "MLP"],
            "zeroline": False,
        },
        height=max(420, 40 * (graph.n_heads + 2)),
        plot_bgcolor="white",
        hovermode="closest",
        legend={"orientation": "h", "y": 1.0, "yanchor": "bottom", "x": 0, "xanchor": "left"},
    )
    return figure


def _legend() -> list[go.Scatter]:
    """Legend entries only (no points): what filled, hollow, large, blue and red mean."""

    def entry(name: str, **style) -> go.Scatter:
        return go.Scatter(x=[None], y=[None], name=name, showlegend=True, hoverinfo="skip", **style)

    return [
        entry(
            "node in the circuit",
            mode="markers",
            marker={"color": _MEMBER, "size": 10, "line": _NODE_LINE},
        ),
        entry(
            "node not in the circuit",
            mode="markers",
            marker={"color": _OUTSIDE, "size": 10, "line": _NODE_LINE},
        ),
        entry(
            "larger, darker: on a drawn edge",
            mode="markers",
            marker={"color": _MEMBER, "size": 14, "line": _NODE_LINE},
        ),
        entry("edge helps the clean behaviour", mode="lines", line={"color": _HELPS, "width": 3}),
        entry("edge hurts it", mode="lines", line={"color": _HURTS, "width": 3}),
    ]


def _places(graph: Graph) -> dict[str, tuple[float, float]]:
    # x: the layer (input before layer 0, logits after the last); y: the head, the MLP one row above
    # and slightly right of its layer's heads, which it reads.
    middle = (graph.n_heads - 1) / 2
    place = {"input": (-1.0, middle), "logits": (float(graph.n_layers), middle)}
    for layer in range(graph.n_layers):
        place.update({f"a{layer}.h{h}": (float(layer), float(h)) for h in range(graph.n_heads)})
        place[f"m{layer}"] = (layer + 0.35, float(graph.n_heads))
    return place

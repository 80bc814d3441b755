"""Figures of edge circuits, checked as data: the faithfulness curve and a node frontier on one axis
of edges, and the circuit picture's nodes, edges and hover text."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

from actpatch import graph, report

GRAPH = graph.Graph(n_layers=2, n_heads=2, d_model=16, parallel=False)  # 46 edges


def edge_curve() -> xr.DataArray:
    percents = [0.1, 1.0, 10.0, 100.0]
    values = np.array([[0.1, 0.05], [0.4, 0.3], [0.8, 0.7], [1.0, 1.0]])
    return xr.DataArray(
        values,
        dims=["percent", "metric"],
        name="faithfulness",
        coords={
            "percent": percents,
            "metric": ["faithfulness", "norm_logit_diff"],
            "n_edges": ("percent", [0, 0, 4, 46]),
        },
        attrs={"cpr": 0.9, "cmd": 0.1, "method": "eap"},
    )


def test_the_curve_png_has_a_log_axis_of_percent_of_edges():
    from actpatch.report import png

    figure = png.draw(edge_curve().sel(metric="faithfulness"))
    (ax,) = figure.axes
    assert ax.get_xscale() == "log" and "percent of edges" in ax.get_xlabel()
    np.testing.assert_array_equal(ax.lines[0].get_xdata(), [0.1, 1.0, 10.0, 100.0])


def head_frontier(direction: str = "denoise") -> xr.DataArray:
    ranking = ["head[layer=0, head=0]", "head[layer=1, head=1]"]
    heads = [f"head[layer={layer}, head={head}]" for layer in range(2) for head in range(2)]
    return xr.DataArray(
        [[0.0, 0.6, 0.9]],
        dims=["metric", "size"],
        name="circuit_performance",
        coords={
            "metric": ["norm_logit_diff"],
            "size": [0, 1, 2],
            "component": ("size", ["", *ranking]),
        },
        attrs={"ranking": ranking, "components": heads, "direction": direction},
    )


def test_edge_curve_is_drawn_against_the_percent_of_edges_on_a_log_axis():
    figure = report.faithfulness_plot(edge_curve())
    (line,) = figure.data
    np.testing.assert_array_equal(line.x, [0.1, 1.0, 10.0, 100.0])
    np.testing.assert_array_equal(line.y, [0.1, 0.4, 0.8, 1.0])  # faithfulness, not another metric
    assert (
        figure.layout.xaxis.type == "log" and "percent of edges" in figure.layout.xaxis.title.text
    )
    assert "CPR 0.900, CMD 0.100" in figure.layout.title.text


def test_a_node_frontier_sits_at_the_share_of_edges_between_its_nodes():
    # Heads ranked, so the input, both MLPs and the logits are always in. Size 0: input->m0, m1,
    # logits; m0->m1, logits; m1->logits (6 edges). Size 1 adds a0.h0's q, k, v inputs from the input
    # and its outputs to m0, m1 and the logits (12). Size 2 adds a1.h1: q, k, v from input, a0.h0 and
    # m0 (9) and its outputs to m1 and the logits (2): 23 edges.
    figure = report.faithfulness_plot(edge_curve(), head_frontier(), graph=GRAPH)
    nodes = figure.data[1]
    np.testing.assert_allclose(nodes.x, [100 * 6 / 46, 100 * 12 / 46, 100 * 23 / 46])
    np.testing.assert_array_equal(nodes.y, [0.0, 0.6, 0.9])
    caption = figure.layout.annotations[-1].text
    assert "node circuit: x = its edges" in caption and "percent of the graph's edges" in caption


def test_a_noising_frontier_keeps_the_components_it_did_not_knock_out():
    percents, node_sets = report.edges.node_percents(head_frontier("noise"), GRAPH)
    assert percents[0] == 100.0 and "a0.h0" not in node_sets[1] and "a0.h1" in node_sets[1]


def test_bad_frontiers_are_refused():
    with pytest.raises(ValueError, match=r"needs graph=Graph.of"):
        report.faithfulness_plot(edge_curve(), head_frontier())
    positioned = head_frontier()
    positioned.attrs["ranking"] = ["head[layer=0, head=0, pos=END]"]
    with pytest.raises(ValueError, match="edges span every position"):
        report.faithfulness_plot(edge_curve(), positioned, graph=GRAPH)


def test_circuit_picture_draws_the_strongest_edges_and_hovers_their_scores():
    values = (
        torch.arange(GRAPH.exists.numel(), dtype=torch.float64).view(GRAPH.exists.shape)
        * GRAPH.exists
    )
    values[0, 0] = -200.0  # input->a0.h0<q> hurts the clean behaviour, and most strongly
    scores = graph.EdgeScores(GRAPH, values, "hand")
    circuit = GRAPH.node_circuit(["input", "a0.h0", "m1", "logits"])  # 8 edges
    figure = report.circuit_plot(scores, circuit, max_edges=5)
    midpoints, nodes = figure.data[-2], figure.data[-1]
    assert len(midpoints.x) == 5 and "input->a0.h0<q><br>score -200" in midpoints.text[0]
    assert "#b2182b" in [
        trace.line.color for trace in figure.data[:-2]
    ]  # the hurting edge is drawn red
    member = graph.nodes_in_circuit(GRAPH, circuit)
    assert [c == "#333" for c in nodes.marker.color] == [member[n] for n in GRAPH.nodes]
    assert "the 5 strongest of its 8 edges" in figure.layout.title.text


def test_a_curve_with_intervals_is_drawn_with_its_band_and_the_bounds_in_the_hover():
    curve = edge_curve()
    lo, hi = curve - 0.05, curve + 0.05
    banded = (
        xr.concat([curve, lo, hi], dim="stat")
        .assign_coords(stat=["value", "lo", "hi"])
        .transpose("percent", "metric", "stat")
    )
    banded.attrs = {
        **curve.attrs,
        "interval": {"ci": 0.95},
        "cpr_lo": 0.8,
        "cpr_hi": 0.95,
        "cmd_lo": 0.05,
        "cmd_hi": 0.2,
    }
    figure = report.faithfulness_plot(banded)
    line, band = figure.data
    np.testing.assert_array_equal(line.y, [0.1, 0.4, 0.8, 1.0])
    np.testing.assert_allclose(band.y, [0.15, 0.45, 0.85, 1.05, 0.95, 0.75, 0.35, 0.05])
    assert band.fill == "toself" and "95 % interval" in band.name
    assert "[%{customdata[1]:.4f}, %{customdata[2]:.4f}]" in line.hovertemplate
    assert "CPR 0.900 [0.800, 0.950]" in figure.layout.title.text

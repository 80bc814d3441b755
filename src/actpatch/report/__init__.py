"""Report: turning labelled results into things people read.

    from actpatch import report
    report.show(res)                                  # a plotly Figure; notebooks render it in place
    report.render_report([res, heads], "ioi.html")    # one self-contained page, no network needed
    report.render_pngs(res, "figures/")               # static images (matplotlib)
    report.line_plot(curve)                           # a 1-D curve, e.g. a circuit's Pareto front
    report.faithfulness_plot(edge_curve, frontier, graph=g)  # edge and node circuits on one axis
    report.circuit_plot(scores, circuit)              # an edge circuit by layer and head
    report.das_section(found)                         # a DAS result beside its controls, for render_report

`table.py` prints terminal tables; `layout.py` decides panels and labels for every picture;
`edges.py` draws edge circuits; `das.py` a DAS result's controls and projection."""

from actpatch.report.das import das_section
from actpatch.report.edges import circuit_plot, faithfulness_plot
from actpatch.report.figures import line_plot, show
from actpatch.report.html import Section, provenance_html, render_report, result_section
from actpatch.report.png import render_pngs

__all__ = [
    "Section",
    "circuit_plot",
    "das_section",
    "faithfulness_plot",
    "line_plot",
    "provenance_html",
    "render_pngs",
    "render_report",
    "result_section",
    "show",
]

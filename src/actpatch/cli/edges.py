"""`actpatch circuit --level edge`: score every edge (or import a scored graph), judge the top edges
at MIB's sizes, and write the graph, the faithfulness table, the curve and a report.

Outputs in --out: `graph.json` (every edge's score; `in_graph` marks the --percent circuit exactly
as it was evaluated, pruned, its nodes flagged as EAP-IG counts them), `faithfulness.csv` (one row
per size), the curve (`NAME.nc`) and `NAME.html`. The node-level command is `analyses.circuit`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click

import actpatch as ap
from actpatch import atomic
from actpatch.cli.common import (
    BadInput,
    begin,
    load_batch,
    progress,
    provenance,
    refuse_overwrite,
    validating,
)

# The [sweep] keys an edge run reads; the rest of the experiment's analysis sections it never uses.
_USED = {"sweep": ("ablation", "chunk", "check_baseline", "ci", "n_boot", "boot_seed")}
TOP_EDGES_SHOWN = 15
METHODS = (
    "eap",
    "eap-ig-inputs",
    "eap-ig-activations",
    "clean-corrupted",
    "exact",
)  # graph.METHODS, without torch
DEFAULT_METHOD = "eap-ig-inputs"
DEFAULT_PERCENT = 5.0
GRAPH_FILE, TABLE_FILE = "graph.json", "faithfulness.csv"
# Flags of the node-level command, refused here rather than silently ignored.
_NODE_ONLY = {
    "recovery": "--recovery",
    "max_size": "--max-size",
    "threshold": "--threshold",
    "site": "--site",
    "direction": "--direction",
    "positions": "--positions",
    "layers": "--layers",
    "heads": "--heads",
    "neurons": "--neurons",
    "engine": "--engine",
    "per_prompt": "--per-prompt",
}


def check_edge_flags(
    method: str | None, percent: float | None, graph_file: Path | None
) -> tuple[str | None, float]:
    """The scoring method (None with --import) and the circuit's percent, checked before any model loads."""
    if method is not None and graph_file is not None:
        raise BadInput(
            "--method scores the edges and --import reads scores from a file: give one of them"
        )
    if method is not None and method not in METHODS:
        raise BadInput(f"unknown --method {method!r}: use one of {', '.join(METHODS)}")
    if percent is not None and not 0 < percent <= 100:
        raise BadInput(
            f"--percent {percent:g} is outside (0, 100]: give the share of all edges the circuit keeps, e.g. 5"
        )
    return (
        None if graph_file is not None else method or DEFAULT_METHOD
    ), DEFAULT_PERCENT if percent is None else percent


def edge_circuit(
    flags: dict[str, Any],
    *,
    quiet: bool,
    overwrite: bool,
    resume: bool,
    method: str | None,
    steps: int | None,
    percent: float | None,
    graph_file: Path | None,
    with_nodes: bool = False,
) -> None:
    """The edge-level `circuit` command (see `analyses.circuit` for its flags)."""
    method, percent = check_edge_flags(method, percent, graph_file)
    if given := [flag for key, flag in _NODE_ONLY.items() if flags.get(key) is not None] + (
        ["--resume"] if resume else []
    ):
        raise BadInput(
            f"{given[0]} applies to --level node: edges span every position and are evaluated on the clean "
            "prompt with missing edges at their corrupt (or --ablation) values; remove it"
        )
    if steps is not None and (graph_file is not None or "ig" not in method):
        raise BadInput(
            "--steps sets the interpolation points of eap-ig-inputs and eap-ig-activations: remove it, or "
            "choose one of those methods"
        )
    if steps is not None and steps < 1:
        raise BadInput(f"--steps must be at least 1, got {steps}")
    from actpatch import graph

    # The experiment schema wants a site.
    spec, out, echo = begin(flags, quiet=quiet, defaults={"sweep": {"site": "head"}})
    name = spec.output.name or f"{spec.task.label}_edge_{method or 'import'}"
    refuse_overwrite(
        out,
        [
            GRAPH_FILE,
            TABLE_FILE,
            f"{name}.nc",
            f"{name}.html",
            *([f"{name}_nodes.nc"] if with_nodes else []),
        ],
        overwrite,
    )
    ablation = spec.sweep.ablation
    if ablation is not None and method in ("eap-ig-inputs", "clean-corrupted"):
        raise BadInput(
            f"{method} interpolates towards the corrupt run and takes no --ablation: use eap, "
            "eap-ig-activations or exact"
        )
    model, pairs = load_batch(spec, "circuit", quiet=quiet)
    file_circuit = None
    with validating():
        if graph_file is not None:
            scores, file_circuit = graph.load_graph(graph_file, model)
        # One baseline and one recording of every sender's outputs, for the scores and the curve.
        runs = graph.EdgeRuns.prepare(
            model, pairs, ablation=ablation, check_baseline=spec.sweep.check_baseline
        )
        if graph_file is None:
            scores = graph.edge_scores(
                model,
                pairs,
                method,
                steps=steps or 5,
                ablation=ablation,
                chunk=spec.sweep.chunk,
                progress=progress(quiet),
                runs=runs,
            )
    percents = sorted({*graph.MIB_PERCENTS, percent})
    # Intervals from the per-prompt rows of the curve's own forwards: every metric, no forward more.
    curve = graph.faithfulness_curve(
        model,
        pairs,
        scores,
        percents=percents,
        ablation=ablation,
        chunk=spec.sweep.chunk,
        runs=runs,
        ci=spec.sweep.bootstrap,
    )
    circuit = graph.top_edges(
        scores, percent=percent
    )  # the circuit the curve evaluated at --percent
    curve.attrs.update(
        provenance(model, spec, used=_USED),
        percent=percent,
        source=str(graph_file) if graph_file is not None else scores.method,
        **({} if (steps := scores.attrs.get("steps")) is None else {"steps": steps}),
    )
    if file_circuit is not None and bool(file_circuit.any()):
        # The file's own circuit, judged as given (pruned, as every circuit here is).
        own = graph.prune_circuit(scores.graph, file_circuit)
        measured = graph.evaluate(
            model, pairs, own, ablation=ablation, check_baseline=spec.sweep.check_baseline
        )
        empty, full = curve.attrs["empty_logit_diff"], curve.attrs["full_logit_diff"]
        curve.attrs.update(
            file_circuit_edges=int(own.sum()),
            file_circuit_faithfulness=(float(measured.sel(metric="logit_diff")) - empty)
            / (full - empty),
        )
    table = curve_table(curve)
    shown = [
        "percent",
        "edges",
        "faithfulness",
        *(["faithfulness_lo", "faithfulness_hi"] if "stat" in curve.dims else []),
        "norm_logit_diff",
    ]
    echo(
        f"faithfulness of the top edges by {curve.attrs['source']} ({summary_of(curve)}):\n"
        + table[shown].round(4).to_string(index=False)
    )
    echo(top_edges_text(scores, circuit, percent))
    if "file_circuit_edges" in curve.attrs:
        click.echo(
            f"the file's own circuit: {curve.attrs['file_circuit_edges']} edges after pruning, faithfulness "
            f"{curve.attrs['file_circuit_faithfulness']:.4f}"
        )
    for path in (
        graph.save_graph(out / GRAPH_FILE, scores, circuit),
        atomic.write_text(out / TABLE_FILE, table.to_csv(index=False)),
    ):
        click.echo(f"saved {path}")
    frontier = (
        node_frontier(model, pairs, ablation, spec.sweep.check_baseline, quiet)
        if with_nodes
        else None
    )
    if frontier is not None:
        frontier.attrs.update(provenance(model, spec))
        click.echo(f"saved {ap.save(frontier, out / f'{name}_nodes.nc')}")
    _write_curve_and_report(spec, name, curve, scores, circuit, frontier)


def node_frontier(
    model: Any, pairs: Any, ablation: str | None, check_baseline: bool, quiet: bool
) -> Any:
    """Node circuits beside the edge curve: heads ranked by a denoising sweep over all positions,
    the top-k kept at about a dozen sizes spread geometrically up to every head."""
    import numpy as np

    ranked_by = ap.sweep(
        model,
        pairs,
        "head",
        positions="all",
        check_baseline=check_baseline,
        progress=progress(quiet),
    )
    n = model.dims.n_layers * model.dims.n_heads
    sizes = sorted({0, *(round(k) for k in np.geomspace(1, n, 12))})
    return ap.pareto_frontier(
        model, pairs, ranked_by, ablation=ablation, sizes=sizes, progress=progress(quiet)
    )


def curve_table(curve: Any) -> Any:
    """The curve as rows `percent, edges, faithfulness`, then every other metric; under intervals
    each metric's bounds beside it, left out for a metric that has none (a curve bounded from a
    file's per-prompt logit differences bounds only f and the logit differences)."""
    import pandas as pd

    table = pd.DataFrame({"percent": curve["percent"].values, "edges": curve["n_edges"].values})
    for metric in curve["metric"].values.tolist():
        if "stat" not in curve.dims:
            table[metric] = curve.sel(metric=metric).values
            continue
        table[metric] = curve.sel(metric=metric, stat="value").values
        bounds = {
            f"{metric}_{stat}": curve.sel(metric=metric, stat=stat).values for stat in ("lo", "hi")
        }
        if not all(pd.isna(values).all() for values in bounds.values()):
            table = table.assign(**bounds)
    return table


def top_edges_text(scores: Any, circuit: Any, percent: float, *, top: int = TOP_EDGES_SHOWN) -> str:
    """The circuit's strongest edges, one per line (sender → receiver, score), as a sweep prints its
    strongest patches: what the picture and graph.json hold, readable without opening them."""
    graph = scores.graph
    kept = circuit.nonzero().tolist()
    ranked = sorted(kept, key=lambda edge: -abs(float(scores.scores[edge[0], edge[1]])))
    lines = [
        f"the circuit at {percent:g} %: {len(kept)} edges after pruning; the "
        f"{min(top, len(kept))} strongest by |score| ({scores.method}):"
    ]
    for sender, receiver in ranked[:top]:
        sender_name, receiver_name = graph.edge_name(sender, receiver).split("->")
        score = float(scores.scores[sender, receiver])
        lines.append(f"  {sender_name:>10} → {receiver_name:<14} {score:+.4g}")
    if len(kept) > top:
        lines.append(f"  … and {len(kept) - top} more in graph.json (in_graph)")
    return "\n".join(lines)


def summary_of(curve: Any) -> str:
    """CPR and CMD, with their intervals when the curve has them."""
    a = curve.attrs
    if "cpr_lo" not in a:
        return f"CPR {a['cpr']:.4f}, CMD {a['cmd']:.4f}"
    return f"CPR {a['cpr']:.4f} [{a['cpr_lo']:.4f}, {a['cpr_hi']:.4f}], CMD {a['cmd']:.4f} [{a['cmd_lo']:.4f}, {a['cmd_hi']:.4f}]"


def _write_curve_and_report(
    spec: Any, name: str, curve: Any, scores: Any, circuit: Any, frontier: Any = None
) -> None:
    out = Path(spec.output.folder)
    click.echo(f"saved {ap.save(curve, out / f'{name}.nc')}")
    at = curve.sel(percent=curve.attrs["percent"])
    f_at = at.sel(metric="faithfulness")
    f_text = (
        f"{float(f_at):.4f}"
        if "stat" not in curve.dims
        else f"{float(f_at.sel(stat='value')):.4f} [{float(f_at.sel(stat='lo')):.4f}, {float(f_at.sel(stat='hi')):.4f}]"
    )
    summary = (
        f"{summary_of(curve)} (trapezoids over the fraction of edges, as MIB computes them"
        + (
            f"; intervals: {100 * curve.attrs['interval']['ci']:g} % over resampled prompts"
            if "stat" in curve.dims
            else ""
        )
        + f"). At {curve.attrs['percent']:g} %: {int(at['n_edges'])} edges after pruning, faithfulness {f_text}."
    )
    if "file_circuit_edges" in curve.attrs:
        summary += (
            f" The file's own circuit: {curve.attrs['file_circuit_edges']} edges, faithfulness "
            f"{curve.attrs['file_circuit_faithfulness']:.4f}."
        )
    sections = [
        ap.report.Section(
            "Faithfulness curve",
            note=summary,
            figures=[
                ap.report.faithfulness_plot(
                    curve, frontier, graph=None if frontier is None else scores.graph
                )
            ],
            html=curve_table(curve).to_html(index=False, float_format=lambda v: f"{v:.4f}"),
        ),
        ap.report.Section(
            f"The circuit at {curve.attrs['percent']:g} % of edges",
            figures=[ap.report.circuit_plot(scores, circuit)],
            note="As written to graph.json (in_graph): the top edges by |score|, pruned to paths from "
            f"input to logits; the {ap.report.edges.DRAWN_EDGES} strongest are "
            "drawn (report.circuit_plot(scores, circuit, max_edges=None) draws "
            "them all). Hover a node or an edge's midpoint for its scores.",
        ),
        ap.report.Section("Provenance", html=ap.report.provenance_html(curve.attrs)),
    ]
    page = ap.report.render_report(sections, out / f"{name}.html", title=f"actpatch: {name}")
    click.echo(f"report {page}")
    if spec.output.pngs:
        for image in ap.report.render_pngs({name: curve.sel(metric="faithfulness")}, out):
            click.echo(f"image {image}")

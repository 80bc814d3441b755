"""`actpatch attribute` and `actpatch circuit`: estimates checked exactly, and circuits judged whole."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

import actpatch as ap
from actpatch import atomic
from actpatch.cli.common import (
    BadInput,
    begin,
    experiment_options,
    feature_options,
    load_batch,
    one_direction,
    progress,
    provenance,
    refuse_overwrite,
    stem,
)
from actpatch.cli.sweeps import (
    SELECTION,
    checkpoint_folder,
    keywords,
    planned,
    record_activations,
    sweep_options,
    tables,
    title,
    write_outputs,
)
from actpatch.sites import parse_kind

if TYPE_CHECKING:  # --help must not wait for pandas and xarray
    import pandas as pd
    import xarray as xr


@click.command()
@experiment_options(analysis=True, intervals=True, features=True)
@click.option(
    "--method",
    type=click.Choice(["atp", "atp*", "ig"]),
    default=None,
    help="atp (default), atp* (softmax recomputed for q/k sites), or ig (integrated gradients).",
)
@click.option("--steps", type=int, default=None, help="Integrated-gradient steps (default 5).")
@click.option(
    "--graddrop/--no-graddrop",
    default=None,
    help="Add GradDrop's magnitude (atp, atp*): one backward per layer.",
)
@click.option(
    "--verify",
    type=int,
    default=None,
    metavar="K",
    help="Patch the K strongest estimates (and 10 random others) exactly and report the agreement.",
)
def attribute(quiet: bool, overwrite: bool, **flags: Any) -> None:
    """Estimate every patch of a sweep from one forward and one backward pass; optionally verify.

    \b
    actpatch attribute --task ioi --site head --verify 10
    actpatch attribute --task ioi --site k --positions S2,END --method 'atp*' --verify 10
    actpatch attribute --config examples/attribute_ioi_heads.toml
    actpatch attribute --task ioi --site head --prompts 16 --verify 10 --ci 0.95
    actpatch attribute --task ioi --site feature --dictionary embedded --positions S2,END --verify 10

    Attribution patching (AtP: effect ≈ (source − target) · gradient) is cheap and wrong in known
    ways (saturated attention, cancelling paths): never read it without --verify, which patches the
    strongest estimates exactly and prints the rank correlation, the top-k recall and the worst
    misestimates. Writes the estimate (.nc), the verification (.csv) and a report into --out; an
    earlier run's are refused unless --overwrite. --ci 0.95 puts bootstrap intervals over prompts
    on the estimates and on the verification's rank correlation, from the same backward pass and
    exact patches (not with --graddrop). --site feature with --dictionary estimates every latent
    (or --latents) and, from the same passes, every error node: the error nodes' estimate is
    written beside the latents' (NAME_error.nc)."""
    spec, out, echo = begin(flags, quiet=quiet)
    a, s = spec.attribute, spec.sweep
    if s.engine != "batched" or s.chunk is not None or s.per_prompt:
        raise BadInput(
            "[sweep] engine, chunk and per_prompt do not apply to attribute; remove them"
        )
    name = stem(spec, a.method.replace("*", "star"))
    refuse_overwrite(
        out, [f"{name}{end}" for end in (".nc", "_error.nc", "_verify.csv", ".html")], overwrite
    )
    direction = one_direction(spec, "attribute")
    model, pairs = load_batch(spec, "attribute", quiet=quiet)
    features = feature_options(spec, model, pairs, every=True)
    the_plan = planned(model, pairs, spec, direction, features)
    if s.ablation is not None and (
        a.method == "ig" or (a.method == "atp*" and the_plan.kind in ("q", "k"))
    ):
        raise BadInput(
            f"method {a.method} needs a source run (to interpolate inputs, or to recompute softmaxes from its "
            f"q and k), and ablation {s.ablation} has none: use method atp"
        )
    if s.ci is not None and a.graddrop:
        raise BadInput(
            "--ci and --graddrop: GradDrop's magnitude is not a mean over prompts and has no interval; drop one"
        )

    def estimated(site: str, **chosen: Any) -> tuple[xr.DataArray, xr.DataArray]:
        """(the per-prompt rows, or the estimate; the estimate, with intervals under --ci)."""
        from actpatch.engine.attribution import intervals_of

        rows = ap.attribute(
            model,
            pairs,
            site,
            direction=direction,
            method=a.method,
            steps=a.steps,
            graddrop=a.graddrop,
            check_baseline=s.check_baseline,
            progress=progress(quiet),
            per_prompt=s.ci is not None,
            **keywords(spec, SELECTION),
            **chosen,
        )
        # The rows for verify's interval, the intervals for the saved estimate: one backward.
        found = rows if s.ci is None else intervals_of(rows, ci=s.bootstrap)
        found.attrs.update(provenance(model, spec))
        return rows, found

    rows, estimate = estimated(s.site, **features)
    record_activations(estimate, model, pairs, features.get("dictionary"))
    sections: dict[str, Any] = {f"{title(spec, estimate)}: {a.method} estimate": estimate}
    extra = {}
    if "latents" in features:  # every error node too, beside the latents
        errors = estimated("feature_error", dictionary=features["dictionary"])[1]
        extra[f"{name}_error"] = errors
        sections[f"{title(spec, errors)}: error nodes, {a.method} estimate"] = errors
    if not quiet:
        for text in tables(estimate) + [t for e in extra.values() for t in tables(e)]:
            click.echo(text)
        if extra:
            click.echo(error_share(estimate, errors))
    if a.verify:
        checked = ap.verify(
            model,
            pairs,
            rows,
            top_k=a.verify,
            sample=a.sample,
            seed=spec.task.seed,
            progress=progress(quiet),
            dictionary=features.get("dictionary"),
            ci=s.bootstrap,
        )
        estimate.attrs["verification"] = {
            "spearman": checked.spearman,
            "top_k_recall": checked.top_k_recall,
            "top_k": checked.top_k,
        }
        if checked.spearman_interval is not None:
            estimate.attrs["verification"]["spearman_interval"] = list(checked.spearman_interval)
        echo(repr(checked))
        table = out / f"{name}_verify.csv"
        atomic.write_text(table, checked.table.to_csv(index=False))
        click.echo(f"saved {table}")
        sections["Verification against exact patching"] = ap.report.Section(
            "Verification against exact patching",
            html=checked.table.to_html(index=False, float_format=lambda v: f"{v:.4f}"),
            note=f"Spearman {checked.spearman:.3f}"
            + (
                ""
                if checked.spearman_interval is None
                else " [{:.3f}, {:.3f}]".format(*checked.spearman_interval)
            )
            + f", top-{checked.top_k} recall {checked.top_k_recall:.2f} over "
            f"{len(checked.table)} sites patched exactly (the top {checked.top_k} estimates and a random sample).",
        )
    write_outputs(spec, sections, name, estimate, extra=extra)


def error_share(
    latents: xr.DataArray, errors: xr.DataArray, metric: str = "norm_logit_diff"
) -> str:
    """One line: the latents' and the error nodes' estimated effects, each summed over every
    position. AtP is additive, so together they are the whole site's estimate."""
    from actpatch.results import effects

    def total(estimate: xr.DataArray) -> float:
        values = estimate.sel(metric=metric)
        values = values.sel(stat="value") if "stat" in values.dims else values
        return float(effects(estimate.attrs, values.values, metric).sum())

    about = latents.attrs["dictionary"]
    every = latents.sizes["latent"] == about["n_latents"]
    return (
        f"estimated effect on {metric}, summed over positions: {'' if every else 'these '}latents "
        f"{total(latents):+.3f}, error nodes {total(errors):+.3f}"
        + (f" (together, the estimate of patching {about['writes']} whole)" if every else "")
    )


@click.command()
@experiment_options(circuit=True, intervals=True)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue a killed run's sweep from the checkpoint in the output folder.",
)
@click.option(
    "--level",
    type=click.Choice(["node", "edge", "feature"]),
    default="node",
    help="node: components (heads or MLPs); edge: edges between them (EAP, EAP-IG, MIB); "
    "feature: dictionary latents and error nodes (--dictionary).",
)
@click.option(
    "--method",
    "edge_method",
    default=None,
    metavar="METHOD",
    help="Edge scores (--level edge): eap, eap-ig-inputs (default), eap-ig-activations, clean-corrupted, "
    "exact; node scores (--level feature): atp (default), ig.",
)
@click.option(
    "--dictionary",
    "dictionaries",
    multiple=True,
    metavar="PATH",
    help="--level feature: a dictionary folder (SAELens, sparsify, Gemma Scope 2, circuit-tracer), or "
    "'embedded' for the embedded model's SAE; repeat it for several layers.",
)
@click.option(
    "--steps",
    "edge_steps",
    type=int,
    default=None,
    help="Interpolation points of the eap-ig methods (default 5).",
)
@click.option(
    "--percent",
    type=float,
    default=None,
    help="--level edge: the circuit written to graph.json keeps this percent of all edges (default 5); "
    "--level feature: one more size of the curve, in percent of the ranked nodes.",
)
@click.option(
    "--import",
    "graph_file",
    type=click.Path(path_type=Path, dir_okay=False, exists=True),
    default=None,
    help="--level edge: evaluate this scored graph (EAP-IG / MIB JSON) instead of scoring the edges.",
)
@click.option(
    "--nodes",
    "with_nodes",
    is_flag=True,
    help="--level edge: also sweep the heads, grow node circuits along that ranking and draw their "
    "frontier on the edge curve's axis.",
)
def circuit(
    quiet: bool,
    resume: bool,
    overwrite: bool,
    level: str,
    edge_method: str | None,
    edge_steps: int | None,
    percent: float | None,
    graph_file: Path | None,
    with_nodes: bool,
    dictionaries: tuple[str, ...],
    **flags: Any,
) -> None:
    """Find a circuit: sweep the heads, grow circuits along the ranking, take the smallest that recovers enough.
    With --level edge: score every edge, judge the top edges at MIB's sizes, write graph.json.

    \b
    actpatch circuit --task ioi --prompts 8 --max-size 40
    actpatch circuit --config examples/circuit_ioi.toml --recovery 0.9
    actpatch circuit --task ioi --prompts 16 --ci 0.95
    actpatch circuit --level edge --method eap --prompts 8 --percent 5
    actpatch circuit --level edge --import graph.json --out imported
    actpatch circuit --level feature --dictionary embedded --prompts 8

    Steps (the library's ap.find_circuit): a head sweep (or mlp_out with --site mlp_out) ranks
    components by effect; the Pareto frontier evaluates the top-k for each k (everything else of
    that kind at its corrupt value, or an --ablation); the smallest circuit reaching --recovery is
    then tested for minimality (does removing one member cost anything?). Prints the tables and writes the sweep, the frontier, the
    minimality table (.csv) and a report with the Pareto curve into --out; an earlier run's are
    refused unless --overwrite (or --resume, which finishes that run) is given. --ci 0.95 (node
    level) puts bootstrap intervals over prompts on the sweep, a band on the frontier and an interval
    on each member's drop, from the same runs (docs/uncertainty.md).

    Edge level (docs/edges.md): edges scored by --method (or read by --import) are ranked by
    |score|; the top edges at 0.1 ... 100 % of all edges (and --percent) are pruned and evaluated
    exactly on the clean prompt, every missing edge at its corrupt (or --ablation) value. Writes
    graph.json (every score; in_graph marks the --percent circuit as evaluated), faithfulness.csv
    (percent, edges, faithfulness and every metric), the curve (.nc) and a report with CPR, CMD
    and a picture of the circuit. --ci 0.95 adds intervals over resampled prompts to every size
    of the curve and to CPR and CMD, from the curve's own per-prompt numbers.

    Feature level (docs/features.md): every latent and error node of each --dictionary scored by
    --method (AtP, per position unless --positions all), the top nodes at 0.1 ... 100 % (and
    --percent) evaluated exactly with the error nodes kept and ranked like latents, every other node
    at its corrupt (or --ablation) value; prints the curve and the strongest nodes, writes the curve
    (.nc, _curve.csv) and every node's score (_nodes.csv)."""
    if dictionaries and level != "feature":
        raise BadInput("--dictionary goes with --level feature")
    if level == "feature":
        from actpatch.cli.features import feature_circuit

        if given := [
            f
            for f, v in (
                ("--import", graph_file),
                ("--nodes", with_nodes or None),
                ("--resume", resume or None),
            )
            if v is not None
        ]:
            raise BadInput(f"{given[0]} does not apply to --level feature; remove it")
        return feature_circuit(
            flags,
            quiet=quiet,
            overwrite=overwrite,
            method=edge_method,
            steps=edge_steps,
            percent=percent,
            dictionaries=dictionaries,
        )
    if level == "edge":
        from actpatch.cli.edges import edge_circuit

        return edge_circuit(
            flags,
            quiet=quiet,
            overwrite=overwrite,
            resume=resume,
            method=edge_method,
            steps=edge_steps,
            percent=percent,
            graph_file=graph_file,
            with_nodes=with_nodes,
        )
    if given := [
        flag
        for flag, value in (
            ("--method", edge_method),
            ("--steps", edge_steps),
            ("--percent", percent),
            ("--import", graph_file),
            ("--nodes", with_nodes or None),
        )
        if value is not None
    ]:
        raise BadInput(f"{given[0]} applies to edge circuits: add --level edge")

    spec, out, echo = begin(flags, quiet=quiet, defaults={"sweep": {"site": "head"}})
    checkpoint = checkpoint_folder(out, resume, echo)
    name = stem(spec, "circuit")
    refuse_overwrite(
        out,
        [f"{name}{suffix}" for suffix in (".nc", "_frontier.nc", "_minimality.csv", ".html")],
        overwrite or resume,
    )
    c = spec.circuit
    direction = one_direction(spec, "circuit")
    if spec.sweep.per_prompt:
        raise BadInput("circuit ranks components by their mean effect: remove per_prompt")
    if (kind := parse_kind(spec.sweep.site)[0]) not in ("head", "mlp_out"):
        raise BadInput(
            f"circuit ranks head or mlp_out components, not {kind}: set the site to head or mlp_out"
        )
    model, pairs = load_batch(spec, "circuit", quiet=quiet)
    ci = spec.sweep.bootstrap
    options = sweep_options(model, pairs, spec)
    del options["direction"]  # the one direction, which find_circuit takes
    if spec.sweep.engine == "batched":
        options["checkpoint"] = checkpoint
    found = ap.find_circuit(
        model,
        pairs,
        spec.sweep.site,
        direction=direction,
        recovery=c.recovery,
        max_size=c.max_size,
        threshold=c.threshold,
        ablation=c.ablation,
        ci=ci,
        order=c.order,
        sweep=options,
        check_baseline=spec.sweep.check_baseline,
        progress=progress(quiet),
    )
    ranked_by, frontier, chosen, table = (
        found.ranked_by,
        found.frontier,
        found.circuit,
        found.minimality,
    )
    for result in (ranked_by, frontier):
        result.attrs.update(provenance(model, spec))
    if not quiet:
        for text in tables(ranked_by):
            click.echo(text)
    echo(
        "Pareto frontier (the top-k components kept, the rest ablated):\n"
        + frontier_table(frontier).to_string()
    )
    sections: dict[str, Any] = {title(spec, ranked_by): ranked_by}
    sections["Pareto frontier"] = ap.report.Section(
        "Pareto frontier: circuit performance against circuit size",
        figures=[ap.circuits.plot_frontier(frontier, recoveries=sorted({c.recovery, 0.9}))],
        note="The top-k components of the ranking kept, every other component of their kind ablated "
        f"({frontier.attrs.get('ablation', 'corrupt')}); one forward per size."
        + (
            f" The band is the {100 * ci.ci:g} % interval over resampled prompts ({ci.n_boot} resamples): how "
            "this ranking's circuits would do on other prompts from the task."
            if ci is not None
            else ""
        ),
    )
    if chosen is None:
        click.echo(
            f"no circuit of up to {found.attrs['max_size']} components recovers {c.recovery:.0%}: raise --max-size or lower --recovery"
        )
    else:
        click.echo(
            f"smallest circuit recovering {c.recovery:.0%}: {len(chosen)} components: {', '.join(map(str, chosen))}"
        )
        echo(
            f"minimality (circuit scores {table.attrs['circuit_score']:.3f}; a passenger's removal costs < {c.threshold}):\n"
            + table.round(3).to_string()
        )
        path = out / f"{name}_minimality.csv"
        atomic.write_text(path, table.to_csv())
        click.echo(f"saved {path}")
        sections["Minimality"] = ap.report.Section(
            f"Minimality of the {len(chosen)}-component circuit",
            html=table.to_html(float_format=lambda v: f"{v:.4f}"),
            note=f"Each member removed alone; the circuit scores {table.attrs['circuit_score']:.4f}. A passenger's "
            f"removal costs less than {c.threshold}."
            + (
                " drop_excludes_0: the drop's interval over resampled prompts does not hold 0."
                if ci is not None
                else ""
            ),
        )
    write_outputs(spec, sections, name, ranked_by, extra={f"{name}_frontier": frontier})
    shutil.rmtree(checkpoint, ignore_errors=True)


def frontier_table(frontier: xr.DataArray) -> pd.DataFrame:
    """The frontier's normalised logit difference per size, with its interval when it has one."""
    import pandas as pd

    curve = frontier.sel(metric="norm_logit_diff")
    columns = {"added": curve["component"].values}
    if "stat" in curve.dims:
        columns.update(
            {
                name: curve.sel(stat=stat).values.round(3)
                for name, stat in (("norm_logit_diff", "value"), ("lo", "lo"), ("hi", "hi"))
            }
        )
    else:
        columns["norm_logit_diff"] = curve.values.round(3)
    return pd.DataFrame(columns, index=pd.Index(curve["size"].values, name="size"))

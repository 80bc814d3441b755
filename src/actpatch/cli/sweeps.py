"""`actpatch sweep`, `actpatch demo` and `actpatch report`: exact sweeps, and drawing saved results."""

from __future__ import annotations

import importlib.util
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

import actpatch as ap
from actpatch.cli.common import (
    BadInput,
    begin,
    describe,
    experiment_options,
    fail,
    feature_options,
    first_line,
    load,
    log_into,
    progress,
    provenance,
    refuse_overwrite,
    stem,
    validating,
)
from actpatch.experiment import Experiment

if (
    TYPE_CHECKING
):  # xarray, torch and plotly are imported when a command runs, not to parse its flags
    import xarray as xr

    from actpatch.engine.plan import SweepPlan
    from actpatch.models.model import Model
    from actpatch.pairs import PromptPairs

# [sweep]'s keys that choose the sites and their source (sweep, attribute and plan take them all),
# and those that say how an exact sweep runs.
SELECTION = ("layers", "positions", "heads", "neurons", "ablation")
RUNNING = ("per_prompt", "engine", "chunk", "memory_budget", "check_baseline")
CHECKPOINT = (
    "checkpoint"  # the sweep's checkpoint folder inside --out; removed once the result is saved
)


@click.command()
@experiment_options(intervals=True, features=True)
@click.option(
    "--resume",
    is_flag=True,
    help="Continue the killed sweep whose checkpoint is in the output folder (same flags and --config).",
)
@click.option(
    "--shards",
    type=click.IntRange(min=1),
    default=None,
    help="Cut the sites into N shards patched on Ray workers, each holding a copy of the model (needs "
    "pip install 'actpatch[ray]'; docs/scale.md).",
)
@click.option(
    "--ray-address",
    default=None,
    help="The Ray cluster for --shards: 'auto' on one of its nodes, or ray://HEAD:10001 (default: a local Ray).",
)
def sweep(
    resume: bool,
    quiet: bool,
    overwrite: bool,
    shards: int | None,
    ray_address: str | None,
    **flags: Any,
) -> None:
    """Patch every site of one kind; write the labelled result (.nc) and its HTML report into --out.

    \b
    actpatch sweep --task ioi --site resid_pre --direction both
    actpatch sweep --task ioi --site head --positions END --prompts 16
    actpatch sweep --config examples/sweep_ioi_resid_pre.toml --out ioi-abc
    actpatch sweep --task ioi --site head --shards 16 --ray-address auto
    actpatch sweep --task ioi --site resid_pre --prompts 32 --ci 0.95

    Denoising (the default) patches clean activations into the corrupt run: which sites are
    sufficient to restore the answer; noising patches corrupt ones into the clean run: which are
    necessary. The sweep keeps a checkpoint in OUT/checkpoint as it goes (with either engine):
    if it is killed, run the same command again with --resume and only the unfinished patches run.
    --shards spreads the patches over Ray workers (one
    GPU each where the cluster has GPUs); the result is the same. An earlier run's result in --out
    is refused unless --overwrite (or --resume, which finishes that run) is given. --ci keeps every
    prompt's numbers and returns their bootstrap intervals instead (not with --per-prompt; see
    `actpatch compare` for two per-prompt results)."""
    spec, out, echo = begin(flags, quiet=quiet)
    ci = (
        spec.sweep.ci
    )  # --ci, or [sweep] ci in the experiment file (which refuses it with per_prompt)
    if shards is not None and spec.sweep.engine == "reference":
        raise BadInput(
            "--shards runs the batched engine on Ray workers; --engine reference does not shard"
        )
    if shards is not None and importlib.util.find_spec("ray") is None:
        raise BadInput("--shards runs on Ray, which is not installed: pip install 'actpatch[ray]'")
    checkpoint = checkpoint_folder(out, resume, echo)
    refuse_overwrite(out, [f"{stem(spec)}.nc", f"{stem(spec)}.html"], overwrite or resume)
    model, pairs = load(spec, quiet=quiet)
    echo(describe(model, pairs, spec))
    options = sweep_options(model, pairs, spec)
    if ci is not None:
        options.update(ci=spec.sweep.bootstrap)
    result = ap.sweep(
        model,
        pairs,
        spec.sweep.site,
        **options,
        progress=progress(quiet),
        checkpoint=checkpoint,
        shards=shards,
        ray_address=ray_address,
    )
    result.attrs.update(provenance(model, spec))
    record_activations(result, model, pairs, options.get("dictionary"))
    if not quiet:
        for text in tables(result):
            click.echo(text)
    write_outputs(spec, {title(spec, result): result}, stem(spec), result)
    shutil.rmtree(checkpoint, ignore_errors=True)


def sweep_options(
    model: Model, pairs: PromptPairs | list[PromptPairs], spec: Experiment
) -> dict[str, Any]:
    """`ap.sweep`'s keyword arguments from [sweep], each checked against the model and prompts now,
    before anything long runs (a wrong layer is bad input, not a failure an hour in)."""
    s = spec.sweep
    features = feature_options(spec, model, pairs)
    directions = [s.directions] if isinstance(s.directions, str) else s.directions
    for group in pairs if isinstance(pairs, list) else [pairs]:
        for direction in directions:
            planned(model, group, spec, direction, features)
    return {"direction": s.directions, **keywords(spec, SELECTION + RUNNING), **features}


def keywords(spec: Experiment, keys: tuple[str, ...]) -> dict[str, Any]:
    """[sweep]'s `keys` as the library's keyword arguments (the names are the same)."""
    return {key: getattr(spec.sweep, key) for key in keys}


def planned(
    model: Model, pairs: PromptPairs, spec: Experiment, direction: str, features: dict[str, Any]
) -> SweepPlan:
    """[sweep]'s sites for one direction, checked against the model and prompts (bad input if not);
    `features`: a feature site's dictionary and latents (`feature_options`), {} for other sites."""
    from actpatch.engine.plan import plan
    from actpatch.engine.spec import SweepSpec

    with validating():
        return plan(
            model,
            pairs,
            SweepSpec(spec.sweep.site, direction, **keywords(spec, SELECTION), **features),
        )


def record_activations(
    result: xr.DataArray, model: Model, pairs: PromptPairs | list[PromptPairs], dictionary: Any
) -> None:
    """Put the strongest latents' activations on the prompts' tokens into a feature result, for its
    report: one capture of each run."""
    from actpatch.bases.on_prompts import latent_activations
    from actpatch.report.features import directions, is_feature_result, top_latents

    if dictionary is None or not is_feature_result(result):
        return
    strongest = {
        int(latent)
        for direction, part in directions(result)
        for latent in top_latents(part, direction=direction)["latent"]
    }
    result.attrs["latent_activations"] = latent_activations(
        model, pairs, dictionary, sorted(strongest)
    )


def write_outputs(
    spec: Experiment,
    sections: dict[str, Any],
    name: str,
    result: xr.DataArray,
    extra: dict[str, xr.DataArray] | None = None,
) -> None:
    """Save `result` (and `extra` results, by file stem) and the report of `sections`; print the paths."""
    out = Path(spec.output.folder)
    saved = [ap.save(result, out / f"{name}.nc")]
    saved += [
        ap.save(other, out / f"{other_name}.nc") for other_name, other in (extra or {}).items()
    ]
    for path in saved:
        click.echo(f"saved {path}")
    page = ap.report.render_report(sections, out / f"{name}.html", title=f"actpatch: {name}")
    click.echo(f"report {page}")
    if spec.output.pngs:
        for image in ap.report.render_pngs({name: result}, out):
            click.echo(f"image {image}")


def title(spec: Experiment, result: xr.DataArray) -> str:
    corruption = result.attrs.get("corruption") or spec.task.corruption or "default corruption"
    source = f", ablation {spec.sweep.ablation}" if spec.sweep.ablation else ""
    return f"{spec.task.label} ({corruption}): {spec.sweep.site}, {spec.sweep.direction}{source}"


def tables(result: xr.DataArray) -> list[str]:
    """Terminal tables: a layer grid where the result is one, else its strongest patches; per direction."""
    from actpatch.report.features import is_feature_result
    from actpatch.report.table import latent_table, layer_table, strongest_table

    if is_feature_result(result):  # hundreds of latents: the strongest, not a grid
        return [latent_table(result)]
    parts = (
        [result.sel(direction=d).assign_attrs(direction=str(d)) for d in result["direction"].values]
        if "direction" in result.dims
        else [result]
    )
    texts = []
    for part in parts:
        if "stat" in part.dims:
            texts.append(interval_table(part))
            continue
        if "batch" in part.dims:
            part = part.mean("batch", keep_attrs=True)
        # One position (or head) swept: drop that dimension so the rest fits a layer grid.
        part = part.squeeze(
            [d for d in part.dims if d not in ("metric", "layer") and part.sizes[d] == 1]
        )
        try:
            texts.append(layer_table(part))
        except ValueError:  # not a layer × one-dimension grid
            texts.append(strongest_table(part))
    return texts


def interval_table(result: xr.DataArray, metric: str = "norm_logit_diff", *, top: int = 10) -> str:
    """A result with intervals (`stat`: value, lo, hi) for the terminal: its layer grid of values, each
    marked `*` when its interval excludes the no-effect value (the unpatched target run's), then the
    `top` sites furthest from that value with their intervals."""
    from actpatch.report.layout import no_effect
    from actpatch.report.table import layer_table
    from actpatch.stats.bootstrap import Layout, cell_table

    values = result.sel(metric=metric)
    centre = no_effect(result, metric, result.attrs.get("direction")).centre
    lo, hi, value = (values.sel(stat=s, drop=True) for s in ("lo", "hi", "value"))
    # A mark says "this cell's effect is real": a tiny effect that prints as the unpatched value
    # (0.00) is left unmarked, however narrow its interval, so the marks point at what to read.
    excludes = ((lo > centre) | (hi < centre)) & (abs(value - centre) >= SHOWN_EFFECT)
    about = result.attrs.get("interval") or {}
    lines = [
        f"{metric} with its {100 * about.get('ci', 0):g} % interval over {about.get('n_prompts', '?')} prompts "
        f"({about.get('n_boot', '?')} resamples); * : the interval excludes {centre:g}, "
        f"the unpatched run, and the effect is at least {SHOWN_EFFECT:g}"
    ]
    grid = value.squeeze([d for d in value.dims if d != "layer" and value.sizes[d] == 1])
    if grid.ndim == 2 and "layer" in grid.dims:
        table = layer_table(
            grid.expand_dims(metric=[metric]).assign_attrs(result.attrs), metric
        ).splitlines()
        marks = excludes.squeeze(
            [d for d in excludes.dims if d != "layer" and excludes.sizes[d] == 1]
        )
        marks = marks.transpose("layer", *[d for d in grid.dims if d != "layer"]).values
        lines.append(_marked(table[1], [False] * marks.shape[1]))
        lines += [_marked(row, marks[i]) for i, row in enumerate(table[2:])]
    flat = cell_table(Layout(value, tuple(value.dims), None))
    flat["value"], flat["lo"], flat["hi"] = (
        a.transpose(*value.dims).values.ravel() for a in (value, lo, hi)
    )
    flat["excludes"] = excludes.transpose(*value.dims).values.ravel()
    strongest = flat.iloc[(flat["value"] - centre).abs().to_numpy().argsort()[::-1][:top]]
    lines.append(f"strongest {len(strongest)} of {len(flat)}:")
    for _, row in strongest.iterrows():
        where = row["site"] if "site" in row else ", ".join(f"{d}={row[d]}" for d in value.dims)
        lines.append(
            f"  {where}: {row['value']:+.3f} [{row['lo']:+.3f}, {row['hi']:+.3f}]{' *' if row['excludes'] else ''}"
        )
    return "\n".join(lines)


SHOWN_EFFECT = 0.005  # half the last digit the tables print: smaller effects print as no effect


def _marked(row: str, excludes: Any, width: int = 6) -> str:
    # layer_table's lines are a 6-character layer column, then cells `width` wide, one space apart:
    # each cell gets its mark (or a space) after it, so headers and rows stay aligned.
    cells = [row[6 + (width + 1) * i : 6 + (width + 1) * i + width] for i in range(len(excludes))]
    return (
        row[:6]
        + " ".join(cell + ("*" if mark else " ") for cell, mark in zip(cells, excludes)).rstrip()
    )


def checkpoint_folder(out: Path, resume: bool, echo: Callable[[str], None]) -> Path:
    """OUT/checkpoint, refused if it holds an unfinished sweep and --resume was not given: a new
    sweep must not silently pick up an old one's rows, nor silently throw them away."""
    checkpoint = out / CHECKPOINT
    if checkpoint.is_dir() and any(checkpoint.iterdir()):
        if not resume:
            raise BadInput(
                f"{checkpoint} holds the checkpoint of an unfinished sweep: add --resume to continue it, "
                "or delete that folder to start over"
            )
        echo(f"resuming: {_finished_rows(checkpoint)} finished patches in {checkpoint}")
    elif resume:
        echo(f"nothing to resume in {checkpoint}; starting the sweep")
    return checkpoint


def _finished_rows(folder: Path) -> int:
    return sum(
        len(json.loads(p.read_text(encoding="utf-8"))["rows"]) for p in folder.rglob("chunk-*.json")
    )


@click.command()
@click.option("--prompts", default=8, help="Number of IOI prompt pairs.")
@click.option(
    "--out",
    default="actpatch-out",
    type=click.Path(path_type=Path),
    help="Folder for the saved result, its HTML report and PNG image.",
)
@click.option(
    "--model",
    "model_name",
    default=None,
    help="A local checkpoint folder or hub id (default: embedded SmolLM2).",
)
def demo(prompts: int, out: Path, model_name: str | None) -> None:
    """Denoise the residual stream on IOI (all names swapped) and print where the answer lives."""
    from actpatch.report.table import layer_table

    log_into(out)
    with validating():
        model = ap.load_model(model_name)
        pairs = ap.ioi_pairs(model, n=prompts)
    click.echo(
        f"model: {model.name}  prompts: {len(pairs)}  e.g. {pairs.clean_text[0]!r} -> {model.token_strings(pairs.answers[:1])[0]!r}"
    )
    click.echo(f"corrupt (all three names replaced): {pairs.corrupt_text[0]!r}")
    result = ap.sweep(model, pairs, "resid_pre", direction="denoise")
    clean, corrupt = result.attrs["baseline_clean"], result.attrs["baseline_corrupt"]
    click.echo(
        f"logit diff: clean {clean['logit_diff']:.2f}, corrupt {corrupt['logit_diff']:.2f}; "
        f"self-checks {result.attrs['self_checks']}"
    )
    click.echo(layer_table(result))
    path = ap.save(result, out / "ioi_resid_pre_denoise.nc")
    click.echo(f"saved {path} (load it with actpatch.load)")
    page = ap.report.render_report(
        {"IOI (all three names replaced): resid_pre, denoise": result},
        out / "ioi_resid_pre_denoise.html",
        title="actpatch demo",
    )
    images = ap.report.render_pngs({"ioi_resid_pre_denoise": result}, out)
    click.echo(f"report {page} (open it in a browser); images {', '.join(str(p) for p in images)}")


@click.command("report")
@click.argument("result_path", metavar="RESULT.nc", type=click.Path(path_type=Path))
@click.option(
    "--out",
    type=click.Path(path_type=Path),
    default=None,
    help="The HTML file to write (default: RESULT.html beside the result).",
)
@click.option(
    "--pngs",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write PNG images into this folder.",
)
@click.option(
    "--metric", default=None, help="The metric each figure shows first (default: norm_logit_diff)."
)
def report_command(
    result_path: Path, out: Path | None, pngs: Path | None, metric: str | None
) -> None:
    """Draw a result saved with actpatch.save (or by any command) as an HTML report."""
    if not result_path.is_file():
        fail(f"{result_path}: {'not a file' if result_path.exists() else 'no such file'}")
    try:
        result = ap.load(result_path)
    except (OSError, ValueError) as error:
        fail(f"{result_path} is not a saved actpatch result ({first_line(error)})")
    try:
        page = ap.report.render_report(
            result, out or result_path.with_suffix(".html"), metric=metric
        )
        images = ap.report.render_pngs(result, pngs, metric=metric) if pngs else []
    except (KeyError, ValueError) as error:  # a metric it lacks, or dimensions no figure can show
        fail(f"cannot draw {result_path}: {first_line(error)}")
    click.echo(f"report {page}")
    for image in images:
        click.echo(f"image {image}")

"""Command line: `actpatch demo` runs the IOI residual-stream sweep on the embedded model and writes
its report; `actpatch report` draws a saved result again.

Exit codes: 0 done, 2 bad input (a one-line reason on stderr), 1 any other failure."""
from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import NoReturn

import click

import actpatch as ap
from actpatch import report
from actpatch.report.table import layer_table

BAD_INPUT = 2


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log what the library does (loading, eager attention...).")
def main(verbose: bool) -> None:
    """Activation patching for Hugging Face causal language models."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@main.command()
@click.option("--prompts", default=8, show_default=True, help="Number of IOI prompt pairs.")
@click.option("--out", default="actpatch-out", show_default=True, type=click.Path(path_type=Path),
              help="Folder for the saved result, its HTML report and PNG images.")
@click.option("--model", "model_name", default=None, help="A local checkpoint folder or hub id (default: embedded SmolLM2).")
def demo(prompts: int, out: Path, model_name: str | None) -> None:
    """Denoise the residual stream on IOI (all names swapped) and print where the answer lives."""
    model = ap.load_model(model_name)
    pairs = ap.ioi_pairs(model, n=prompts)
    click.echo(f"model: {model.name}  prompts: {len(pairs)}  e.g. {pairs.clean_text[0]!r} -> {model.token_strings(pairs.answers[:1])[0]!r}")
    click.echo(f"corrupt (all three names replaced): {pairs.corrupt_text[0]!r}")
    result = ap.sweep(model, pairs, "resid_pre", direction="denoise")
    clean, corrupt = result.attrs["baseline_clean"], result.attrs["baseline_corrupt"]
    click.echo(f"logit diff: clean {clean['logit_diff']:.2f}, corrupt {corrupt['logit_diff']:.2f}; "
               f"self-checks {result.attrs['self_checks']}")
    click.echo(layer_table(result))
    path = ap.save(result, out / "ioi_resid_pre_denoise.nc")
    click.echo(f"saved {path} (load it with actpatch.load)")
    page = report.render_report({"IOI (all three names replaced): resid_pre, denoise": result},
                                out / "ioi_resid_pre_denoise.html", title="actpatch demo")
    images = report.render_pngs({"ioi_resid_pre_denoise": result}, out)
    click.echo(f"report {page} (open it in a browser); images {', '.join(str(p) for p in images)}")


@main.command("report")
@click.argument("result_path", metavar="RESULT.nc", type=click.Path(path_type=Path))
@click.option("--out", type=click.Path(path_type=Path), default=None,
              help="The HTML file to write (default: RESULT.html beside the result).")
@click.option("--pngs", type=click.Path(path_type=Path), default=None, help="Also write PNG images into this folder.")
@click.option("--metric", default=None, help="The metric each figure shows first (default: norm_logit_diff).")
def report_command(result_path: Path, out: Path | None, pngs: Path | None, metric: str | None) -> None:
    """Draw a result saved with actpatch.save (or by `actpatch demo`) as an HTML report."""
    if not result_path.is_file():
        _bad_input(f"{result_path}: {'not a file' if result_path.exists() else 'no such file'}")
    try:
        result = ap.load(result_path)
    except (OSError, ValueError) as error:
        _bad_input(f"{result_path} is not a saved actpatch result ({_first_line(error)})")
    try:
        page = report.render_report(result, out or result_path.with_suffix(".html"), metric=metric)
        images = report.render_pngs(result, pngs, metric=metric) if pngs else []
    except (KeyError, ValueError) as error:  # a metric it lacks, or dimensions no figure can show
        _bad_input(f"cannot draw {result_path}: {_first_line(error)}")
    click.echo(f"report {page}")
    for image in images:
        click.echo(f"image {image}")


def _bad_input(reason: str) -> NoReturn:
    click.echo(f"error: {reason}", err=True)
    sys.exit(BAD_INPUT)


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


if __name__ == "__main__":
    sys.exit(main())

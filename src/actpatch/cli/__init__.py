"""Command line: `actpatch COMMAND --help` describes each command.

    models     what loads offline: the embedded model, its cache, the architecture families
    check      self-checks of patching on a model (no-op patch, full patch, head sum)
    sweep      exact activation patching over every site of a kind; result + HTML report
    attribute  attribution patching (AtP, AtP*, integrated gradients), optionally verified exactly
    circuit    head sweep -> Pareto frontier -> smallest circuit -> minimality
    demo       the IOI residual-stream sweep on the embedded model
    report     draw a saved result again

The analyses read their settings from flags or from an experiment file (`--config x.toml`,
`actpatch.experiment`), flags winning. Exit codes: 0 done, 2 bad input (a one-line reason on
stderr), 1 any other failure (a one-line message naming the log file with the traceback).
Only this package and `actpatch.report` print; the library logs."""
from __future__ import annotations

import logging

import click

import actpatch as ap  # noqa: F401 - tests replace ap.load_model for the demo
from actpatch import report  # noqa: F401 - tests replace report.render_report
from actpatch.cli import analyses, models, sweeps
from actpatch.cli.common import Commands


@click.group(cls=Commands, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Log what the library does (loading, chunking, checkpoints...).")
def main(verbose: bool) -> None:
    """Activation patching for Hugging Face causal language models.

    Run `actpatch COMMAND --help` for a command's flags; `docs/cli.md` has examples."""
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")


for command in (models.models, models.check, sweeps.sweep, analyses.attribute, analyses.circuit, sweeps.demo, sweeps.report_command):
    main.add_command(command)


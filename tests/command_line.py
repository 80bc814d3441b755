"""The command line as tests call it: in this process, through click's runner, so that a
command's output, exit code and exception come back together."""

from __future__ import annotations

from click.testing import CliRunner, Result

from actpatch import cli


def run(*args: object) -> Result:
    """`actpatch ARGS...`; paths may be given as `Path`s."""
    return CliRunner().invoke(cli.main, [str(a) for a in args])


def run_tiny_ioi(command: tuple[str, ...], folder: object, out: object, *extra: object) -> Result:
    """`actpatch COMMAND` on the tiny checkpoint in `folder` with 4 IOI prompts, writing into `out`.

    Random weights do no task, so the baseline check is off (it has its own tests)."""
    return run(
        *command,
        "--model",
        folder,
        "--task",
        "ioi",
        "--prompts",
        "4",
        "--no-check-baseline",
        "--out",
        out,
        *extra,
    )


def edge_run(folder: object, out: object, *extra: object) -> Result:
    """`actpatch circuit --level edge` as `run_tiny_ioi` runs a command."""
    return run_tiny_ioi(("circuit", "--level", "edge"), folder, out, *extra)

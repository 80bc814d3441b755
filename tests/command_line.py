"""The command line as tests call it: in this process, through click's runner, so that a
command's output, exit code and exception come back together."""

from __future__ import annotations

from click.testing import CliRunner, Result

from actpatch import cli


def run(*args: object) -> Result:
    """`actpatch ARGS...`; paths may be given as `Path`s."""
    return CliRunner().invoke(cli.main, [str(a) for a in args])

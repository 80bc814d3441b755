"""A sweep killed with SIGKILL (or interrupted with Ctrl-C, SIGINT) mid-run resumes with `--resume` to exactly the uninterrupted result,
without patching again what the checkpoint holds.

The sweep runs in a child process on a tiny model whose patched runs are slowed down (a sleep
per chunk), so that it can be killed after some chunks and before the last."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import actpatch as ap
from actpatch.engine import batched
from command_line import run
from tiny_checkpoint import save_tiny_checkpoint

SLOW_SWEEP = """
import sys, time
from actpatch.engine import batched
from actpatch.cli import main
run = batched.Resumer.run
def slow(self, copies):
    time.sleep(0.3)
    return run(self, copies)
batched.Resumer.run = slow
main(sys.argv[1:])
"""


def args(tiny: Path, out: Path) -> list[str]:
    return [
        "sweep",
        "--model",
        str(tiny),
        "--task",
        "ioi",
        "--prompts",
        "4",
        "--no-check-baseline",
        "--site",
        "resid_pre",
        "--chunk",
        "1",
        "--out",
        str(out),
        "--quiet",
    ]


def rows_in(folder: Path) -> int:
    return sum(len(json.loads(p.read_text())["rows"]) for p in folder.glob("chunk-*.json"))


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "Ctrl-C"])
def test_killed_sweep_resumes_to_the_uninterrupted_result(tmp_path, monkeypatch, stop):
    tiny = save_tiny_checkpoint(tmp_path / "tiny")
    out, whole = tmp_path / "killed", tmp_path / "whole"
    env = {**os.environ, "TQDM_DISABLE": "1"}
    # A shell starting jobs in the background has the children ignore SIGINT, and an ignored signal
    # stays ignored across exec: give the child the default disposition, as a terminal's process has.
    child = subprocess.Popen(
        [sys.executable, "-c", SLOW_SWEEP, *args(tiny, out)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    chunks = out / "checkpoint" / "denoise"
    deadline = time.monotonic() + 180
    while len(list(chunks.glob("chunk-*.json"))) < 3:
        assert child.poll() is None, child.communicate()
        assert time.monotonic() < deadline, "the sweep wrote no checkpoint in time"
        time.sleep(0.05)
    child.send_signal(stop)
    child.wait(timeout=60)
    # Ctrl-C reaches Python as KeyboardInterrupt: the command stops (click reports "Aborted!", exit 1).
    assert child.returncode == (-signal.SIGKILL if stop == signal.SIGKILL else 1), (
        child.communicate()
    )
    assert not (out / "ioi_resid_pre_denoise.nc").exists()  # killed before the end
    finished = rows_in(chunks)

    original = batched.Resumer.run
    copies_run: list[int] = []

    def counted(self, copies):
        copies_run.append(len(copies))
        return original(self, copies)

    monkeypatch.setattr(batched.Resumer, "run", counted)
    resumed = run(*args(tiny, out), "--resume")
    assert resumed.exit_code == 0, resumed.output
    got = ap.load(out / "ioi_resid_pre_denoise.nc")
    assert not (out / "checkpoint").exists()
    cost = got.attrs["cost"]
    to_patch = (
        cost["patches"] - cost["noop_patches_skipped"]
    )  # no-op patches run nothing and are not checkpointed
    assert 3 <= finished < to_patch
    assert cost["patches_from_checkpoint"] == finished
    assert (
        sum(copies_run) == 2 + to_patch - finished
    )  # the two self-checks, then only what was left

    monkeypatch.undo()
    uninterrupted = run(*args(tiny, whole))
    assert uninterrupted.exit_code == 0, uninterrupted.output
    want = ap.load(whole / "ioi_resid_pre_denoise.nc")
    assert np.array_equal(got.values, want.values)  # bit for bit
    assert got.attrs["self_checks"] == want.attrs["self_checks"]
    differing = [
        k for k in set(got.attrs) | set(want.attrs) if got.attrs.get(k) != want.attrs.get(k)
    ]
    assert sorted(differing) == ["cost", "experiment"]  # work done, and the output folder
    assert {**got.attrs["experiment"], "output": None} == {
        **want.attrs["experiment"],
        "output": None,
    }

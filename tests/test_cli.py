"""The command line: `actpatch report` on good and bad files, and `actpatch demo` end to end
(the other commands: tests/test_cli_commands.py).

Exit codes are part of the interface (scripts branch on them): 0 done, 2 bad input with a
one-line reason, 1 anything else."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

import actpatch as ap
from command_line import run
from sample_results import tiny_results


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    return ap.save(tiny_results()["resid_pre"], tmp_path_factory.mktemp("results") / "resid_pre.nc")


def test_report_writes_the_page_beside_the_result(saved, tmp_path):
    result = run("report", str(saved))
    assert result.exit_code == 0, result.output
    page = saved.with_suffix(".html")
    assert (
        f"report {page}" in result.stdout and page.stat().st_size > 1_000_000
    )  # plotly.js is inlined
    assert "noise: corrupt values patched into the clean run" in page.read_text()


def test_report_out_pngs_and_metric(saved, tmp_path):
    result = run(
        "report",
        str(saved),
        "--out",
        str(tmp_path / "a" / "r.html"),
        "--pngs",
        str(tmp_path / "png"),
        "--metric",
        "logit_diff",
    )
    assert result.exit_code == 0, result.output
    assert (tmp_path / "a" / "r.html").exists()
    assert [p.name for p in (tmp_path / "png").iterdir()] == [
        "resid_pre_denoise_noise_logit_diff.png"
    ]
    assert "image " in result.stdout


def _junk(folder):
    (folder / "junk.nc").write_text("not netCDF")
    return folder / "junk.nc"


def _undrawable(folder):
    return ap.save(xr.DataArray(np.zeros((2, 2)), dims=["a", "b"], name="x"), folder / "odd.nc")


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda folder: folder / "missing.nc", "no such file"),
        (lambda folder: folder, "not a file"),
        (_junk, "is not a saved actpatch result"),
        (_undrawable, "cannot draw"),
    ],
)
def test_report_bad_input_exits_2_with_one_line(tmp_path, make, reason):
    result = run("report", str(make(tmp_path)))
    assert result.exit_code == 2
    assert (
        result.stderr.count("\n") == 1
        and reason in result.stderr
        and result.stderr.startswith("error: ")
    )


def test_report_unknown_metric_is_bad_input(saved):
    result = run("report", str(saved), "--metric", "nope")
    assert result.exit_code == 2 and "metric must be one of" in result.stderr


def test_report_other_failures_exit_1_with_the_traceback_in_a_log(saved, monkeypatch):
    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(ap.report, "render_report", broken)
    result = run("report", str(saved))
    assert result.exit_code == 1 and result.stderr.count("\n") == 1
    match = re.fullmatch(
        r"error: RuntimeError: disk on fire \(traceback in (.+\.log)\)\n", result.stderr
    )
    assert match, result.stderr
    log = Path(match[1])
    assert "Traceback" in log.read_text() and "disk on fire" in log.read_text()
    log.unlink()


@pytest.mark.smollm
def test_demo_writes_result_report_and_image(smollm, tmp_path, monkeypatch):
    monkeypatch.setattr(
        ap, "load_model", lambda name=None: smollm
    )  # the session's model, loaded once
    result = run("demo", "--prompts", "2", "--out", str(tmp_path))
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == [
        "ioi_resid_pre_denoise.html",
        "ioi_resid_pre_denoise.nc",
        "ioi_resid_pre_denoise_norm_logit_diff.png",
    ]
    assert f"report {tmp_path / 'ioi_resid_pre_denoise.html'}" in result.stdout
    assert (
        "norm_logit_diff (denoise resid_pre)" in result.stdout
    )  # the terminal table is still printed
    assert ap.load(tmp_path / "ioi_resid_pre_denoise.nc").attrs["model"] == smollm.name


STARTUP = """
import sys
import actpatch.cli
for argv in (["--help"], ["sweep", "--help"], ["attribute", "--help"], ["sweep", "--direction", "sideways"],
             ["sweep", "--task", "ioi", "--site", "resid-pre"], ["circuit", "--task", "ioi", "--corruption", "zz"]):
    try:
        actpatch.cli.main(argv)
    except SystemExit:
        pass
import actpatch as ap
ap.__all__, dir(ap)
print("loaded:", *sorted(m for m in ("torch", "transformers", "plotly", "matplotlib", "ray", "xarray") if m in sys.modules))
"""


def test_help_and_flag_errors_load_no_heavy_library():
    # A fresh interpreter: this one has imported everything already. Time is not measured (CI
    # machines vary); what makes `--help` slow is importing these, so their absence is the test.
    done = subprocess.run(
        [sys.executable, "-c", STARTUP], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "Commands:" in done.stdout and "denoise" in done.stdout  # the helps were printed
    assert (
        "Did you mean 'resid_pre'" in done.stderr
        and "'zz' is not a corruption of ioi" in done.stderr
    )  # and the errors
    assert done.stdout.splitlines()[-1] == "loaded:", (
        f"imported while parsing flags: {done.stdout.splitlines()[-1]}"
    )


def test_every_public_name_resolves_lazily():
    script = (
        "import sys, actpatch as ap\nfrom actpatch import sweep, Run, report\n"
        "assert all(getattr(ap, n) is not None for n in ap.__all__) and set(ap.__all__) <= set(dir(ap))\n"
        "assert ap.report.show is report.show and ap.Run is __import__('actpatch.pairs').pairs.Run\n"
        "assert ap.evaluate_circuit is ap.circuits.evaluate and ap.metrics.METRICS is ap.METRICS\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        ap.nope  # noqa: B018

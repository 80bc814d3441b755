"""`actpatch das` on a tiny GPT-2 checkpoint: table and subspace are written, bad sites exit 2."""

from __future__ import annotations

import pytest
from safetensors.torch import load_file

import actpatch as ap
from command_line import run


def das(tiny_folder, out, *extra):
    return run(
        "das",
        "--model",
        tiny_folder,
        "--task",
        "ioi",
        "--prompts",
        "8",
        "--out",
        str(out),
        "--steps",
        "5",
        "--random-subspaces",
        "3",
        "--no-random-model",
        *extra,
    )


def test_das_writes_its_table_and_subspace(tiny_folder, tmp_path):
    assert run("das", "--help").exit_code == 0
    result = das(
        tiny_folder,
        tmp_path,
        "--site",
        "resid_pre",
        "--layers",
        "1",
        "--positions",
        "END",
        "--rank",
        "2",
    )
    assert result.exit_code == 0, result.output
    assert "full_component" in result.output and "random_subspaces" in result.output
    table = ap.load(tmp_path / "ioi_resid_pre_denoise_das.nc")
    assert table.attrs["analysis"] == "das" and table.attrs["site"] == "resid_pre[layer=1, pos=END]"
    assert table.attrs["rank"] == 2 and table.attrs["experiment"]["task"]["name"] == "ioi"
    U = load_file(tmp_path / "ioi_resid_pre_denoise_das_subspace.safetensors")["U"]
    assert U.shape == (16, 2)
    page = (tmp_path / "ioi_resid_pre_denoise_das.html").read_text()
    assert "Held-out accuracy beside its controls" in page and "projected on the learned" in page
    rerun = das(tiny_folder, tmp_path, "--site", "resid_pre", "--layers", "1", "--positions", "END")
    assert rerun.exit_code == 2 and "--overwrite" in rerun.stderr


@pytest.mark.parametrize(
    "args, reason",
    [
        (["--site", "resid_pre"], "one layer"),
        (["--site", "resid_pre", "--layers", "0,1"], "one layer"),
        (["--site", "head", "--layers", "1"], "one head"),
        (["--site", "resid_pre", "--layers", "1", "--positions", "S1,END"], "one position"),
        (["--site", "neuron", "--layers", "1", "--neurons", "3"], "whole neuron layer"),
        (["--site", "k", "--layers", "1", "--heads", "0"], "subspace sits at"),
        (["--site", "resid_pre", "--layers", "1", "--rank", "40"], "rank must be"),
        (["--site", "resid_pre", "--layers", "1", "--direction", "noise"], "denoises"),
    ],
)
def test_das_bad_input_exits_2_with_one_line(tiny_folder, tmp_path, args, reason):
    result = das(tiny_folder, tmp_path, *args)
    assert result.exit_code == 2, result.output
    assert reason in result.stderr and len(result.stderr.strip().splitlines()) == 1

"""`actpatch sweep --ci` and `actpatch compare` on a tiny GPT-2 saved as a checkpoint folder:
intervals in the saved result and the printed table, flags and refusals of the comparison."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

import actpatch as ap
from actpatch import stats
from command_line import run


def sweep(tiny_folder, out, *extra):
    # Random weights do no task: the baseline check is off.
    return run(
        "sweep",
        "--model",
        tiny_folder,
        "--task",
        "ioi",
        "--prompts",
        "6",
        "--no-check-baseline",
        "--site",
        "resid_pre",
        "--out",
        str(out),
        *extra,
    )


@pytest.fixture(scope="module")
def per_prompt(tiny_folder, tmp_path_factory):
    """Per-prompt results of the same prompts: denoising and noising, and denoising with other prompts."""
    folder = tmp_path_factory.mktemp("per-prompt")
    paths = {}
    for name, extra in (
        ("denoise", []),
        ("noise", ["--direction", "noise"]),
        ("other", ["--seed", "5"]),
    ):
        result = sweep(tiny_folder, folder / name, "--per-prompt", "-q", *extra)
        assert result.exit_code == 0, result.output
        paths[name] = next((folder / name).glob("*.nc"))
    return paths


def test_ci_in_the_experiment_file_reaches_the_sweep(tiny_folder, tmp_path):
    config = tmp_path / "ci.toml"
    config.write_text("[sweep]\nsite = 'resid_pre'\nci = 0.8\nn_boot = 150\nboot_seed = 4\n")
    result = sweep(tiny_folder, tmp_path / "out", "--config", str(config), "-q")
    assert result.exit_code == 0, result.output
    saved = ap.load(tmp_path / "out" / "ioi_resid_pre_denoise.nc")
    assert list(saved["stat"].values) == ["value", "lo", "hi"]
    assert (
        saved.attrs["interval"]["ci"],
        saved.attrs["interval"]["n_boot"],
        saved.attrs["interval"]["seed"],
    ) == (0.8, 150, 4)
    flags_win = sweep(
        tiny_folder, tmp_path / "flags", "--config", str(config), "--n-boot", "120", "-q"
    )
    assert flags_win.exit_code == 0, flags_win.output
    assert (
        ap.load(tmp_path / "flags" / "ioi_resid_pre_denoise.nc").attrs["interval"]["n_boot"] == 120
    )


def test_ci_reaches_the_sweep_and_the_saved_result(tiny_folder, tmp_path):
    result = sweep(tiny_folder, tmp_path, "--ci", "0.9", "--n-boot", "200", "--boot-seed", "3")
    assert result.exit_code == 0, result.output
    saved = ap.load(tmp_path / "ioi_resid_pre_denoise.nc")
    assert list(saved["stat"].values) == ["value", "lo", "hi"] and "batch" not in saved.dims
    assert saved.attrs["interval"]["ci"] == 0.9 and saved.attrs["interval"]["n_boot"] == 200
    assert saved.attrs["interval"]["seed"] == 3
    # The printed table: the interval's coverage, and the strongest sites with their bounds.
    values = saved.sel(metric="norm_logit_diff")
    value = values.sel(stat="value").transpose("layer", "pos").values
    layer, pos = np.unravel_index(np.abs(value).argmax(), value.shape)
    cell = values.isel(layer=layer, pos=pos)
    assert "90 % interval over 6 prompts (200 resamples)" in result.output
    assert (
        f"{float(cell.sel(stat='value')):+.3f} [{float(cell.sel(stat='lo')):+.3f}, "
        f"{float(cell.sel(stat='hi')):+.3f}]"
    ) in result.output


def test_the_table_marks_cells_whose_interval_excludes_no_effect(
    tiny_folder, tmp_path, monkeypatch
):
    real = ap.sweep

    def narrowed(*args, **kwargs):
        # Pin one cell's interval away from 0 and one onto it: the marks must follow the bounds.
        result = real(*args, **kwargs).copy()
        at = dict(metric="norm_logit_diff", layer=1, pos=13)
        result.loc[{**at, "stat": "lo"}], result.loc[{**at, "stat": "hi"}] = 0.5, 0.7
        result.loc[{**at, "pos": 3, "stat": "lo"}], result.loc[{**at, "pos": 3, "stat": "hi"}] = (
            -0.1,
            0.1,
        )
        return result

    monkeypatch.setattr(ap, "sweep", narrowed)
    result = sweep(tiny_folder, tmp_path, "--ci", "0.95", "--n-boot", "50")
    assert result.exit_code == 0, result.output
    rows = {
        line.split()[0]: line
        for line in result.output.splitlines()
        if line[:5].strip() in ("0", "1")
    }
    assert rows["1"].rstrip().endswith("*") and rows["1"].count("*") == 1, rows
    assert "*" not in rows["0"]


def test_ci_refuses_per_prompt(tiny_folder, tmp_path):
    result = sweep(tiny_folder, tmp_path, "--ci", "0.95", "--per-prompt")
    assert result.exit_code == 2 and "remove per_prompt" in result.stderr


@pytest.mark.parametrize("value", ["1.5", "0"])
def test_ci_outside_0_1_is_a_usage_error(tiny_folder, tmp_path, value):
    result = sweep(tiny_folder, tmp_path, "--ci", value)
    assert result.exit_code == 2 and "--ci" in result.stderr


def test_compare_prints_the_flagged_sites_and_writes_the_table(per_prompt, tmp_path):
    out = tmp_path / "table.csv"
    result = run(
        "compare",
        str(per_prompt["denoise"]),
        str(per_prompt["noise"]),
        "--fdr",
        "0.05",
        "--n-boot",
        "2000",
        "--out",
        str(out),
    )
    assert result.exit_code == 0, result.output
    want = stats.compare(
        ap.load(per_prompt["denoise"]),
        ap.load(per_prompt["noise"]),
        ci=ap.Bootstrap(n_boot=2000),
        fdr=0.05,
    )
    written = pd.read_csv(out)
    assert len(written) == len(want) and written["flagged"].tolist() == want["flagged"].tolist()
    flagged = want[want["flagged"]]
    assert 0 < len(flagged) < len(want)
    assert f"{len(flagged)} of {len(want)} sites differ" in result.output
    row = flagged.iloc[0]
    assert (
        f"{row['site']}: A {row['a']:+.3f}, B {row['b']:+.3f}, A − B {row['difference']:+.3f} ["
        in result.output
    )
    unflagged = want[~want["flagged"]]["site"]
    assert not any(f"{site}:" in result.output for site in unflagged)


@pytest.mark.parametrize(
    "which, reason",
    [
        (
            "averaged",
            "is not a per-prompt result (no 'batch' dimension): sweep it again with --per-prompt",
        ),
        ("other", "do not share prompts: clean prompt 0 is"),
        ("missing", "no such file"),
    ],
)
def test_compare_refuses_what_it_cannot_pair(per_prompt, tiny_folder, tmp_path, which, reason):
    if which == "averaged":
        assert sweep(tiny_folder, tmp_path, "-q").exit_code == 0
        other = tmp_path / "ioi_resid_pre_denoise.nc"
    else:
        other = per_prompt["other"] if which == "other" else tmp_path / "nope.nc"
    result = run("compare", str(per_prompt["denoise"]), str(other))
    assert result.exit_code == 2, result.output
    assert (
        result.stderr.startswith("error: ")
        and result.stderr.count("\n") == 1
        and reason in result.stderr
    ), result.stderr


def test_compare_refuses_a_metric_it_does_not_know(per_prompt):
    result = run(
        "compare", str(per_prompt["denoise"]), str(per_prompt["noise"]), "--metric", "nope"
    )
    assert result.exit_code == 2 and "--metric must be one of" in result.stderr


def test_circuit_ci_bands_the_frontier_and_bounds_each_drop(tiny_folder, tmp_path):
    # Random weights barely do the task; seed 2's prompts put clean above corrupt, as the circuit's
    # own baseline check (which --no-check-baseline does not reach) requires.
    config = tmp_path / "circuit.toml"
    config.write_text(
        '[task]\nname = "ioi"\nn = 4\nseed = 2\n[sweep]\nsite = "head"\ncheck_baseline = false\nn_boot = 150\n'
        "[circuit]\nrecovery = 0.05\nmax_size = 6\n"
    )
    result = run(
        "circuit",
        "--config",
        str(config),
        "--model",
        tiny_folder,
        "--ci",
        "0.9",
        "--boot-seed",
        "2",
        "--out",
        str(tmp_path / "out"),
    )
    assert result.exit_code == 0, result.output
    out = tmp_path / "out"
    swept, frontier = (
        ap.load(out / "ioi_head_denoise_circuit.nc"),
        ap.load(out / "ioi_head_denoise_circuit_frontier.nc"),
    )
    for saved in (swept, frontier):
        assert list(saved["stat"].values) == ["value", "lo", "hi"]
        assert (
            saved.attrs["interval"]["ci"],
            saved.attrs["interval"]["n_boot"],
            saved.attrs["interval"]["seed"],
        ) == (0.9, 150, 2)
    curve = frontier.sel(metric="norm_logit_diff")
    assert (curve.sel(stat="lo") <= curve.sel(stat="value") + 1e-12).all() and (
        curve.sel(stat="hi") > curve.sel(stat="lo")
    ).any()
    assert ap.circuits.ranking(swept) == [ap.Site.parse(s) for s in frontier.attrs["ranking"]]
    row = curve.isel(size=1)
    assert (
        f"{float(row.sel(stat='lo')):.3f}".rstrip("0") in result.output
    )  # the printed frontier has its bounds
    if (out / "ioi_head_denoise_circuit_minimality.csv").exists():
        table = pd.read_csv(out / "ioi_head_denoise_circuit_minimality.csv")
        assert {"drop_lo", "drop_hi", "drop_excludes_0"} <= set(table.columns)
    page = (out / "ioi_head_denoise_circuit.html").read_text()
    assert "90 % interval" in page and "toself" in page  # the band's legend and its filled trace


def test_attribute_ci_bounds_the_estimates_and_the_rank_correlation(tiny_folder, tmp_path):
    result = run(
        "attribute",
        "--model",
        tiny_folder,
        "--task",
        "ioi",
        "--prompts",
        "6",
        "--no-check-baseline",
        "--site",
        "head",
        "--verify",
        "2",
        "--ci",
        "0.9",
        "--n-boot",
        "120",
        "--out",
        str(tmp_path),
    )
    assert result.exit_code == 0, result.output
    saved = ap.load(tmp_path / "ioi_head_denoise_atp.nc")
    assert (
        list(saved["stat"].values) == ["value", "lo", "hi"]
        and saved.attrs["interval"]["n_boot"] == 120
    )
    lo, hi = saved.attrs["verification"]["spearman_interval"]
    assert -1 <= lo <= saved.attrs["verification"]["spearman"] + 1e-12 and hi <= 1
    assert (
        f"spearman={saved.attrs['verification']['spearman']:.3f} [{lo:.3f}, {hi:.3f}]"
        in result.output
    )
    table = pd.read_csv(tmp_path / "ioi_head_denoise_atp_verify.csv")
    assert {"estimate_lo", "estimate_hi", "exact_lo", "exact_hi"} <= set(table.columns)
    refused = run(
        "attribute",
        "--model",
        tiny_folder,
        "--task",
        "ioi",
        "--no-check-baseline",
        "--site",
        "head",
        "--graddrop",
        "--ci",
        "0.9",
        "--out",
        str(tmp_path / "refused"),
    )
    assert refused.exit_code == 2 and "--graddrop" in refused.output

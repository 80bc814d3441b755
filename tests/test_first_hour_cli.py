"""What a researcher's first hour tripped on, on the command line (a tiny GPT-2 saved as a
checkpoint folder): answers without their leading space, the edge circuit printed and its
outputs, the provenance of an edge run, bars in a redirected log, the closest calls of a
comparison, the marks of an interval table, and errors that name the flag or the file."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import xarray as xr

import actpatch as ap
from actpatch.metrics import METRICS
from command_line import edge_run, run

PROMPT = "When John and Mary went to the store, John gave a drink to"
CORRUPT = "When Alice and Bob went to the store, Carol gave a drink to"


@pytest.fixture(scope="module")
def edges(tiny_folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("edges")
    result = edge_run(
        tiny_folder, out, "--method", "eap", "--percent", "20", "--ci", "0.9", "--n-boot", "100"
    )
    assert result.exit_code == 0, result.output
    return out, result


# --- 1. answers without their leading space -------------------------------------------------------


def test_a_file_task_with_an_answer_missing_its_space_stops_with_row_line_and_fix(
    tiny_folder, tmp_path
):
    path = tmp_path / "pairs.jsonl"
    rows = [
        {"clean": PROMPT, "corrupt": CORRUPT, "answer": " Mary", "wrong": " John"},
        {"clean": PROMPT, "corrupt": CORRUPT, "answer": "Mary", "wrong": " John"},
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    result = run(
        "sweep",
        "--model",
        tiny_folder,
        "--task",
        f"file:{path}",
        "--site",
        "resid_pre",
        "--no-check-baseline",
        "--out",
        str(tmp_path / "out"),
    )
    assert result.exit_code == 2
    assert "row 2 (line 2), field 'answer': 'Mary' has no leading space" in result.stderr
    assert "write ' Mary'" in result.stderr
    assert not list((tmp_path / "out").glob("*.nc"))  # nothing ran


# --- 3. the edge circuit, printed and written -----------------------------------------------------


def test_the_edge_command_prints_the_curve_and_the_circuits_top_edges(edges):
    out, result = edges
    assert "faithfulness of the top edges by eap" in result.output
    assert (
        "the circuit at 20 %:" in result.output and "strongest by |score| (eap):" in result.output
    )
    lines = [line for line in result.output.splitlines() if " → " in line]
    assert lines and all(len(line.split()) == 4 for line in lines)  # sender → receiver score
    data = json.loads((out / "graph.json").read_text())
    first_sender, _, first_receiver, first_score = lines[0].split()
    assert data["edges"][f"{first_sender}->{first_receiver}"]["in_graph"]
    assert float(first_score) == pytest.approx(
        data["edges"][f"{first_sender}->{first_receiver}"]["score"], rel=1e-3
    )


def test_faithfulness_csv_under_ci_has_no_empty_interval_columns(edges):
    out, _ = edges
    table = pd.read_csv(out / "faithfulness.csv")
    for metric in ("prob", "logprob", "kl", "accuracy", "faithfulness"):
        assert {f"{metric}_lo", f"{metric}_hi"} <= set(table.columns)
    assert not table.isna().any().any()


# --- 4. provenance and output hygiene -------------------------------------------------------------


def test_an_edge_run_records_only_what_it_ran(edges):
    out, _ = edges
    curve = ap.load(next(out.glob("*.nc")))
    experiment = curve.attrs["experiment"]
    assert "attribute" not in experiment and "circuit" not in experiment
    assert set(experiment["sweep"]) <= {
        "ablation",
        "chunk",
        "check_baseline",
        "ci",
        "n_boot",
        "boot_seed",
    }
    assert curve.attrs["analysis"] == "faithfulness_curve" and curve.attrs["method"] == "eap"
    assert "clean_prompts" in curve.attrs and "versions" in curve.attrs
    page = next(out.glob("*.html")).read_text()
    # one engine recorded: the edge engine the curve ran (named as the sweeps' are), no sweep's
    assert curve.attrs["engine"] == "batched" and page.count("<th>engine</th>") == 1
    assert "atp" not in page


def test_edge_gradient_bars_stay_out_of_a_redirected_log(tiny_folder, tmp_path):
    result = edge_run(
        tiny_folder, tmp_path, "--method", "eap-ig-inputs", "--steps", "5", "--chunk", "1"
    )
    assert result.exit_code == 0, result.output
    assert "edge gradients" not in result.output + result.stderr


def _per_prompt(values: np.ndarray) -> xr.DataArray:
    """A per-prompt sweep of `values.shape[0]` sites (layers) over `values.shape[1]` prompts."""
    data = np.zeros((len(METRICS), *values.shape))
    data[METRICS.index("logit_diff")] = data[METRICS.index("norm_logit_diff")] = values
    n = values.shape[1]
    return xr.DataArray(
        data,
        dims=["metric", "layer", "batch"],
        name="patching_effect",
        coords={"metric": list(METRICS), "layer": list(range(values.shape[0]))},
        attrs={
            "direction": "denoise",
            "per_prompt_baseline_logit_diff": {"clean": [1.0] * n, "corrupt": [0.0] * n},
        },
    )


def test_compare_prints_the_closest_calls_when_nothing_survives(tmp_path):
    rng = np.random.default_rng(0)
    a = rng.normal(0.5, 0.2, (50, 30))
    b = a + rng.normal(0, 0.01, a.shape)
    b[7] -= 0.1  # one site differs, but its p cannot beat 50 sites' control at 200 resamples
    paths = [ap.save(_per_prompt(v), tmp_path / f"{name}.nc") for name, v in (("a", a), ("b", b))]
    result = run("compare", *map(str, paths), "--n-boot", "200", "--metric", "logit_diff")
    assert result.exit_code == 0, result.output
    assert "0 of 50 sites differ" in result.output and "closest calls" in result.output
    closest = result.output.split("closest calls")[1].splitlines()[1]
    assert (
        closest.strip().startswith("layer=7")
        and "p = 0.00995" in closest
        and "(adjusted" in closest
    )


def test_the_interval_table_marks_only_effects_it_prints(tiny_folder, tmp_path, monkeypatch):
    real = ap.sweep

    def pinned(*args, **kwargs):
        # One cell's effect is real but prints as 0.00, another's is large; both exclude 0.
        result = real(*args, **kwargs).copy()
        at = dict(metric="norm_logit_diff", layer=0, pos=3)
        (
            result.loc[{**at, "stat": "value"}],
            result.loc[{**at, "stat": "lo"}],
            result.loc[{**at, "stat": "hi"}],
        ) = 0.001, 0.0005, 0.002
        at = dict(metric="norm_logit_diff", layer=1, pos=3)
        (
            result.loc[{**at, "stat": "value"}],
            result.loc[{**at, "stat": "lo"}],
            result.loc[{**at, "stat": "hi"}],
        ) = 0.6, 0.5, 0.7
        return result

    monkeypatch.setattr(ap, "sweep", pinned)
    result = run(
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
        "--ci",
        "0.95",
        "--n-boot",
        "50",
        "--out",
        str(tmp_path),
    )
    assert result.exit_code == 0, result.output
    rows = {
        line.split()[0]: line
        for line in result.output.splitlines()
        if line[:5].strip() in ("0", "1")
    }
    cell = slice(
        6 + 8 * 3, 6 + 8 * 3 + 7
    )  # a 6-character layer column, then cells 6 wide, a mark, a space
    assert rows["0"][cell] == "  0.00 " and rows["1"][cell] == "  0.60*"


# --- 5. errors that name the flag or the file -----------------------------------------------------


def test_prompts_with_a_file_task_names_the_flag(tiny_folder, tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(
        json.dumps({"clean": PROMPT, "corrupt": CORRUPT, "answer": " Mary", "wrong": " John"})
        + "\n"
    )
    result = run(
        "sweep",
        "--model",
        tiny_folder,
        "--task",
        f"file:{path}",
        "--prompts",
        "4",
        "--site",
        "resid_pre",
    )
    assert result.exit_code == 2 and "--prompts does not apply to file: tasks" in result.stderr
    assert "task.n" not in result.stderr


def test_a_gguf_file_of_other_bytes_is_refused_naming_it(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_text("<!DOCTYPE html><title>404</title>")
    result = run(
        "sweep",
        "--model",
        str(path),
        "--task",
        "ioi",
        "--site",
        "resid_pre",
        "--out",
        str(tmp_path / "out"),
    )
    assert result.exit_code == 2
    assert (
        f"{path} is named .gguf but is not a GGUF file" in result.stderr
        and "again" in result.stderr
    )

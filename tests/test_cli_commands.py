"""`actpatch models`, `check`, `sweep`, `attribute` and `circuit` on a tiny GPT-2 saved as a
checkpoint folder (the command line loads models by path), with their outputs and exit codes."""

from __future__ import annotations

import importlib
import logging
import re

import pandas as pd
import pytest
import xarray as xr

import actpatch as ap
from actpatch import model_checks
from actpatch.cli import common
from actpatch.model_checks import Check
from actpatch.models.arch import ARCHS
from actpatch.sites import SITE_KINDS
from actpatch.tasks.ioi import CLASSIC
from command_line import run, run_tiny_ioi


def sweep(tiny_folder, out, *extra):
    return run_tiny_ioi(("sweep",), tiny_folder, out, *extra)


def test_every_command_has_help():
    for command in ("models", "check", "sweep", "attribute", "circuit", "demo", "report"):
        result = run(command, "--help")
        assert result.exit_code == 0 and len(result.output.splitlines()) > 5, command


def test_models_lists_the_default_model_its_cache_and_the_families():
    result = run("models")
    assert result.exit_code == 0, result.output
    assert "SmolLM2-135M-Instruct" in result.output and "cache:" in result.output
    for name in [*ARCHS, "if config.use_parallel_residual", "attention.query_key_value"]:
        assert name in result.output


def test_check_passes_on_a_working_model(tiny_folder):
    result = run("check", "--model", tiny_folder, "--prompts", "2")
    assert result.exit_code == 0, result.output
    lines = [line for line in result.output.splitlines() if line.startswith(("pass", "FAIL"))]
    # Each site kind's no-op patch through both engines, plus the head sum and the hooks checks.
    expected = 2 * len(SITE_KINDS) + 4
    assert len(lines) == expected and all(line.startswith("pass") for line in lines)
    assert any("head sum" in line for line in lines) and any("reference" in line for line in lines)
    assert f"all {expected} checks passed" in result.output


def test_check_exits_1_when_a_check_fails(tiny_folder, monkeypatch):
    bad = Check("head sum", "-", 0.5, 1e-4, "relative", False, "worst at layer 1")
    monkeypatch.setattr(model_checks, "check_model", lambda model, pairs, progress=None: [bad])
    result = run("check", "--model", tiny_folder, "--prompts", "2")
    assert result.exit_code == 1
    assert "FAIL  head sum" in result.output and "1 of 1 checks failed" in result.stderr


def test_sweep_writes_result_and_report_with_provenance(tiny_folder, tmp_path):
    result = sweep(
        tiny_folder,
        tmp_path,
        "--site",
        "head",
        "--positions",
        "S2,END",
        "--direction",
        "both",
        "--seed",
        "3",
        "--pngs",
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "ioi_head_both.html",
        "ioi_head_both.nc",
        "ioi_head_both_norm_logit_diff.png",
    ]
    saved = ap.load(tmp_path / "ioi_head_both.nc")
    assert list(saved["direction"].values) == ["denoise", "noise"]
    attrs = saved.attrs
    assert (
        attrs["task"] == "ioi"
        and attrs["seed"] == 3
        and attrs["corruption"] == "abc"
        and attrs["engine"] == "batched"
    )
    assert attrs["model"] == tiny_folder and re.fullmatch(
        r"[0-9a-f]{64}", attrs["weights_fingerprint"]
    )
    assert {"actpatch", "torch", "transformers"} <= set(attrs["versions"])
    assert (
        attrs["experiment"]["sweep"]["direction"] == "both"
        and attrs["experiment"]["task"]["seed"] == 3
    )
    assert (
        "strongest" in result.output
    )  # head × pos per direction: no single layer grid, so the strongest patches


def test_sweep_refuses_an_unsolved_task_unless_told(tiny_folder, tmp_path):
    result = run(
        "sweep",
        "--model",
        tiny_folder,
        "--task",
        "greater_than",
        "--prompts",
        "4",
        "--site",
        "resid_pre",
        "--out",
        str(tmp_path),
    )
    assert (
        result.exit_code == 2
        and "does not perform the task" in result.stderr
        and "--no-check-baseline" in result.stderr
    )


@pytest.mark.parametrize(
    "args, reason",
    [
        (
            ["--site", "resid_pre", "--layers", "7"],
            "layer 7 is out of range: this model has layers 0..1",
        ),
        (["--site", "head", "--positions", "NOPE"], "no named position 'NOPE'"),
        (["--site", "neuron"], "a neuron sweep needs --neurons:"),
        (["--site", "resid-pre"], "Did you mean 'resid_pre'?"),
        (["--site", "resid_pre", "--layers", "x"], "--layers: 'x' is not a whole number"),
        (["--site", "resid_pre", "--chunk", "many"], "Invalid value for '--chunk'"),
        (
            ["--site", "resid_pre", "--corruption", "s9"],
            "task.corruption = 's9' is not a corruption of ioi",
        ),
        (
            ["--site", "resid_pre", "--model", "/no/such/folder"],
            "does not exist. A checkpoint is a folder or a .gguf file; "
            "leave out --model to use the embedded model",
        ),
    ],
)
def test_sweep_bad_input_exits_2_with_one_line(tiny_folder, tmp_path, args, reason):
    result = sweep(tiny_folder, tmp_path, *args)
    assert result.exit_code == 2, result.output
    assert (
        result.stderr.startswith("error: ")
        and result.stderr.count("\n") == 1
        and reason in result.stderr
    ), result.stderr
    # The library's keyword hints (neurons=[...], pass None) are given as the flags that set them.
    assert not re.search(
        r"\b(neurons|layers|heads|positions|check_baseline)=|pass None", result.stderr
    ), result.stderr


@pytest.mark.parametrize(
    "message, flags",
    [
        (
            "a neuron sweep needs neurons=[...]: all 64 neurons",
            "a neuron sweep needs --neurons: all 64 neurons",
        ),
        (
            "or pass check_baseline=False to sweep anyway",
            "or pass --no-check-baseline to sweep anyway",
        ),
        ("drop heads= or use a head site", "drop --heads or use a head site"),
        ("which is noising: pass direction='noise'", "which is noising: pass --direction noise"),
        (
            "pass its kind and layers=/heads=/positions=",
            "pass its kind and --layers/--heads/--positions",
        ),
        (
            "head[layer=9, head=6, pos=END]",
            "head[layer=9, head=6, pos=END]",
        ),  # a site's own fields stay as written
        (
            "sweep.direction = 'sideways'",
            "sweep.direction = 'sideways'",
        ),  # an experiment file's key stays a key
    ],
)
def test_keyword_hints_become_flags(message, flags):
    assert common.in_flags(message) == flags


def test_sweep_failure_exits_1_with_the_traceback_in_the_output_folder(
    tiny_folder, tmp_path, monkeypatch
):
    def broken(*args, **kwargs):
        raise RuntimeError("the GPU caught fire")

    monkeypatch.setattr(ap, "sweep", broken)
    result = sweep(tiny_folder, tmp_path, "--site", "resid_pre")
    log = tmp_path / "actpatch-error.log"
    assert result.exit_code == 1
    assert result.stderr == f"error: RuntimeError: the GPU caught fire (traceback in {log})\n"
    assert "Traceback" in log.read_text() and "broken" in log.read_text()


def test_a_leftover_checkpoint_needs_resume(tiny_folder, tmp_path):
    (tmp_path / "checkpoint" / "denoise").mkdir(parents=True)
    (tmp_path / "checkpoint" / "denoise" / "plan.json").write_text("{}")
    result = sweep(tiny_folder, tmp_path, "--site", "resid_pre")
    assert (
        result.exit_code == 2
        and "add --resume to continue it, or delete that folder" in result.stderr
    )
    mismatched = sweep(tiny_folder, tmp_path, "--site", "resid_pre", "--resume")
    assert mismatched.exit_code == 2 and "written by another sweep" in mismatched.stderr


def test_resume_without_a_checkpoint_just_runs(tiny_folder, tmp_path):
    result = sweep(tiny_folder, tmp_path, "--site", "mlp_out", "--resume")
    assert result.exit_code == 0 and "nothing to resume" in result.output


def test_attribute_verifies_and_writes_estimate_table_and_report(tiny_folder, tmp_path):
    result = run(
        "attribute",
        "--model",
        tiny_folder,
        "--task",
        "ioi",
        "--prompts",
        "4",
        "--no-check-baseline",
        "--site",
        "head",
        "--verify",
        "3",
        "--out",
        str(tmp_path),
    )
    assert result.exit_code == 0, result.output
    assert "Verification(spearman=" in result.output
    estimate = ap.load(tmp_path / "ioi_head_denoise_atp.nc")
    assert (
        estimate.attrs["estimate"]["method"] == "atp"
        and estimate.attrs["verification"]["top_k"] == 3
    )
    assert (
        (tmp_path / "ioi_head_denoise_atp_verify.csv").read_text().startswith("site,estimate,exact")
    )
    assert (
        "Verification against exact patching"
        in (tmp_path / "ioi_head_denoise_atp.html").read_text()
    )


def test_attribute_takes_one_direction_and_one_length(tiny_folder, tmp_path):
    both = run(
        "attribute",
        "--model",
        tiny_folder,
        "--task",
        "ioi",
        "--site",
        "head",
        "--direction",
        "both",
        "--out",
        str(tmp_path),
    )
    assert both.exit_code == 2 and "attribute takes one direction" in both.stderr
    ig = run(
        "attribute",
        "--model",
        tiny_folder,
        "--task",
        "ioi",
        "--site",
        "head",
        "--direction",
        "noise",
        "--ablation",
        "zero",
        "--method",
        "ig",
        "--out",
        str(tmp_path),
    )
    assert ig.exit_code == 2 and "needs a source run" in ig.stderr


def test_circuit_prints_frontier_and_minimality_and_reports_the_curve(tiny_folder, tmp_path):
    # Seed 2: prompts on which the random model's clean run is above its corrupt one (the frontier's
    # own baseline check does not follow --no-check-baseline yet).
    result = run(
        "circuit",
        "--model",
        tiny_folder,
        "--task",
        "ioi",
        "--prompts",
        "4",
        "--seed",
        "2",
        "--no-check-baseline",
        "--recovery",
        "0.5",
        "--out",
        str(tmp_path),
    )
    assert result.exit_code == 0, result.output
    assert "Pareto frontier" in result.output and "smallest circuit recovering 50%" in result.output
    assert "minimality" in result.output
    frontier = ap.load(tmp_path / "ioi_head_denoise_circuit_frontier.nc")
    assert list(frontier["size"].values) == list(
        range(5)
    )  # 2 layers × 2 heads, plus the empty circuit
    page = (tmp_path / "ioi_head_denoise_circuit.html").read_text()
    assert (
        "Pareto frontier: circuit performance against circuit size" in page
        and "Minimality of the" in page
    )
    assert (tmp_path / "ioi_head_denoise_circuit_minimality.csv").exists()


def test_circuit_prints_and_writes_what_find_circuit_finds(tiny_folder, tmp_path):
    """The command and the library call on the same tiny task: the same sweep, frontier, circuit
    and minimality table (seed 2 and --no-check-baseline as in the test above)."""
    result = run_tiny_ioi(
        ("circuit",), tiny_folder, tmp_path, "--seed", "2", "--recovery", "0.5", "--max-size", "3"
    )
    assert result.exit_code == 0, result.output
    model = ap.load_model(tiny_folder)
    pairs = ap.tasks.ioi(model, 4, seed=2, order="abba", templates=CLASSIC)
    found = ap.find_circuit(model, pairs, "head", recovery=0.5, max_size=3, check_baseline=False)
    swept = ap.load(tmp_path / "ioi_head_denoise_circuit.nc")
    assert swept.attrs["clean_prompts"] == list(pairs.clean_text)  # the same prompts
    xr.testing.assert_allclose(swept.drop_attrs(), found.ranked_by.drop_attrs(), atol=1e-6)
    frontier = ap.load(tmp_path / "ioi_head_denoise_circuit_frontier.nc")
    xr.testing.assert_allclose(frontier.drop_attrs(), found.frontier.drop_attrs(), atol=1e-6)
    assert found.circuit is not None
    assert f"{len(found.circuit)} components: {', '.join(map(str, found.circuit))}" in result.output
    table = pd.read_csv(tmp_path / "ioi_head_denoise_circuit_minimality.csv", index_col=0)
    pd.testing.assert_frame_equal(table, found.minimality, check_exact=False, atol=1e-6)


def test_circuit_refuses_a_site_it_cannot_rank(tiny_folder, tmp_path):
    result = run(
        "circuit",
        "--model",
        tiny_folder,
        "--task",
        "ioi",
        "--site",
        "resid_pre",
        "--no-check-baseline",
        "--out",
        str(tmp_path),
    )
    assert (
        result.exit_code == 2
        and "circuit ranks head or mlp_out components, not resid_pre" in result.stderr
    )


@pytest.fixture
def actpatch_log_level():
    # `-v` sets the level of actpatch's loggers for the process; put it back for the other tests.
    logger = logging.getLogger("actpatch")
    level = logger.level
    yield
    logger.setLevel(level)


@pytest.mark.parametrize("verbosity, chunks", [("-v", False), ("-vv", True)])
def test_verbose_logs_loading_baselines_and_chunks(
    tiny_folder, tmp_path, caplog, actpatch_log_level, verbosity, chunks
):
    result = run(
        verbosity,
        "sweep",
        "--model",
        tiny_folder,
        "--task",
        "ioi",
        "--prompts",
        "4",
        "--no-check-baseline",
        "--site",
        "mlp_out",
        "--chunk",
        "2",
        "--out",
        str(tmp_path),
    )
    assert result.exit_code == 0, result.output
    messages = [r.getMessage() for r in caplog.records if r.name.startswith("actpatch")]
    assert any(m.startswith(f"loading {tiny_folder} (float32 on cpu)") for m in messages), messages
    assert any(m.startswith("loaded ") for m in messages) and any(
        m.startswith("baseline logit difference") for m in messages
    )
    assert any(m.startswith("chunk of ") for m in messages) == chunks
    assert not [
        r
        for r in caplog.records
        if not r.name.startswith("actpatch") and r.levelno < logging.WARNING
    ]


def test_quiet_by_default(tiny_folder, tmp_path, caplog, actpatch_log_level):
    result = sweep(tiny_folder, tmp_path, "--site", "mlp_out")
    assert result.exit_code == 0, result.output
    assert not [
        r for r in caplog.records if r.name.startswith("actpatch") and r.levelno < logging.WARNING
    ]


@pytest.mark.parametrize(
    "command, written",
    [
        (["sweep", "--site", "mlp_out"], "ioi_mlp_out_denoise.nc"),
        (["attribute", "--site", "head"], "ioi_head_denoise_atp.nc"),
        (
            ["circuit", "--max-size", "1", "--seed", "2"],
            "ioi_head_denoise_circuit.nc",
        ),  # seed 2: see the circuit test above
    ],
)
def test_a_rerun_into_the_same_out_needs_overwrite(tiny_folder, tmp_path, command, written):
    def rerun(*extra):
        return run_tiny_ioi(tuple(command), tiny_folder, tmp_path, "--quiet", *extra)

    first = rerun()
    assert first.exit_code == 0, first.output
    before = (tmp_path / written).stat().st_mtime_ns
    again = rerun()
    assert again.exit_code == 2 and again.stderr.count("\n") == 1, again.output
    assert f"{tmp_path / written} exists (an earlier run's output): add --overwrite" in again.stderr
    assert (tmp_path / written).stat().st_mtime_ns == before  # refused before anything ran
    replaced = rerun("--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert (tmp_path / written).stat().st_mtime_ns > before


def test_every_bad_input_error_is_where_the_table_says():
    # The table names classes by module so that parsing flags imports nothing; a class moved to
    # another module would turn its errors from exit 2 into exit 1 without this check.
    for module, name in common.BAD_INPUT_ERRORS:
        error = getattr(importlib.import_module(module), name)
        assert isinstance(error, type) and issubclass(error, Exception), (module, name)
        assert common.is_bad_input(error("x"))
    assert common.is_bad_input(ap.SiteError("x")) and not common.is_bad_input(RuntimeError("x"))

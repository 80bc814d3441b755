"""Experiment files: malformed ones are refused with exit code 2 and a message naming the problem;
every file in examples/ is valid and runs on a tiny model."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import actpatch as ap
from actpatch import cli, experiment
from command_line import run

EXAMPLES = sorted((Path(__file__).parents[1] / "examples").glob("*.toml"))
GOOD = """
[task]
name = "ioi"
n = 4
[sweep]
site = "resid_pre"
"""


def with_change(old: str, new: str) -> str:
    assert old in GOOD
    return GOOD.replace(old, new)


MALFORMED = [
    # (file text, the message's regex)
    (
        GOOD + "bogus = 1\n",
        r"unknown key 'sweep.bogus' \(allowed in \[sweep\]: site, direction, positions, layers",
    ),
    (
        GOOD + "[sweeps]\nsite = 'head'\n",
        r"unknown section \[sweeps\] \(allowed sections: model, task, sweep, attribute, circuit, output\)",
    ),
    (with_change("n = 4", 'n = "4"'), r"task.n = '4': input should be a valid integer"),
    (with_change("n = 4", "n = true"), r"task.n = True: input should be a valid integer"),
    (with_change('site = "resid_pre"', ""), r"missing key 'sweep.site'"),
    ("[sweep]\nsite = 'head'\n", r"missing key 'task.name' \(give --task\)"),
    (
        GOOD + 'direction = "sideways"\n',
        r"sweep.direction = 'sideways': must be one of 'denoise', 'noise' or 'both'",
    ),
    (GOOD + 'engine = "fast"\n', r"sweep.engine = 'fast': must be one of 'batched' or 'reference'"),
    (
        with_change('name = "ioi"', 'name = "ioj"'),
        r"task.name: unknown task 'ioj'; allowed: ioi, ioi_groups, factual, greater_than, "
        r"induction, or file:PATH",
    ),
    (
        with_change('name = "ioi"', 'name = "factual"\ncorruption = "s2"'),
        r"task.corruption = 's2' is not a corruption of factual; allowed: str, noise",
    ),
    (
        with_change('site = "resid_pre"', 'site = "resid"'),
        r"sweep.site: unknown site kind 'resid'.*Site kinds: resid_pre",
    ),
    (GOOD + "positions = 3\n", r"sweep.positions: must be \"each\", \"all\", or a non-empty list"),
    (
        GOOD + 'ablation = "zero"\n',
        r"sweep.ablation = 'zero' knocks sites out of the clean run, which is noising: set direction = \"noise\"",
    ),
    (GOOD + "chunk = 0\n", r"sweep.chunk = 0: input should be greater than 0"),
    (GOOD + 'layers = "0-3"\n', r"sweep.layers = '0-3': input should be a valid list"),
    (GOOD + 'layers = [0, "one"]\n', r"sweep.layers\[1\] = 'one': input should be a valid integer"),
    (
        with_change("n = 4", 'n = 4\nrelations = ["capital"]'),
        r"task.relations applies to factual only, not to ioi",
    ),
    (
        with_change("n = 4", "n = 4\nnoise_scale = 3.0"),
        r"task.noise_scale applies to corruption = \"noise\" only",
    ),
    (
        'task = "ioi"\n[sweep]\nsite = "head"\n',
        r"\[task\] must be a section \(a TOML table\), got 'ioi'",
    ),
    (
        GOOD + "[model]\ndtype = 'int8'\n",
        r"model.dtype = 'int8': must be one of 'float32', 'bfloat16', 'float16' or 'float64'",
    ),
    (
        GOOD + "[circuit]\nrecovery = 2.0\n",
        r"circuit.recovery = 2.0: input should be less than or equal to 1",
    ),
    (
        GOOD + "[attribute]\nmethod = 'ig'\ngraddrop = true\n",
        r"attribute.graddrop goes with method = \"atp\" or \"atp\*\"",
    ),
    (GOOD + "site = 'head'\n", r"not valid TOML \(Cannot overwrite a value"),
    (GOOD + "ci = 1.5\n", r"sweep.ci = 1.5: input should be less than 1"),
    (
        GOOD + "ci = 0.95\nper_prompt = true\n",
        r"sweep.ci returns intervals computed from every prompt's numbers.*remove per_prompt",
    ),
    (GOOD + "n_boot = 0\n", r"sweep.n_boot = 0: input should be greater than 0"),
    (GOOD + 'boot_seed = "1"\n', r"sweep.boot_seed = '1': input should be a valid integer"),
]


@pytest.mark.parametrize("text, message", MALFORMED, ids=[f"{i}" for i in range(len(MALFORMED))])
def test_malformed_experiment_exits_2_naming_the_problem(tmp_path, text, message):
    config = tmp_path / "bad.toml"
    config.write_text(text)
    result = run("sweep", "--config", str(config), "--out", str(tmp_path / "out"))
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(f"error: {config}: ") and result.stderr.count("\n") == 1, (
        result.stderr
    )
    assert re.search(message, result.stderr), result.stderr
    assert not (tmp_path / "out").exists()  # refused before anything ran


def test_interval_keys_are_read_and_the_flags_override_them(tmp_path):
    config = tmp_path / "ci.toml"
    config.write_text(GOOD + "ci = 0.9\nn_boot = 200\nboot_seed = 4\n")
    spec = experiment.load(config)
    assert (spec.sweep.ci, spec.sweep.n_boot, spec.sweep.boot_seed) == (0.9, 200, 4)
    assert spec.sweep.bootstrap == ap.Bootstrap(0.9, n_boot=200, seed=4)  # the library's ci=
    assert (
        experiment.validate({"task": {"name": "ioi"}, "sweep": {"site": "head"}}).sweep.ci,
        spec.sweep.n_boot,
    ) == (None, 200)
    from actpatch.cli.common import build_experiment

    merged = build_experiment({"config": config, "ci": 0.8, "n_boot": None, "boot_seed": 7})
    assert (merged.sweep.ci, merged.sweep.n_boot, merged.sweep.boot_seed) == (0.8, 200, 7)


def test_missing_experiment_file(tmp_path):
    result = run("sweep", "--config", str(tmp_path / "none.toml"))
    assert result.exit_code == 2 and "no such experiment file" in result.stderr


def test_flags_name_themselves_when_no_file_is_given():
    result = run("sweep", "--task", "ioi")
    assert result.exit_code == 2
    assert "missing key 'sweep.site' (give --site)" in result.stderr


def test_flags_override_the_file(tmp_path):
    config = tmp_path / "x.toml"
    config.write_text(GOOD)
    spec = cli.common.build_experiment(
        {"config": config, "site": "head", "layers": "0-2,5", "positions": "S2,-1", "prompts": 6}
    )
    assert (spec.sweep.site, spec.sweep.layers, spec.sweep.positions, spec.task.n) == (
        "head",
        [0, 1, 2, 5],
        ["S2", -1],
        6,
    )
    assert spec.task.name == "ioi"  # kept from the file


def test_a_file_task_is_read_relative_to_the_experiment_file(tmp_path):
    (tmp_path / "sub").mkdir()
    config = tmp_path / "sub" / "x.toml"
    config.write_text(with_change('name = "ioi"\nn = 4', 'name = "file:pairs.jsonl"'))
    assert experiment.load(config).task.name == f"file:{tmp_path / 'sub' / 'pairs.jsonl'}"


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_is_valid(path):
    spec = experiment.load(path)
    assert spec.output.folder.startswith("actpatch-out/")


def test_the_corruption_table_names_every_task_scheme():
    # experiment.py writes IOI's schemes out so that checking a file needs no torch; hold it to them.
    from actpatch.corrupt import IOI_CORRUPTIONS

    assert (
        experiment.CORRUPTIONS["ioi"]
        == experiment.CORRUPTIONS["ioi_groups"]
        == tuple(IOI_CORRUPTIONS)
    )
    assert set(experiment.CORRUPTIONS) == set(experiment.TASKS)


def test_there_is_an_example_per_analysis():
    names = {p.stem for p in EXAMPLES}
    assert {
        "sweep_ioi_resid_pre",
        "attribute_ioi_heads",
        "circuit_ioi",
        "noise_factual",
        "ablation_ioi_heads",
    } <= names


def command_of(path: Path) -> str:
    return next((c for c in ("attribute", "circuit") if path.stem.startswith(c)), "sweep")


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_runs_on_a_tiny_model(path, tiny_folder, tmp_path):
    out = tmp_path / "out"
    # Random weights do no task, so the baseline check is off; the example's own settings are kept.
    # The circuit analyses check the baseline themselves (--no-check-baseline reaches the sweep
    # only), so the circuit runs on prompts (seed 2) where the random model's clean run is above
    # its corrupt one.
    seed = ["--seed", "2"] if command_of(path) == "circuit" else []
    result = run(
        command_of(path),
        "--config",
        str(path),
        "--model",
        str(tiny_folder),
        "--prompts",
        "4",
        "--no-check-baseline",
        "--out",
        str(out),
        "--quiet",
        *seed,
    )
    assert result.exit_code == 0, result.output + str(result.exception)
    saved = sorted(out.glob("*.nc"))
    assert saved and any(out.glob("*.html"))
    spec = experiment.load(path)
    result_file = min(
        saved, key=lambda p: len(p.name)
    )  # the main result, not the frontier beside it
    attrs = ap.load(result_file).attrs
    assert (
        attrs["task"] == spec.task.name and attrs["experiment"]["sweep"]["site"] == spec.sweep.site
    )
    assert not (out / "checkpoint").exists()  # removed once the result is saved


@pytest.mark.parametrize(
    "task, check",
    [
        (
            {"name": "ioi", "n": 4},
            lambda p: len(p) == 4 and p.corruption == "abc" and "S2" in p.positions,
        ),
        (
            {"name": "ioi", "n": 4, "corruption": "s2", "order": "mixed", "templates": "all"},
            lambda p: p.corruption == "s2",
        ),
        (
            {"name": "ioi_groups", "n": 6},
            lambda p: isinstance(p, list) and sum(len(g) for g in p) == 6,
        ),
        ({"name": "factual", "n": 3}, lambda p: len(p) == 3 and p.corruption == "str"),
        ({"name": "greater_than", "n": 3}, lambda p: len(p) == 3 and p.corruption == "01"),
        (
            {"name": "induction", "n": 2, "length": 8, "repeat": 4},
            lambda p: len(p) == 2 and "PREV_ANSWER" in p.positions,
        ),
        (
            {
                "name": "ioi",
                "n": 2,
                "corruption": "noise",
                "noise_positions": ["S1"],
                "noise_scale": 2.0,
            },
            lambda p: (
                p.corrupt_noise is not None
                and bool((p.corrupt == p.clean).all())
                and "scale=2" in p.corruption
            ),
        ),
    ],
)
def test_tasks_by_name(task, check):
    from word_tokenizer import gpt2_style_model

    spec = experiment.validate({"task": task, "sweep": {"site": "resid_pre"}})
    assert check(experiment.make_pairs(gpt2_style_model(), spec.task))


def test_a_file_task_by_name(tmp_path):
    from word_tokenizer import gpt2_style_model

    rows = tmp_path / "pairs.jsonl"
    rows.write_text(
        '{"clean": "When John and Mary went to the store, John gave a drink to", "corrupt": "When Tom and Anna '
        'went to the store, Tom gave a drink to", "answer": " Mary", "wrong": " John", "pos:IO": "Mary"}\n'
    )
    spec = experiment.validate({"task": {"name": f"file:{rows}"}, "sweep": {"site": "resid_pre"}})
    pairs = experiment.make_pairs(gpt2_style_model(), spec.task)
    assert len(pairs) == 1 and "IO" in pairs.positions and spec.task.label == "pairs"

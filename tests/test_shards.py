"""Sharded sweeps on Ray equal the single-process sweep, survive a killed worker, and refuse clearly.

One local Ray of 2 workers serves the whole module (starting Ray takes seconds); the tiny model is
saved to a folder so that the workers can load it, as they would on a cluster."""

import os
import re
import sys

import numpy as np
import pytest
import ray
import torch
import xarray as xr

import actpatch as ap
from actpatch.engine import shards
from actpatch.engine.plan import plan
from actpatch.engine.spec import SweepSpec
from command_line import run, run_tiny_ioi
from tiny import tiny_model, tiny_pairs, tiny_task, with_answers

FAULTS_FOLDER = "ACTPATCH_TEST_SHARD_FAULTS"
# Started in every Ray worker (sitecustomize.py on the workers' PYTHONPATH): each shard run leaves a
# file `ran-<direction>-<shard>-<pid>-<ns>` in the faults folder, and a file `kill-<shard>` makes the
# worker that picks up that shard delete it and SIGKILL itself (so the shard dies once, then runs on
# the restarted worker). The library itself holds no such code.
WORKER_FAULTS = f"""
import os, signal, sys, time
from pathlib import Path
folder = os.environ.get("{FAULTS_FOLDER}")
if folder and "default_worker" in (sys.argv[0] if sys.argv else ""):
    from actpatch.engine import shards
    original = shards._ShardWorker.run
    def run(self, number, the_plan, indices):
        (Path(folder) / f"ran-{{the_plan.direction}}-{{number}}-{{os.getpid()}}-{{time.time_ns()}}").touch()
        try:
            (Path(folder) / f"kill-{{number}}").unlink()
        except FileNotFoundError:
            return original(self, number, the_plan, indices)
        os.kill(os.getpid(), signal.SIGKILL)
    shards._ShardWorker.run = run
"""


@pytest.fixture(scope="module")
def faults(tmp_path_factory):
    """A local Ray of 2 CPUs whose workers run WORKER_FAULTS; shut down after the module."""
    folder = tmp_path_factory.mktemp("shard-faults")
    startup = tmp_path_factory.mktemp("worker-startup")
    (startup / "sitecustomize.py").write_text(WORKER_FAULTS)
    saved_env = {key: os.environ.get(key) for key in (FAULTS_FOLDER, "PYTHONPATH")}
    os.environ[FAULTS_FOLDER] = str(folder)  # before ray.init: the workers inherit both
    os.environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(startup), saved_env["PYTHONPATH"]) if p
    )
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING")
    yield folder
    ray.shutdown()
    for key, value in saved_env.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """The tiny LLaMA saved with save_pretrained and loaded back from its folder (no tokenizer), with pairs."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tiny = tiny_model("llama")
    tiny.hf.save_pretrained(folder)
    model = ap.load_model(folder)
    for (name, want), got in zip(tiny.hf.state_dict().items(), model.hf.state_dict().values()):
        assert torch.equal(got, want), name
    assert shards.ModelSpec.of(model) == shards.ModelSpec(str(folder.resolve()), "float32")
    return with_answers(model, tiny_pairs(batch=3, seq=6))


def same_result(got: xr.DataArray, want: xr.DataArray) -> None:
    """Same dims, coordinates and provenance, numbers within float32 rounding."""
    # Shards batch their patches differently: float32 forwards then differ by ~1e-7 relative.
    xr.testing.assert_allclose(got, want, atol=1e-5, rtol=0)
    assert got.dims == want.dims
    xr.testing.assert_identical(got.coords.to_dataset(), want.coords.to_dataset())
    ignore = ("engine", "cost", "self_checks")
    assert {k: v for k, v in got.attrs.items() if k not in ignore} == {
        k: v for k, v in want.attrs.items() if k not in ignore
    }
    assert got.attrs["engine"] == shards.ENGINE


def runs(folder) -> dict[tuple[str, int], int]:
    """How many times each (direction, shard) started, from the workers' run files."""
    counts: dict[tuple[str, int], int] = {}
    for path in folder.glob("ran-*"):
        _, direction, number, *_ = path.name.split("-")
        counts[direction, int(number)] = counts.get((direction, int(number)), 0) + 1
    return counts


def clear_runs(folder) -> None:
    for path in folder.glob("ran-*"):
        path.unlink()


@pytest.mark.parametrize(
    "kind, options, count",
    [
        ("resid_pre", dict(), 5),  # 2 layers × 6 positions in 5 shards: ragged
        ("head", dict(positions=["X", 4], per_prompt=True), 3),  # named positions, per-prompt rows
        (
            "pattern",
            dict(positions=["END"]),
            2,
        ),  # runs under our eager attention, on the workers too
    ],
)
def test_sharded_sweep_equals_single_process(faults, saved, kind, options, count):
    model, pairs = saved
    want = ap.sweep(model, pairs, kind, direction=["denoise", "noise"], **options)
    clear_runs(faults)
    got = ap.sweep(model, pairs, kind, direction=["denoise", "noise"], shards=count, **options)
    same_result(got, want)
    assert got.attrs["cost"]["shards"] == count and got.attrs["cost"]["workers"] == 2
    assert got.attrs["cost"]["patches"] == want.attrs["cost"]["patches"]
    assert runs(faults) == {(d, n): 1 for d in ("denoise", "noise") for n in range(count)}
    assert ray.is_initialized()  # the module's Ray is used, and left running


def test_a_killed_worker_is_restarted_and_only_its_shard_runs_again(faults, saved, tmp_path):
    """Shard 3 of 4 goes to a worker that already finished a shard; killing it mid-sweep must not
    lose that shard's rows, and the checkpoint then holds every shard."""
    model, pairs = saved
    want = ap.sweep(model, pairs, "resid_pre")
    clear_runs(faults)
    (faults / "kill-3").touch()
    got = ap.sweep(model, pairs, "resid_pre", shards=4, checkpoint=tmp_path)
    assert not (faults / "kill-3").exists()  # the worker did pick it up and die
    same_result(got, want)
    assert runs(faults) == {
        ("denoise", 0): 1,
        ("denoise", 1): 1,
        ("denoise", 2): 1,
        ("denoise", 3): 2,
    }
    # A second run of the same sweep finds every row in the checkpoint.
    again = ap.sweep(model, pairs, "resid_pre", shards=4, checkpoint=tmp_path)
    assert again.attrs["cost"]["patches_from_checkpoint"] == again.attrs["cost"]["patches"] == 12
    same_result(again, want)


def test_a_worker_that_keeps_dying_fails_the_sweep_naming_its_shard(
    faults, saved, tmp_path, monkeypatch
):
    monkeypatch.setattr(shards, "RETRIES", 0)  # no restart: the first death is final
    clear_runs(faults)
    (faults / "kill-3").touch()
    with pytest.raises(
        ap.ShardFailed,
        match=r"shard 3 of 4 \(3 denoise patches from resid_pre\[.*restarted it 0 times",
    ):
        ap.sweep(*saved, "resid_pre", shards=4, checkpoint=tmp_path)
    # Shard 3 went out only once two shards had come back, and their rows were kept.
    assert len(list((tmp_path / "denoise").glob("chunk-*.json"))) >= 2


def test_split_cuts_by_position_then_layer():
    model, pairs = tiny_task("llama")
    the_plan = plan(model, pairs, SweepSpec("resid_pre", positions="each"))
    pieces = shards.split(list(range(12)), the_plan, 4)
    assert [len(p) for p in pieces] == [3, 3, 3, 3]
    assert sorted(i for p in pieces for i in p) == list(range(12))
    # Sites are layer-major (layer 0: positions 0..5, layer 1: positions 0..5); shard 0 holds
    # positions 0 and 1 of both layers, so its worker records the target at two positions only.
    assert {the_plan.sites[i].pos for i in pieces[0]} == {0, 1}
    assert len(shards.split([2, 7], the_plan, 16)) == 2  # never an empty shard


def test_a_model_built_in_memory_is_refused_with_the_fix():
    model, pairs = tiny_task("llama")
    with pytest.raises(
        ap.UnshippableModel,
        match=r"built in memory.*save_pretrained\(folder\).*ap\.load_model\(folder\)",
    ):
        ap.sweep(model, pairs, "resid_pre", shards=2)


def test_a_model_changed_after_loading_is_refused(faults, saved, tmp_path):
    model, pairs = saved
    changed = ap.load_model(model.provenance["source"])
    changed.hf.lm_head.weight.data[0, 0] += 1.0
    with pytest.raises(
        shards.UnshippableModel, match="other weights than the model passed to sweep"
    ):
        ap.sweep(changed, pairs, "resid_pre", shards=2, check_baseline=False)
    assert ray.is_initialized()


def test_missing_ray_names_the_extra(saved, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` sees when it is not installed
    with pytest.raises(ImportError, match=r"pip install 'actpatch\[ray\]'"):
        ap.sweep(*saved, "resid_pre", shards=2)


@pytest.mark.parametrize("count", [0, -1, 2.5, True, "4"])
def test_shards_must_be_a_whole_number_of_at_least_one(saved, count):
    with pytest.raises(ValueError, match=r"shards must be a whole number of at least 1.*got"):
        ap.sweep(*saved, "resid_pre", shards=count)


def test_the_reference_engine_does_not_shard(saved):
    with pytest.raises(ValueError, match=r"engine='reference'.*does not shard"):
        ap.sweep(*saved, "resid_pre", shards=2, engine="reference")


@pytest.mark.smollm
def test_sharded_sweep_equals_single_process_on_smollm_ioi(faults, smollm):
    """The embedded model, loaded on each worker from its default spec, on a few layers of IOI."""
    assert shards.ModelSpec.of(smollm) == shards.ModelSpec(None, "float32")
    pairs = ap.ioi_pairs(smollm, n=2, seed=1)  # its named positions are the same in every prompt
    options = dict(direction=["denoise", "noise"], layers=[0, 14, 29], positions=["END"])
    want = ap.sweep(smollm, pairs, "head", **options)
    got = ap.sweep(smollm, pairs, "head", shards=3, **options)  # 3 shards on 2 workers
    assert (
        np.abs(got - want).max().item() <= 1e-4
    )  # 30 float32 layers: the engines' bound on SmolLM2
    xr.testing.assert_identical(got.coords.to_dataset(), want.coords.to_dataset())


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--shards", "0"], r"Invalid value for '--shards': 0 is not in the range x>=1"),
        (
            ["--shards", "2", "--engine", "reference"],
            r"--shards runs the batched engine on Ray workers; --engine reference does not shard",
        ),
    ],
    ids=["zero shards", "reference engine"],
)
def test_cli_refuses_bad_shard_flags_before_loading_anything(flags, message, tmp_path):
    result = run("sweep", "--task", "ioi", "--site", "resid_pre", "--out", tmp_path, *flags)
    assert result.exit_code == 2 and re.search(message, result.output), result.output


def test_cli_without_ray_names_the_extra(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)
    result = run(
        "sweep", "--task", "ioi", "--site", "resid_pre", "--shards", "2", "--out", tmp_path
    )
    assert result.exit_code == 2 and "pip install 'actpatch[ray]'" in result.output, result.output


def test_cli_sweep_with_shards(faults, tiny_folder, tmp_path):
    flags = ("--site", "resid_pre", "--positions", "END", "--shards", "2", "-q")
    result = run_tiny_ioi(("sweep",), tiny_folder, tmp_path, *flags)
    assert result.exit_code == 0, result.output
    saved = ap.load(tmp_path / "ioi_resid_pre_denoise.nc")
    assert saved.attrs["engine"] == shards.ENGINE and saved.attrs["cost"]["shards"] == 2
    assert ray.is_initialized()

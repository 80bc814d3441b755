"""Checkpointed sweeps: an interrupted sweep resumes to the uninterrupted result, bit for bit,
without recomputing finished chunks; a checkpoint of another sweep is refused.

Interruptions here are an exception raised from inside the chunk loop; tests/test_cli_resume.py
kills a real process with SIGKILL."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

import actpatch as ap
from actpatch.engine import batched
from actpatch.engine.checkpoint import CheckpointMismatch
from tiny import tiny_model, tiny_pairs, tiny_task, with_answers


class Interrupted(Exception):
    pass


@pytest.fixture
def model_and_pairs():
    return tiny_task("llama")


def interrupt_after(monkeypatch, runs: int) -> list[int]:
    """Make the engine's patched runs fail after `runs` successful chunks; returns the run log
    (chunk sizes of the copies run, self-checks' single runs included)."""
    original = batched.Resumer.run
    log: list[int] = []

    def counted(self, copies):
        if runs is not None and sum(1 for n in log if n > 0) >= runs:
            raise Interrupted()
        log.append(len(copies))
        return original(self, copies)

    monkeypatch.setattr(batched.Resumer, "run", counted)
    return log


def sweep(model, pairs, folder=None, **options):
    return ap.sweep(
        model, pairs, "resid_pre", chunk=2, checkpoint=folder, progress=False, **options
    )


def test_resumed_sweep_equals_uninterrupted_and_skips_finished_chunks(
    model_and_pairs, tmp_path, monkeypatch
):
    model, pairs = model_and_pairs
    want = sweep(model, pairs)
    patched = want.attrs["cost"]["patches"] - want.attrs["cost"]["noop_patches_skipped"]
    # The self-checks' two single-copy runs come first; interrupt after them and two chunks more.
    before = interrupt_after(monkeypatch, runs=4)
    with pytest.raises(Interrupted):
        sweep(model, pairs, tmp_path)
    folder = tmp_path / "denoise"
    chunk_files = sorted(folder.glob("chunk-*.json"))
    assert len(chunk_files) == 2
    saved = sum(len(json.loads(p.read_text())["rows"]) for p in chunk_files)
    assert saved == sum(before[2:]) and 0 < saved < patched

    monkeypatch.undo()
    log = interrupt_after(monkeypatch, runs=None)
    got = sweep(model, pairs, tmp_path)
    xr.testing.assert_identical(got.drop_attrs(), want.drop_attrs())
    assert np.array_equal(got.values, want.values)  # bit for bit, not within a tolerance
    assert got.attrs["cost"]["patches_from_checkpoint"] == saved
    assert (
        sum(log) - 2 == patched - saved
    )  # only the unfinished patches ran (besides 2 self-check runs)
    assert not list(folder.glob("*.part"))


def test_a_finished_checkpoint_runs_no_patch(model_and_pairs, tmp_path, monkeypatch):
    model, pairs = model_and_pairs
    first = sweep(model, pairs, tmp_path, per_prompt=True)
    log = interrupt_after(monkeypatch, runs=None)
    again = sweep(model, pairs, tmp_path, per_prompt=True)
    assert log == [1, 1]  # the self-checks only
    assert np.array_equal(
        first.values, again.values
    )  # per-prompt arrays survive the JSON round trip exactly


@pytest.mark.parametrize(
    "change, differing",
    [
        (dict(layers=[1]), "sites"),
        (
            dict(direction="noise", ablation="zero"),
            None,
        ),  # another direction: its own subfolder, no clash
        (dict(per_prompt=True), "rows"),
        (dict(positions=[1, 3]), "sites"),
    ],
)
def test_checkpoint_of_another_sweep_is_refused(model_and_pairs, tmp_path, change, differing):
    model, pairs = model_and_pairs
    sweep(model, pairs, tmp_path)
    if differing is None:
        sweep(model, pairs, tmp_path, **change)
        return
    with pytest.raises(
        CheckpointMismatch,
        match=rf"written by another sweep \(differing: {differing}\).*delete the folder",
    ):
        sweep(model, pairs, tmp_path, **change)


def test_other_prompts_or_weights_are_refused(model_and_pairs, tmp_path):
    model, pairs = model_and_pairs
    sweep(model, pairs, tmp_path)
    other_model, other_pairs = tiny_task("qwen2")
    with pytest.raises(CheckpointMismatch, match="differing: model"):
        sweep(other_model, other_pairs, tmp_path)
    _, shuffled = with_answers(model, tiny_pairs(batch=3, seq=6, seed=2))
    with pytest.raises(CheckpointMismatch, match="differing: prompts"):
        sweep(model, shuffled, tmp_path)


def test_a_folder_that_is_not_a_checkpoint_is_refused(model_and_pairs, tmp_path):
    model, pairs = model_and_pairs
    (tmp_path / "denoise").mkdir()
    (tmp_path / "denoise" / "notes.txt").write_text("mine")
    with pytest.raises(CheckpointMismatch, match="not an actpatch checkpoint"):
        sweep(model, pairs, tmp_path)


def test_both_directions_and_length_groups_checkpoint_separately(tmp_path):
    model = tiny_model("llama")
    groups = [with_answers(model, tiny_pairs(batch=2, seq=seq, seed=seq))[1] for seq in (5, 6)]
    options = dict(direction=["denoise", "noise"], positions=["X", "END"], check_baseline=False)
    want = sweep(model, groups, **options)
    got = sweep(model, groups, tmp_path, **options)
    again = sweep(model, groups, tmp_path, **options)
    assert np.array_equal(want.values, got.values) and np.array_equal(want.values, again.values)
    folders = sorted(str(p.parent.relative_to(tmp_path)) for p in tmp_path.rglob("plan.json"))
    assert folders == ["denoise/length-5", "denoise/length-6", "noise/length-5", "noise/length-6"]


def test_the_reference_engine_checkpoints_too(model_and_pairs, tmp_path):
    """Checkpointing wraps any engine: a reference sweep resumed from its checkpoint patches nothing again."""
    model, pairs = model_and_pairs
    want = ap.sweep(
        model, pairs, "resid_pre", engine="reference", checkpoint=tmp_path, progress=False
    )
    assert list((tmp_path / "denoise").glob("chunk-*.json"))
    again = ap.sweep(
        model, pairs, "resid_pre", engine="reference", checkpoint=tmp_path, progress=False
    )
    assert again.attrs["cost"]["patches_from_checkpoint"] == want.attrs["cost"]["patches"]
    xr.testing.assert_identical(again.drop_attrs(), want.drop_attrs())


def test_a_checkpoint_of_another_dictionary_of_the_same_name_is_refused(tmp_path):
    """A feature site names its dictionary by name only: a retrained dictionary saved under the
    same name must not resume from the other one's rows."""
    from random_dictionaries import random_dictionary

    model, pairs = tiny_task("llama")

    def feature_sweep(seed):
        dictionary = random_dictionary(model, "resid_post", "resid_post", seed=seed)
        assert dictionary.name == "test.resid_post.1"  # one name, whatever the weights
        return ap.sweep(
            model,
            pairs,
            "feature",
            dictionary=dictionary,
            latents=[0, 1, 2],
            chunk=2,
            checkpoint=tmp_path,
            progress=False,
        )

    feature_sweep(seed=0)
    with pytest.raises(CheckpointMismatch, match="differing: bases"):
        feature_sweep(seed=1)
    feature_sweep(seed=0)  # the same weights loaded again: resumes

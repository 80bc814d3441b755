"""Memory back-off in the batched engine: a chunk that runs out of memory is halved and retried,
finished chunks are kept, and the numbers equal those of a run that never ran short."""

import logging

import pytest
import torch
import xarray as xr

import actpatch as ap
from actpatch.engine import batched
from tiny import tiny_task

# Head sites at all positions share one prefix (position 0), so chunks fill up: 2 layers × 4 heads.
SWEEP = dict(direction=["denoise", "noise"], positions="all")


@pytest.fixture
def model_and_pairs():
    return tiny_task("llama")


def _copies_run(monkeypatch, fail):
    """Wrap `Resumer.run` so that `fail(n_copies, attempt)` decides which attempts run out of memory;
    returns the list of (copies, failed) per attempt."""
    real_run = batched.Resumer.run
    attempts: list[tuple[int, bool]] = []

    def run(self, copies):
        failed = len(copies) > 1 and fail(
            len(copies), len(attempts)
        )  # self-checks run single copies
        attempts.append((len(copies), failed))
        if failed:
            raise torch.OutOfMemoryError(
                f"CUDA out of memory. Tried to allocate {len(copies)} copies"
            )
        return real_run(self, copies)

    monkeypatch.setattr(batched.Resumer, "run", run)
    return attempts


def test_injected_out_of_memory_halves_the_chunk_and_loses_nothing(
    model_and_pairs, monkeypatch, caplog
):
    model, pairs = model_and_pairs
    want = ap.sweep(model, pairs, "head", chunk=8, **SWEEP)
    attempts = _copies_run(
        monkeypatch, lambda n, attempt: n > 2
    )  # anything over 2 copies "runs out"
    with caplog.at_level(logging.INFO, logger=batched.__name__):
        got = ap.sweep(model, pairs, "head", chunk=8, **SWEEP)
    # Bit for bit what chunks of 2 give from the start; chunks of 8 differ only by float32 rounding
    # of different batch shapes (the engine tests' bound).
    xr.testing.assert_identical(
        got.drop_attrs(), ap.sweep(model, pairs, "head", chunk=2, **SWEEP).drop_attrs()
    )
    xr.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    assert got.attrs["cost"]["chunk"] == 2 and want.attrs["cost"]["chunk"] == 8
    sizes = [n for n, failed in attempts if not failed]
    assert max(sizes) == 2 and sum(f for _, f in attempts) >= 2  # 8 -> 4 -> 2, in each direction
    warnings = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and "ran out of memory" in r.getMessage()
    ]
    assert len(warnings) == 2  # once per direction's sweep, not once per chunk
    assert "continuing with chunks of 4" in warnings[0].getMessage()


def test_a_failure_mid_sweep_keeps_the_chunks_already_done(model_and_pairs, monkeypatch):
    model, pairs = model_and_pairs
    attempts = _copies_run(monkeypatch, lambda n, attempt: False)
    want = ap.sweep(model, pairs, "head", chunk=3, direction="denoise")
    assert attempts == [(1, False), (1, False), (3, False), (3, False), (2, False)]
    attempts = _copies_run(
        monkeypatch, lambda n, attempt: attempt == 3
    )  # self-checks, one chunk of 3, then a failure
    got = ap.sweep(model, pairs, "head", chunk=3, direction="denoise")
    xr.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    assert attempts == [
        (1, False),
        (1, False),
        (3, False),
        (3, True),
        (1, False),
        (1, False),
        (1, False),
        (1, False),
        (1, False),
    ]
    # Each of the 8 head patches ran exactly once: the chunk finished before the failure was kept.
    assert sum(n for n, failed in attempts[2:] if not failed) == got.attrs["cost"]["patches"] == 8


def test_a_chunk_estimated_over_the_budget_is_halved_before_it_runs(
    model_and_pairs, monkeypatch, caplog
):
    model, pairs = model_and_pairs
    want = ap.sweep(model, pairs, "head", chunk=2, **SWEEP)
    per_copy = batched._bytes_per_copy(model, pairs.corrupt_run)
    attempts = _copies_run(monkeypatch, lambda n, attempt: False)
    with caplog.at_level(logging.WARNING, logger=batched.__name__):
        got = ap.sweep(model, pairs, "head", chunk=8, memory_budget=int(2.5 * per_copy), **SWEEP)
    xr.testing.assert_identical(got.drop_attrs(), want.drop_attrs())
    assert max(n for n, _ in attempts) == 2 and got.attrs["cost"]["chunk"] == 2
    assert "over the memory budget" in caplog.text


def test_the_cpu_allocator_error_counts_as_out_of_memory():
    assert batched._out_of_memory(
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory"
        )
    )
    assert batched._out_of_memory(MemoryError())
    assert not batched._out_of_memory(RuntimeError("mat1 and mat2 shapes cannot be multiplied"))


def test_other_errors_are_not_mistaken_for_memory(model_and_pairs, monkeypatch):
    model, pairs = model_and_pairs

    def broken(self, copies):
        raise RuntimeError("mat1 and mat2 shapes cannot be multiplied")

    monkeypatch.setattr(batched.Resumer, "run", broken)
    with pytest.raises(RuntimeError, match="shapes cannot be multiplied"):
        ap.sweep(model, pairs, "resid_pre", chunk=4)


def test_one_copy_that_does_not_fit_says_what_to_do(model_and_pairs, monkeypatch):
    model, pairs = model_and_pairs
    real_run = batched.Resumer.run
    calls = []

    def run(self, copies):
        calls.append(len(copies))
        if len(calls) > 2:  # let the two self-checks through, then nothing fits
            raise torch.OutOfMemoryError("CUDA out of memory.")
        return real_run(self, copies)

    monkeypatch.setattr(batched.Resumer, "run", run)
    with pytest.raises(
        batched.SweepOutOfMemory, match=r"one patched copy.*3 prompts × 6 tokens.*bfloat16"
    ):
        ap.sweep(model, pairs, "head", chunk=4)
    assert calls[2:] == [4, 2, 1] and ap.attached_hooks(model) == 0


def test_the_default_budget_follows_free_cuda_memory(monkeypatch):
    """1 GiB on CPU; on CUDA half the free memory of the fullest device (at least 256 MiB); a model
    split over a GPU and the CPU keeps the CPU's 1 GiB. `torch.cuda.mem_get_info` is faked: no GPU here."""
    from actpatch import memory

    free = {0: 60 << 30, 1: 10 << 30, 2: 100 << 20}
    monkeypatch.setattr(
        torch.cuda, "mem_get_info", lambda device: (free[torch.device(device).index], 80 << 30)
    )
    cuda = [torch.device("cuda", i) for i in range(3)]
    assert memory.default_budget([torch.device("cpu")]) == 1 << 30
    assert memory.default_budget(cuda[:1]) == 30 << 30
    assert memory.default_budget(cuda[:2]) == 5 << 30
    assert memory.default_budget(cuda) == 256 << 20
    assert memory.default_budget([cuda[0], torch.device("cpu")]) == 1 << 30


def test_a_sweep_sizes_its_chunks_from_the_default_budget(monkeypatch):
    """The batched engine asks `memory.default_budget` for its layers' devices when no budget is given,
    and records the budget it used."""
    from actpatch import memory
    from actpatch.engine import batched

    model, pairs = tiny_task("llama")
    asked = []
    monkeypatch.setattr(
        memory,
        "default_budget",
        lambda devices: (
            asked.append(list(devices)) or 3 * batched._bytes_per_copy(model, pairs.corrupt_run)
        ),
    )
    result = ap.sweep(model, pairs, "resid_pre", layers=[0, 1], positions="each")
    assert asked and all(d.type == "cpu" for d in asked[0])
    assert result.attrs["cost"]["chunk"] == 3 and result.attrs["cost"][
        "memory_budget"
    ] == 3 * batched._bytes_per_copy(model, pairs.corrupt_run)

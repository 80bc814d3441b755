"""The baseline's target forward also records what the batched engine resumes from."""

import pytest
import torch

import actpatch as ap
from actpatch import hooks
from actpatch.engine import batched, collect, sources
from actpatch.engine.plan import plan
from actpatch.engine.spec import SweepSpec
from actpatch.hooks import attach
from tiny import FAMILIES, tiny_task


@pytest.mark.parametrize("family", FAMILIES)
def test_the_recording_forward_gives_the_baselines_logits_and_values_bit_for_bit(family):
    """A forward that fills a cache (where it can be cut) and records the layers' calls computes
    what the plain baseline forward does: the claim that lets one forward do both."""
    model, pairs = tiny_task(family)
    sites = [ap.Site("resid_pre", 1), ap.Site("head", 0, head=1), ap.Site("v", 1, head=0)]
    plain_values, plain_logits = hooks.capture_with_logits(model, pairs.corrupt_run, sites)
    with hooks.recording(model) as (recorded, cache):
        values, logits = hooks.capture_with_logits(model, pairs.corrupt_run, sites, cache=cache)
    assert torch.equal(logits, plain_logits)
    assert all(torch.equal(values[s], plain_values[s]) for s in sites)
    assert len(recorded.calls) == model.dims.n_layers
    assert (recorded.cache is None) == (
        family in ("mistral", "gemma3")
    )  # sliding windows cannot be cut
    assert ap.attached_hooks(model) == 0


@pytest.mark.parametrize("family", ["llama", "gpt2", "mistral", "gemma3"])
@pytest.mark.parametrize("kind", ["resid_pre", "head", "k"])
def test_copies_resumed_from_the_baselines_recording_give_the_engines_own_numbers_bit_for_bit(
    family, kind
):
    """The same plan's rows, once resuming from the baseline's recording and once from the
    engine's own: cuttable caches (llama, gpt2) and per-split prefixes (mistral, gemma3)."""
    model, pairs = tiny_task(family)
    spec = SweepSpec(
        kind,
        "denoise",
        positions="each" if kind == "resid_pre" else "all",
        chunk=4,
        check_baseline=False,
    )
    rows = {}
    for record_target in (True, False):
        the_plan, clean, corrupt = sources.recorded(
            model, plan(model, pairs, spec), record_target=record_target
        )
        assert (the_plan.recorded_target is not None) == record_target
        base = collect.checked(model, pairs, clean, corrupt, check=False)
        rows[record_target], _, _ = batched.patched_logits(
            model, the_plan, base, lambda logits: logits
        )
    assert all(torch.equal(a, b) for a, b in zip(rows[True], rows[False]))


@pytest.mark.parametrize("family", ["llama", "gemma3"])
def test_a_sweep_runs_the_whole_target_only_in_its_baseline(family):
    """Whole forwards of the model in a sweep: the source's and the target's baseline runs, no
    third one to record the target (the full-patch check resumes from the recorded calls)."""
    model, pairs = tiny_task(family)
    lengths: list[int] = []
    handle = model.hf.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(kwargs["input_ids"].shape[1]), with_kwargs=True
    )
    try:
        ap.sweep(model, pairs, "resid_pre", layers=[1], positions=[4], check_baseline=False)
    finally:
        handle.remove()
    assert lengths.count(pairs.seq_len) == 2


@pytest.mark.parametrize("family", ["llama", "mistral"])
def test_copies_resumed_at_an_explicit_layer_are_the_target_run_and_skip_the_layers_below(family):
    """`Resumer.resumed` (what exact edge removals use): copies told where to enter, under taps
    attached for the resumed forward alone. With no change made they are the target run; layer 0
    never runs for them, and the target's recording (which does run it) happens outside the taps."""
    model, pairs = tiny_task(family)
    resumer = batched.Resumer(model, pairs.clean_run)
    calls: list[int] = []
    seen = attach.call_hook(model.layer(0), lambda args, kwargs: calls.append(1))
    logits = resumer.resumed([1, 1, 1], 2, taps=[seen])
    assert logits.shape[:2] == (3, len(pairs)) and calls == []
    want = hooks.last_logits(model, pairs.clean_run)
    for copy in logits:
        torch.testing.assert_close(copy, want, atol=1e-5, rtol=1e-5)
    assert resumer.recordings.forwards and ap.attached_hooks(model) == 0


def test_a_forward_refuses_a_resume_it_cannot_run():
    model, pairs = tiny_task("llama")
    with pytest.raises(ValueError, match="layer 1 needs the run's recording"):
        hooks.forward(model, pairs.clean_run, layer=1)
    recorded, _ = hooks.record(model, pairs.clean_run)
    with pytest.raises(ValueError, match=r"ascending layers from layer 1 on, got \[1, 0\]"):
        hooks.forward(model, pairs.clean_run, copies=[1, 0], layer=1, recorded=recorded)
    assert ap.attached_hooks(model) == 0

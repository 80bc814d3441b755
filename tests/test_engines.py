"""Every fast path walks beside its oracle: the batched engine against the reference engine."""

import functools

import numpy as np
import pytest
import xarray as xr

import actpatch as ap
from actpatch.engine import batched
from conftest import DEVICES
from tiny import FAMILIES, tiny_model, tiny_task

ENGINES = {
    "batched, chunk 3": functools.partial(ap.sweep, engine="batched", chunk=3),  # ragged last chunk
    "batched, one per chunk": functools.partial(ap.sweep, engine="batched", chunk=1),
    "batched, memory budget": functools.partial(ap.sweep, engine="batched", memory_budget=1 << 20),
}
CASES = [
    (f, k)
    for f in FAMILIES
    for k in ap.SITE_KINDS
    if not (f == "pythia_parallel" and k == "resid_mid")
]


def extra_for(kind):
    return {"neurons": [1, 7]} if kind == "neuron" else {}


# Every family and kind with a ragged chunking; the other chunkings on two families.
MATRIX = [(f, k, "batched, chunk 3") for f, k in CASES] + [
    (f, k, e)
    for f, k in CASES
    if f in ("llama", "gemma3")
    for e in ENGINES
    if e != "batched, chunk 3"
]


_REFERENCE: dict = {}


def reference_sweep(model, pairs, kind, options):
    """The reference engine's result, computed once per model, kind and options: llama's and
    gemma3's three chunkings compare against the same one."""
    key = (id(model), kind, repr(options))
    if key not in _REFERENCE:
        _REFERENCE[key] = ap.sweep(model, pairs, kind, engine="reference", **options)
    return _REFERENCE[key]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family, kind, engine", MATRIX)
def test_engine_matches_reference(family, kind, engine, device, on_device):
    _, pairs = tiny_task(family)
    model = on_device(tiny_model(family), device)
    for positions in ("each", "all", ["X", 4]):
        options = dict(direction=["denoise", "noise"], positions=positions, **extra_for(kind))
        want = reference_sweep(model, pairs, kind, options)
        got = ENGINES[engine](model, pairs, kind, **options)
        # float32 forwards of different batch shapes differ by ~1e-7 relative; 1e-5 leaves room, no more.
        xr.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
        assert got.attrs["engine"] == "batched" and ap.attached_hooks(model) == 0


@pytest.mark.smollm
@pytest.mark.parametrize(
    "kind, options",
    [
        ("resid_pre", dict(layers=[0, 17, 29])),  # first, a middle and the last layer
        # a head of each of the 3 key/value groups
        ("head", dict(positions=["END", "S2"], layers=[0, 8, 20, 29], heads=[0, 4, 8])),
        ("v", dict(positions=["IO"], layers=[3, 9])),
        ("pattern", dict(positions=["END"], layers=[10, 25], heads=[0, 4])),
        ("resid_mid", dict(layers=[12])),
    ],
)
def test_engine_matches_reference_on_smollm_ioi(smollm, kind, options):
    # Two prompts: IOI's named positions are the same in every prompt, so more add only forwards.
    pairs = ap.ioi_pairs(smollm, n=2, seed=1)
    want = ap.sweep(
        smollm, pairs, kind, engine="reference", direction=["denoise", "noise"], **options
    )
    got = ap.sweep(
        smollm, pairs, kind, engine="batched", direction=["denoise", "noise"], chunk=5, **options
    )
    delta = (
        np.abs(got.sel(metric="norm_logit_diff") - want.sel(metric="norm_logit_diff")).max().item()
    )
    assert delta <= 1e-4


def test_a_bad_chunk_is_an_error():
    with pytest.raises(ValueError, match="chunk must be at least 1"):
        ap.sweep(*tiny_task("llama"), "resid_pre", chunk=0)


def test_an_unknown_engine_is_an_error():
    with pytest.raises(ValueError, match=r"engine must be one of \('batched', 'reference'\)"):
        ap.sweep(*tiny_task("llama"), "resid_pre", engine="fast")


def test_unproven_attention_is_named(monkeypatch):
    model = tiny_model("llama")
    assert batched.unsupported(model) is None
    monkeypatch.setattr(model.hf.config, "_attn_implementation_internal", "flex_attention")
    assert "flex_attention" in batched.unsupported(model)


def test_an_unproven_model_falls_back_to_the_reference_engine(monkeypatch, caplog):
    model, pairs = tiny_task("llama")
    monkeypatch.setattr(batched, "unsupported", lambda m: "a reason")
    with caplog.at_level("WARNING"):
        result = ap.sweep(model, pairs, "attn_out", layers=[1], positions=[2], chunk=4)
    assert (
        result.attrs["engine"] == "reference"
        and "not proven for this model (a reason)" in caplog.text
    )


def test_work_is_counted_in_forward_equivalents():
    """One patch at layer 1 of 2, position 4 of 6, in decoder-layer × token calls (unembedding one
    position counts as its parameters over a layer's): the two unpatched runs, the target's of which
    also records its key/value cache and the calls the full-patch self-check resumes from; the
    target over positions 4-5 for the split there (one position unembedded); that check's run (a whole forward);
    and two runs of one layer over the last 2 positions (the no-op check's and the patch's), each
    unembedded once. In patched runs the last layer's MLP (its parameters' share of the layer's)
    runs at the final position only. The floor is the unpatched runs and the patch's own run."""
    model, pairs = tiny_task("llama")
    result = ap.sweep(model, pairs, "resid_pre", layers=[1], positions=[4])
    batch, seq, layers = len(pairs), pairs.seq_len, model.dims.n_layers
    layer_params = sum(p.numel() for p in model.layer(0).parameters())
    unembedding = model.hf.get_output_embeddings().weight.numel() / layer_params
    mlp = sum(p.numel() for p in model.layer(1).mlp.parameters()) / layer_params
    forward = layers * batch * seq + unembedding * batch
    patch = 1 * batch * 2 - mlp * batch * 1 + unembedding * batch
    check = forward - mlp * batch * (seq - 1)
    recordings = layers * batch * 2 + unembedding * batch
    assert result.attrs["cost"]["forward_equivalents"] == pytest.approx(
        2 + (recordings + check + 2 * patch) / forward, abs=1e-3
    )
    assert result.attrs["cost"]["work_floor"] == pytest.approx(2 + patch / forward, abs=1e-3)
    assert result.attrs["cost"]["patches"] == 1


def test_patched_runs_compute_the_last_layers_mlp_at_the_final_position_only():
    """What the last layer's MLP computes on in a sweep (its down_proj's input): one position in the patched
    runs, every position in the recordings; mlp_out there keeps them all (its hook writes them)."""
    model, pairs = tiny_task("llama")
    widths: list[int] = []
    handle = model.layer(1).mlp.down_proj.register_forward_pre_hook(
        lambda module, args: widths.append(args[0].shape[1])
    )
    try:
        ap.sweep(model, pairs, "resid_pre", layers=[1], positions=[2], check_baseline=False)
        assert 1 in widths and pairs.seq_len in widths
        widths.clear()
        ap.sweep(model, pairs, "mlp_out", layers=[1], positions=[2], check_baseline=False)
        assert pairs.seq_len - 2 in widths
    finally:
        handle.remove()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("kind", ["resid_pre", "head", "k", "pattern", "mlp_out"])
def test_engines_agree_on_one_prompt_through_the_spec(family, kind, device, on_device):
    """Batch 1 (per-prompt tensors that are not repeated) through `runner.run`, the path every sweep takes."""
    from actpatch.engine import reference, runner
    from actpatch.engine.spec import SweepSpec

    _, pairs = tiny_task(family)
    model = on_device(tiny_model(family), device)
    one = pairs[1]
    for direction in ("denoise", "noise"):
        spec = SweepSpec(
            kind,
            direction,
            positions="each" if kind in ("resid_pre", "mlp_out") else "all",
            chunk=2,
            check_baseline=False,
        )
        want = runner.run(model, one, spec, reference.Reference())
        got = runner.run(model, one, spec, batched.Batched())
        xr.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
        assert got.attrs["n_prompts"] == 1 and ap.attached_hooks(model) == 0

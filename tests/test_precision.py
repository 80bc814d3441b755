"""Sweeps in 16-bit weights: the batched engine against the reference engine in the same dtype, and
the reference engine against float32, within bounds explained below; and loading a checkpoint in
a dtype through `device_map`.

Metrics are computed in float64 from float32 copies of the logits whatever the weights' dtype, so
the only differences are the forward passes' own rounding. The bounds are on the normalised logit
difference (corrupt = 0, clean = 1), the result a reader looks at first.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import xarray as xr

import actpatch as ap
from actpatch.engine import batched, checks
from conftest import DEVICES
from tiny import FAMILIES, tiny_model, tiny_pairs, tiny_task

# bfloat16 keeps 8 significant bits, so every matmul, norm and softmax output is rounded by up to
# 2^-8 ≈ 4e-3 relative; float16 keeps 11 (2^-11 ≈ 5e-4). Measured on these models (both directions,
# resid_pre, head and pattern): the bfloat16 reference sweep differs from the float32 one by at most
# 7.4e-3, the float16 one by at most 1.1e-3. The bounds are about four times those. The batched engine
# does the reference engine's arithmetic in other batch shapes and split positions: on CPU the
# two agree bit for bit, but kernels chosen by shape (as on GPUs) may round differently, by at most
# what a whole forward's rounding amounts to, so the same bounds hold. A patch at the wrong place or
# of the wrong value moves the normalised metric by a large part of its 0..1 scale: every sweep
# below is checked to span at least ten times its bound, so the comparisons can fail.
BOUND = {torch.bfloat16: 3e-2, torch.float16: 5e-3}

POSITIONS = {"resid_pre": [1, "X", 5], "head": "all", "pattern": "all"}
CASES = (
    [(torch.bfloat16, family, kind) for family in FAMILIES for kind in ("resid_pre", "head")]
    + [(torch.bfloat16, family, "pattern") for family in ("gpt2", "llama", "gemma3")]
    + [
        (torch.float16, family, kind)
        for family in ("gpt2", "llama", "gemma3")
        for kind in ("resid_pre", "head")
    ]
)


def _normalised(model, pairs, kind, engine, **options):
    result = ap.sweep(
        model,
        pairs,
        kind,
        engine=engine,
        direction=["denoise", "noise"],
        positions=POSITIONS[kind],
        **options,
    )
    return result.sel(metric="norm_logit_diff")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize(
    "dtype, family, kind", CASES, ids=[f"{str(d)[6:]}-{f}-{k}" for d, f, k in CASES]
)
def test_low_precision_engines_agree_and_stay_near_float32(dtype, family, kind, device, on_device):
    # Answers are chosen on the float32 model, so every dtype measures the same prompts and answers;
    # on CUDA the low-precision sweeps are held to the float32 CPU reference.
    full, pairs = tiny_task(family)
    low = on_device(tiny_model(family, dtype), device)
    assert {p.dtype for p in low.hf.parameters()} == {dtype}
    want = _normalised(full, pairs, kind, "reference")
    reference = _normalised(low, pairs, kind, "reference")
    fast = _normalised(low, pairs, kind, "batched", chunk=3)
    bound = BOUND[dtype]
    assert float(want.max() - want.min()) >= 10 * bound, (
        "the sweep must spread wider than the bound to test anything"
    )
    np.testing.assert_allclose(fast, reference, rtol=0, atol=bound)
    np.testing.assert_allclose(reference, want, rtol=0, atol=bound)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_self_checks_hold_in_low_precision(dtype, device, on_device):
    """The sweeps' own no-op and full-patch checks pass, within the dtype's bound (engine/checks.py),
    for a pattern sweep too: its baselines run under the same eager attention as its patches."""
    model = on_device(tiny_model("llama", dtype), device)
    _, pairs = tiny_task("llama")
    for engine in ("reference", "batched"):
        result = ap.sweep(model, pairs, "pattern", engine=engine, layers=[1], heads=[0, 3])
        errors = result.attrs["self_checks"]
        assert set(errors) == {"noop_patch_error", "full_patch_error"}
        assert max(errors.values()) <= checks.tolerance(dtype) < 0.05


def test_equal_tokens_at_layer_0_are_exactly_zero_in_bfloat16():
    """Metrics come from float64 copies of the logits: a patch that changes nothing reads 0, not rounding."""
    _, pairs = tiny_task("mistral")
    model = tiny_model("mistral", torch.bfloat16)
    result = ap.sweep(model, pairs, "resid_pre", layers=[0]).sel(metric="norm_logit_diff", layer=0)
    assert (
        result.sel(pos=0).item() == 0.0 and result.sel(pos=2).item() == 0.0
    )  # tiny_pairs shares these tokens
    assert abs(result.sel(pos=5).item()) > 10 * BOUND[torch.bfloat16]


def test_memory_estimate_follows_the_dtype():
    _, pairs = tiny_model("llama"), tiny_pairs()
    full = batched._bytes_per_copy(tiny_model("llama"), pairs.corrupt_run)
    half = batched._bytes_per_copy(tiny_model("llama", torch.bfloat16), pairs.corrupt_run)
    logits = 4 * len(pairs) * tiny_model("llama").dims.vocab  # float32 whatever the weights
    assert half - logits == pytest.approx((full - logits) / 2)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The tiny LLaMA as a float32 checkpoint folder, as save_pretrained writes it."""
    folder = tmp_path_factory.mktemp("checkpoint") / "tiny-llama"
    tiny_model("llama").hf.save_pretrained(folder)
    return folder


@pytest.mark.parametrize(
    "placement",
    [
        dict(device_map="cpu"),
        dict(device_map="auto"),
        dict(device_map="auto", max_memory={"cpu": "4GiB"}),
    ],
)
def test_device_map_and_dtype_pass_through(checkpoint, placement):
    model = ap.load_model(checkpoint, dtype="bfloat16", **placement)
    assert {p.dtype for p in model.hf.parameters()} == {torch.bfloat16}
    assert {p.device.type for p in model.hf.parameters()} == {"cpu"}
    assert model.provenance["dtype"] == "bfloat16" and model.provenance["device"] == "cpu"
    assert set(model.provenance["device_map"].values()) == {"cpu"}
    assert model.tokenizer is None  # the folder ships none; prompts are token ids
    # The same weights cast the same way as tiny_model's: the same sweep, bit for bit, on the fast engine.
    _, pairs = tiny_task("llama")
    got = ap.sweep(model, pairs, "head", positions=["X"])
    want = ap.sweep(tiny_model("llama", torch.bfloat16), pairs, "head", positions=["X"])
    assert got.attrs["engine"] == "batched"
    xr.testing.assert_identical(got.drop_attrs(), want.drop_attrs())


def test_dtype_alone_loads_on_one_device(checkpoint):
    model = ap.load_model(checkpoint, dtype=torch.float16)
    assert {p.dtype for p in model.hf.parameters()} == {torch.float16}
    assert "device_map" not in model.provenance and model.provenance["device"] == "cpu"

"""The reference engine against computations written out by hand in the test."""

import functools

import numpy as np
import pytest
import torch
import xarray as xr

import actpatch as ap
from actpatch.metrics import METRICS
from tiny import FAMILIES, tiny_task

reference_sweep = functools.partial(ap.sweep, engine="reference")


def raw_logit_diff(model, tokens, answers, wrong, hook_module=None, hook=None, pre=False):
    """One forward with (optionally) one raw PyTorch hook; the mean logit difference at the end."""
    handle = None
    if hook_module is not None:
        handle = (
            hook_module.register_forward_pre_hook(hook)
            if pre
            else hook_module.register_forward_hook(hook)
        )
    try:
        with torch.no_grad():
            logits = model.hf(tokens).logits[:, -1].double()
    finally:
        if handle:
            handle.remove()
    rows = torch.arange(len(tokens))
    return (logits[rows, answers] - logits[rows, wrong]).mean().item()


def test_resid_pre_sweep_equals_raw_hooks():
    model, pairs = tiny_task("llama")
    result = reference_sweep(model, pairs, "resid_pre", layers=[1], positions=[3])
    layer = model.layer(1)
    clean_in = {}
    grab = layer.register_forward_pre_hook(
        lambda m, args: clean_in.setdefault("x", args[0].clone())
    )
    model.hf(pairs.clean)
    grab.remove()

    def write(module, args):
        hidden = args[0].clone()
        hidden[:, 3] = clean_in["x"][:, 3]
        return (hidden, *args[1:])

    patched = raw_logit_diff(
        model, pairs.corrupt, pairs.answers, pairs.wrong, layer, write, pre=True
    )
    clean = raw_logit_diff(model, pairs.clean, pairs.answers, pairs.wrong)
    corrupt = raw_logit_diff(model, pairs.corrupt, pairs.answers, pairs.wrong)
    got = result.sel(metric=["logit_diff", "norm_logit_diff"], layer=1, pos=3).values
    np.testing.assert_allclose(
        got, [patched, (patched - corrupt) / (clean - corrupt)], rtol=1e-5, atol=1e-6
    )


def test_head_sweep_equals_raw_hooks_in_the_noising_direction():
    model, pairs = tiny_task("gpt2")
    result = reference_sweep(model, pairs, "head", direction="noise", layers=[0], heads=[2])
    o_proj, d_head = model.submodule(0, model.arch.o_proj), model.dims.d_head
    corrupt_z = {}
    grab = o_proj.register_forward_pre_hook(
        lambda m, args: corrupt_z.setdefault("z", args[0].clone())
    )
    model.hf(pairs.corrupt)
    grab.remove()

    def write(module, args):
        z = args[0].clone()
        z[..., 2 * d_head : 3 * d_head] = corrupt_z["z"][..., 2 * d_head : 3 * d_head]
        return (z,)

    patched = raw_logit_diff(
        model, pairs.clean, pairs.answers, pairs.wrong, o_proj, write, pre=True
    )
    assert result.sel(metric="logit_diff", layer=0, head=2).item() == pytest.approx(
        patched, rel=1e-5, abs=1e-6
    )


@pytest.mark.parametrize("family", FAMILIES)
def test_denoising_layer_0_everywhere_is_clean_and_noising_is_corrupt(family):
    model, pairs = tiny_task(family)
    both = reference_sweep(
        model, pairs, "resid_pre", direction=["denoise", "noise"], layers=[0], positions="all"
    )
    values = both.sel(metric="norm_logit_diff", layer=0)
    assert values.sel(direction="denoise").item() == pytest.approx(1.0, abs=1e-4)
    assert values.sel(direction="noise").item() == pytest.approx(0.0, abs=1e-4)


def test_denoise_and_noise_are_different_computations():
    model, pairs = tiny_task("llama")
    both = reference_sweep(model, pairs, "attn_out", direction=["denoise", "noise"])
    denoise, noise = both.sel(direction="denoise"), both.sel(direction="noise")
    assert not np.allclose(denoise.sel(metric="logit_diff"), noise.sel(metric="logit_diff"))
    assert both.attrs["site"] == "attn_out" and "direction" in both.dims


def test_positions_with_equal_tokens_give_exactly_zero_at_layer_0():
    model, pairs = tiny_task("mistral")
    result = reference_sweep(model, pairs, "resid_pre", layers=[0]).sel(
        metric="norm_logit_diff", layer=0
    )
    assert (
        result.sel(pos=0).item() == 0.0 and result.sel(pos=2).item() == 0.0
    )  # tiny_pairs shares these tokens
    assert abs(result.sel(pos=5).item()) > 1e-3


def test_result_layout_and_labels():
    model, pairs = tiny_task("llama")
    res = reference_sweep(model, pairs, "k", positions=["X", -1])
    assert res.dims == ("metric", "layer", "kv_head", "pos")
    assert list(res.metric.values) == list(METRICS)
    assert list(res.pos.values) == ["X", "5"] and res.kv_head.size == model.dims.n_kv_heads
    assert res.attrs["self_checks"]["noop_patch_error"] < 1e-3
    per_prompt = reference_sweep(model, pairs, "k", positions=["X", -1], per_prompt=True)
    assert per_prompt.dims[-1] == "batch"
    np.testing.assert_allclose(
        per_prompt.sel(metric="logit_diff").mean("batch"), res.sel(metric="logit_diff"), rtol=1e-10
    )


def test_save_and_load_are_lossless(tmp_path):
    model, pairs = tiny_task("gemma3")
    res = reference_sweep(
        model, pairs, "head", direction=["denoise", "noise"], positions=[1, "END"]
    )
    path = ap.save(res, tmp_path / "sub" / "r.nc")
    back = ap.load(path)
    xr.testing.assert_identical(back, res)
    assert back.attrs == res.attrs and not list(tmp_path.glob("sub/*.part"))


def test_saved_files_get_the_users_usual_mode_not_a_temporary_files(tmp_path):
    import os

    from actpatch.atomic import write_text

    model, pairs = tiny_task("llama")
    res = reference_sweep(model, pairs, "mlp_out", positions="all")
    previous = os.umask(0o022)
    try:
        saved, text = ap.save(res, tmp_path / "r.nc"), write_text(tmp_path / "page.html", "<p>")
    finally:
        os.umask(previous)
    assert (saved.stat().st_mode & 0o777) == (text.stat().st_mode & 0o777) == 0o644


# Bad inputs to every entry point, this engine's included, are tabled in test_bad_inputs.py.


def test_per_prompt_normalisation_is_per_prompt():
    model, pairs = tiny_task("qwen2")
    both = reference_sweep(
        model,
        pairs,
        "resid_pre",
        direction=["denoise", "noise"],
        layers=[0],
        positions="all",
        per_prompt=True,
    )
    norm = both.sel(metric="norm_logit_diff", layer=0)
    np.testing.assert_allclose(norm.sel(direction="denoise"), 1.0, atol=1e-6)
    np.testing.assert_allclose(norm.sel(direction="noise"), 0.0, atol=1e-6)

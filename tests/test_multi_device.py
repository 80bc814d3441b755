"""A model dispatched with a device map runs the batched engine, not the reference fallback, and
gives the reference engine's numbers.

On this machine every layer of the map is on "cpu", so accelerate's hooks sit on every module
and run (they move each layer's inputs to its execution device), but every move is a no-op: only a
real GPU + CPU split (benchmarks/gpu_check.sh) proves the state reaches each layer's device.
The moves themselves are checked here by sending a recorded call to the meta device."""

import logging

import pytest
import torch
import transformers as tf
import xarray as xr
from accelerate import dispatch_model

import actpatch as ap
from actpatch.engine import batched
from actpatch.hooks import recorded
from tiny import tiny_model, tiny_pairs, tiny_task


def _dispatched(family: str) -> ap.Model:
    """The tiny model's weights, dispatched by accelerate over an explicit per-layer map, as
    `from_pretrained(device_map=...)` does (with the model's own keys kept off the device moves)."""
    source = tiny_model(family)
    hf = tf.AutoModelForCausalLM.from_config(source.hf.config)
    hf.load_state_dict(source.hf.state_dict())
    names = [name for name, _ in hf.named_children()]
    inner = getattr(hf, names[0])
    device_map = {
        f"{names[0]}.{child}": "cpu" for child, _ in inner.named_children() if child != "layers"
    }
    device_map |= {f"{names[0]}.layers.{i}": "cpu" for i in range(len(inner.layers))}
    device_map |= {name: "cpu" for name in names[1:]}
    hf = dispatch_model(
        hf.eval().requires_grad_(False),
        device_map=device_map,
        main_device="cpu",
        force_hooks=True,
        skip_keys=hf._skip_keys_device_placement,
    )
    return ap.Model.from_hf(hf, name=f"dispatched-{family}")


@pytest.mark.parametrize("family", ["llama", "gemma3"])
@pytest.mark.parametrize("kind, positions", [("resid_pre", "each"), ("head", ["X", 4])])
def test_a_dispatched_model_runs_the_batched_engine_and_matches_the_reference(
    family, kind, positions, caplog
):
    model = _dispatched(family)
    assert hasattr(model.layer(1), "_hf_hook") and len(model.hf.hf_device_map) > 3
    _, pairs = tiny_task(family)
    options = dict(direction=["denoise", "noise"], positions=positions)
    with caplog.at_level(logging.WARNING):
        got = ap.sweep(model, pairs, kind, chunk=3, **options)
    want = ap.sweep(model, pairs, kind, engine="reference", **options)
    assert got.attrs["engine"] == "batched" and "reference engine" not in caplog.text
    xr.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    # The same numbers as the undispatched model's batched sweep: the hooks change nothing.
    xr.testing.assert_allclose(
        got, ap.sweep(tiny_model(family), pairs, kind, chunk=3, **options), atol=1e-6, rtol=0
    )


def test_a_split_device_map_is_no_reason_to_fall_back():
    model = _dispatched("llama")
    assert batched.unsupported(model) is None


def test_each_layer_device_comes_from_its_hook():
    model = _dispatched("llama")
    pairs = tiny_pairs()
    resumer = batched.Resumer(model, pairs.corrupt_run)
    assert resumer.devices == [
        torch.device(model.layer(i)._hf_hook.execution_device) for i in range(2)
    ]
    assert resumer.head_device == torch.device("cpu")


def test_a_recorded_call_moves_to_a_layer_device_and_its_cache_stays():
    """What the engine does once per recorded prefix on a split model, checked with the meta device."""
    model, pairs = tiny_task("llama")
    resumer = batched.Resumer(model, pairs.corrupt_run)
    prefix = resumer.recordings.at(2)
    args, kwargs = recorded.moved(prefix.calls[1], torch.device("meta"))
    tensors = [
        args[0],
        *(v for v in kwargs.values() if isinstance(v, torch.Tensor)),
        *kwargs["position_embeddings"],
    ]
    assert tensors and {t.device.type for t in tensors} == {"meta"}
    assert (
        kwargs["cache"] is prefix.calls[1][1]["cache"]
    )  # each cache layer stays on its own layer's device
    assert prefix.calls[1][0][0].device.type == "cpu"  # the recording itself is untouched

"""The Python steps of benchmarks/gpu_check.sh, each runnable on CPU (`--device cpu`) to prove the
script before GPU time is spent; only the CUDA parts (a real out-of-memory, GPU workers, a real
split) need the GPU. Each step prints what it checked and exits non-zero when a check fails.

    python benchmarks/_gpu_check.py oom    --device cuda   # a real CUDA OOM in a chunk, backed off
    python benchmarks/_gpu_check.py shards --device cuda   # Ray sharded sweep, one GPU per worker
    python benchmarks/_gpu_check.py split  --device cuda   # layers split GPU/CPU, vs the unsplit model
"""
from __future__ import annotations

import argparse
import logging
import sys
import time

import torch
import xarray as xr

import actpatch as ap
from actpatch.engine import batched

sys.path.insert(0, __file__.rsplit("/", 1)[0])
from scaling import build, random_pairs  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("step", choices=["oom", "shards", "split"])
    parser.add_argument("--device", default="cuda")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_grad_enabled(False)
    {"oom": oom, "shards": shards, "split": split}[args.step](args.device)
    print(f"{args.step} on {args.device}: OK")


def oom(device: str) -> None:
    """Fill the GPU until a chunk of 64 copies cannot fit, sweep, and check the back-off gives the
    unforced result. On CPU a real allocation failure would swap, so an explicit memory budget
    forces the same halving."""
    model = build("SmolLM2-135M", device, "float32")
    pairs = random_pairs(model, 8, 32)
    options = dict(positions=["END"], progress=False, check_baseline=False)
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    want = ap.sweep(model, pairs, "head", **options)  # default budget: the engine picks the chunk
    per_copy = batched._bytes_per_copy(model, pairs.corrupt_run)
    chosen, budget = want.attrs["cost"]["chunk"], want.attrs["cost"]["memory_budget"] / 2**20
    if device.startswith("cuda"):
        used = (torch.cuda.max_memory_allocated() - before) / 2**20
        print(f"unforced sweep: chunk {chosen} of {want.attrs['cost']['patches']} patches, estimate {chosen * per_copy / 2**20:.0f} MiB for the chunk, "
              f"peak GPU memory above the model {used:.0f} MiB, budget {budget:.0f} MiB (half the free memory)")
        assert used <= budget, f"the sweep's peak ({used:.0f} MiB) is over the budget the engine chose ({budget:.0f} MiB)"
    with_logs = _Captured()
    logging.getLogger(batched.__name__).addHandler(with_logs)
    if device.startswith("cuda"):
        free, _ = torch.cuda.mem_get_info()
        room = 12 * per_copy  # leave room for about 12 copies: a chunk of 64 must run out
        ballast = torch.empty(max(0, free - room - (256 << 20)), dtype=torch.uint8, device=device)
        got = ap.sweep(model, pairs, "head", chunk=64, **options)
        del ballast
        torch.cuda.empty_cache()
    else:
        got = ap.sweep(model, pairs, "head", chunk=64, memory_budget=12 * per_copy, **options)
    print(f"forced sweep: chunk 64 requested, ended at {got.attrs['cost']['chunk']}; back-off messages: {with_logs.messages[:2]}")
    assert got.attrs["cost"]["chunk"] < 64, "nothing ran out of memory: the ballast did not bite"
    assert any("ran out of memory" in m for m in with_logs.messages), "no back-off was logged"
    xr.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    print(f"back-off result equals the unforced one (≤1e-5); max |Δ| {float(abs(got - want).max()):.1e}")


def shards(device: str) -> None:
    """A sharded head sweep on Ray: one GPU per worker where there are GPUs (`ray.init(num_gpus=…)`
    here; `ray start --num-gpus` on a cluster), checked against the single-process sweep."""
    import ray

    model = ap.load_model(device=device)
    pairs = ap.ioi_pairs(model, n=4)
    want = ap.sweep(model, pairs, "head", positions=["END"], progress=False)
    gpus = torch.cuda.device_count() if device.startswith("cuda") else 0
    ray.init(num_cpus=2, num_gpus=gpus, include_dashboard=False, logging_level=logging.WARNING)
    try:
        start = time.perf_counter()
        got = ap.sweep(model, pairs, "head", positions=["END"], shards=2, progress=False)
        wall = time.perf_counter() - start
    finally:
        ray.shutdown()
    cost = got.attrs["cost"]
    print(f"sharded: {cost['shards']} shards on {cost['workers']} workers, devices {cost['worker_devices']}, {wall:.1f} s")
    assert cost["worker_devices"] == (["cuda:0"] if gpus else ["cpu"]), cost["worker_devices"]
    xr.testing.assert_allclose(got.drop_attrs(), want.drop_attrs(), atol=1e-5, rtol=1e-5)
    print("sharded result equals the single-process one (≤1e-5)")


def split(device: str) -> None:
    """The embedded SmolLM2 with layers 0-14 computing on the GPU and 15-29 (and the head) on the CPU,
    dispatched by accelerate with its device hooks, through the batched engine, against the unsplit
    model. (transformers' own device_map on one GPU would offload the "cpu" layers, which
    `load_model` refuses; a real multi-GPU split places layers as this does.) On CPU every layer says
    "cpu": the hooks run and the moves are no-ops."""
    from accelerate import dispatch_model

    whole = ap.load_model(device=device)
    pairs = ap.ioi_pairs(whole, n=4)
    options = dict(direction=["denoise", "noise"], progress=False)
    sweeps = {"resid_pre": dict(layers=[0, 7, 14, 15, 16, 29]), "head": dict(positions=["END", "S2"], layers=[0, 14, 15, 29])}
    want = {kind: ap.sweep(whole, pairs, kind, **o, **options) for kind, o in sweeps.items()}
    gpu = 0 if device.startswith("cuda") else "cpu"
    device_map = {"model.embed_tokens": gpu, "model.rotary_emb": gpu, "model.norm": "cpu", "lm_head": "cpu",
                  **{f"model.layers.{i}": gpu if i < 15 else "cpu" for i in range(30)}}
    hf = ap.load_model(whole.provenance["checkpoint"], device="cpu").hf
    hf = dispatch_model(hf, device_map=device_map, main_device="cpu", force_hooks=True, skip_keys=hf._skip_keys_device_placement)
    model = ap.Model.from_hf(hf, whole.tokenizer, name="split")
    print("layer devices:", sorted({str(p.device) for p in model.hf.parameters()}))
    for kind, o in sweeps.items():
        got = ap.sweep(model, pairs, kind, **o, **options)
        delta = float(abs(got.sel(metric="norm_logit_diff") - want[kind].sel(metric="norm_logit_diff")).max())
        print(f"split {kind}: engine {got.attrs['engine']}, max |Δ norm_logit_diff| vs unsplit {delta:.1e}")
        assert got.attrs["engine"] == "batched" and delta <= 1e-4


class _Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


if __name__ == "__main__":
    main()

"""How a sweep's cost grows with the model, the prompt length and the number of prompts.

Models: randomly initialised from configs shaped like SmolLM2-135M, SmolLM2-360M, Qwen2.5-0.5B and
Llama-3.2-1B (layers, widths, heads and grouped KV heads, vocabulary, tied embeddings as in the
originals; built with `AutoModelForCausalLM.from_config`, nothing downloaded), and the real embedded
SmolLM2-135M-Instruct (`ap.load_model()`) at one point. Random weights are fine for timing: a forward
costs the same whatever the weights hold. Prompts are random token ids (clean and corrupt differ at
every position but the first); answers are the tokens the clean run favours most over the corrupt.

Per point, each method in one process after a warm-up forward:
  resid_pre  ap.sweep, every layer × every position (the batched engine, the default)
  head       ap.sweep, per-head z at the last position, every layer × head
  atp        ap.attribute(..., "resid_pre"): the estimate of the resid_pre sweep
  eap        ap.graph.edge_scores(..., "eap"): every edge of the computational graph
  nnsight    the resid_pre sweep in nnsight 0.8 with batched invokes (sweep_peers._nnsight_invokes)
  plain      the resid_pre sweep as a plain PyTorch-hooks loop, one forward per patch (sweep_peers)
Figures: wall time; forward equivalents (work in units of one full forward of the target batch, as
`attrs["cost"]` counts it); `× naive`: wall / (patches × one forward's wall time), the one-patch-per-
forward cost; `× floor`: wall / (the sweep's work floor × one forward's wall time), where the floor
(`attrs["cost"]["work_floor"]`, engine/batched.py) is the work that layer resume and prefix reuse
cannot avoid: the two unpatched runs, and each patched copy's layers from its entry layer over its
affected positions plus its final position's unembedding (counted as the unembedding's parameters
over a decoder layer's). A batch of many copies uses the cores better than the one forward timed
as the yardstick, so `× floor` can fall below 1 on a CPU; `work / floor` is counted and exact. Peak memory: on CPU the kernel's peak RSS during the step minus the RSS
before it (VmHWM, benchmarks/_measure.py; not tracemalloc, which cannot see torch's allocations), on
CUDA torch.cuda.max_memory_allocated minus the memory allocated before.

    python benchmarks/scaling.py --quick          # under 5 minutes on 2 idle cores
    python benchmarks/scaling.py                  # the full grid, under 30 minutes on 2 idle cores
    python benchmarks/scaling.py --device cuda --dtype bfloat16 --configs Llama-3.2-1B \\
        --axes size --methods resid_pre,plain,nnsight          # what gpu_check.sh times
A table on stdout; scaling.json and scaling.png in --out (default benchmarks/out/, git-ignored)."""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterator

import torch
import transformers as tf

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _measure import measured  # noqa: E402
from sweep_peers import _nnsight_invokes, _plain_hooks  # noqa: E402

import actpatch as ap  # noqa: E402
from actpatch.engine.collect import baseline  # noqa: E402

REAL = "SmolLM2-135M (real weights)"
CONFIGS = {  # the originals' shapes; random weights
    "SmolLM2-135M": lambda: tf.LlamaConfig(hidden_size=576, intermediate_size=1536, num_hidden_layers=30, num_attention_heads=9,
                                           num_key_value_heads=3, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0),
    "SmolLM2-360M": lambda: tf.LlamaConfig(hidden_size=960, intermediate_size=2560, num_hidden_layers=32, num_attention_heads=15,
                                           num_key_value_heads=5, vocab_size=49152, tie_word_embeddings=True, rope_theta=100000.0),
    "Qwen2.5-0.5B": lambda: tf.Qwen2Config(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                                           num_key_value_heads=2, vocab_size=151936, tie_word_embeddings=True, rope_theta=1000000.0),
    "Llama-3.2-1B": lambda: tf.LlamaConfig(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
                                           num_key_value_heads=8, head_dim=64, vocab_size=128256, tie_word_embeddings=True,
                                           rope_theta=500000.0),
}
METHODS = ("resid_pre", "head", "atp", "eap", "nnsight", "plain")
EXACT_RESID_PRE = ("resid_pre", "nnsight", "plain")  # the same sweep, so the same floor and grid


@dataclass(frozen=True)
class Point:
    axis: str  # "size", "length" or "prompts": the curve it belongs to
    model: str
    prompts: int
    tokens: int
    methods: tuple[str, ...]


def grid(quick: bool, configs: list[str], axes: list[str], methods: tuple[str, ...]) -> list[Point]:
    """The points measured. EAP and the one-forward-per-patch peers only where they finish in
    reasonable time on a CPU: the two small models in full runs, the smallest in quick ones."""
    small = "SmolLM2-135M"
    slow = ("eap", "nnsight", "plain")
    cheap = tuple(m for m in methods if m not in slow)

    def with_slow(*allowed: str) -> tuple[str, ...]:
        return cheap + tuple(m for m in methods if m in allowed)

    points: list[Point] = []
    if "size" in axes:
        prompts, tokens = (2, 8) if quick else (4, 16)
        heavy = (small, REAL) if quick else (small, REAL, "SmolLM2-360M")
        for name in [*configs, *([REAL] if small in configs else [])]:
            points.append(Point("size", name, prompts, tokens, with_slow(*slow) if name in heavy else cheap))
    if small in configs and "length" in axes:
        for tokens in (8, 16) if quick else (8, 16, 32, 64):
            points.append(Point("length", small, 2 if quick else 4, tokens, with_slow("nnsight") if tokens <= 32 else cheap))
    if small in configs and "prompts" in axes:
        for prompts in (1, 2) if quick else (1, 2, 8):  # 4 × 16 is on the size and length curves
            points.append(Point("prompts", small, prompts, 8 if quick else 16, cheap if quick else with_slow("nnsight")))
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description="How activation-patching cost grows with model, prompt length and prompts.")
    parser.add_argument("--quick", action="store_true", help="a small grid, under 5 minutes on a CPU")
    parser.add_argument("--out", default=str(HERE / "out"), help="folder for scaling.json and scaling.png")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--configs", default=",".join(CONFIGS), help="comma-separated, from: " + ",".join(CONFIGS))
    parser.add_argument("--axes", default="size,length,prompts")
    parser.add_argument("--methods", default=",".join(m for m in METHODS if m != "plain"),
                        help="comma-separated, from: " + ",".join(METHODS) + " (plain, one forward per patch, only when named)")
    parser.add_argument("--prompts", type=int, help="override the size axis' prompts")
    parser.add_argument("--tokens", type=int, help="override the size axis' prompt length")
    args = parser.parse_args()
    configs, methods = args.configs.split(","), tuple(args.methods.split(","))
    if unknown := [c for c in configs if c not in CONFIGS] + [m for m in methods if m not in METHODS]:
        parser.error(f"unknown configs/methods {unknown}")
    torch.set_grad_enabled(False)
    torch.manual_seed(0)
    points = grid(args.quick, configs, args.axes.split(","), methods)
    if args.methods != parser.get_default("methods"):  # methods named explicitly run at every point
        points = [replace(p, methods=methods) for p in points]
    if args.prompts or args.tokens:
        points = [replace(p, prompts=args.prompts or p.prompts, tokens=args.tokens or p.tokens) if p.axis == "size" else p for p in points]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"{len(points)} points on {args.device} in {args.dtype}; {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}; "
          "random weights except the real SmolLM2 point (timing does not depend on the weights)\n")
    rows, started, model, loaded, done = [], time.perf_counter(), None, None, 0
    for point in points:
        if loaded != point.model:
            model, loaded = None, None  # free the previous model first
            model, loaded = build(point.model, args.device, args.dtype), point.model
        rows.extend(measure_point(model, point, args.device))
        print_rows(rows[done:])
        done = len(rows)
    summary(rows)
    (out / "scaling.json").write_text(json.dumps({"device": args.device, "dtype": args.dtype, "rows": rows,
                                                   "total_s": time.perf_counter() - started}, indent=1))
    plot(rows, out / "scaling.png")
    print(f"\ntotal {time.perf_counter() - started:.0f} s; {out / 'scaling.json'}, {out / 'scaling.png'}")


def build(name: str, device: str, dtype: str) -> ap.Model:
    """A model wrapped the way the tests wrap theirs (tests/tiny.py): `Model.from_hf` of an eval-mode HF model."""
    if name == REAL:
        return ap.load_model(dtype=dtype, device=device)
    torch.manual_seed(0)
    hf = tf.AutoModelForCausalLM.from_config(CONFIGS[name]())
    hf = hf.to(device=device, dtype=getattr(torch, dtype)).eval().requires_grad_(False)
    return ap.Model.from_hf(hf, name=f"{name} (random init)")


def random_pairs(model: ap.Model, prompts: int, tokens: int, seed: int = 0) -> ap.PromptPairs:
    """Random clean and corrupt token ids (equal at position 0 only), with answers the clean run
    favours most over the corrupt and wrong answers it favours least, so every sweep's baseline holds."""
    generator = torch.Generator().manual_seed(seed)
    vocab = model.dims.vocab
    clean = torch.randint(0, vocab, (prompts, tokens), generator=generator)
    corrupt = torch.randint(0, vocab, (prompts, tokens), generator=generator)
    corrupt[:, 0] = clean[:, 0]
    placeholder = torch.zeros(prompts, dtype=torch.long)
    pairs = ap.PromptPairs(clean, corrupt, placeholder, placeholder + 1, positions={"END": torch.full((prompts,), tokens - 1)})
    base = baseline(model, pairs, check=False)
    shift = base.clean_logits - base.corrupt_logits
    return ap.PromptPairs(clean, corrupt, shift.argmax(-1).cpu(), shift.argmin(-1).cpu(), positions=pairs.positions)


def measure_point(model: ap.Model, point: Point, device: str) -> list[dict[str, Any]]:
    pairs = random_pairs(model, point.prompts, point.tokens)
    forward_s = one_forward_s(model, pairs)
    params = sum(p.numel() for p in model.hf.parameters())
    ours_grid, floor, rows = None, None, []
    for method in sorted(point.methods, key=lambda m: m != "resid_pre"):  # ours first: its grid and floor are the yardstick
        record: dict[str, Any] = {"axis": point.axis, "model": point.model, "params": params, "prompts": point.prompts,
                                  "tokens": point.tokens, "method": method, "forward_s": forward_s}
        try:
            grid_values = run_method(model, pairs, method, record, device)
        except Exception as error:  # one broken method must not lose the other figures
            print(f"| {point.axis} | {point.model} | {method} failed: {type(error).__name__}: {str(error)[:200]}", flush=True)
            continue
        if method == "resid_pre":
            ours_grid, floor = grid_values, record["work_floor"]
        if method in EXACT_RESID_PRE and ours_grid is not None:
            record["work_floor"] = floor
            record["max_abs_diff_vs_ours"] = float((grid_values - ours_grid).abs().max())
        record["x_naive"] = record["wall_s"] / (record["naive_forwards"] * forward_s)
        if record.get("work_floor"):
            record["x_floor"] = record["wall_s"] / (record["work_floor"] * forward_s)
            record["work_over_floor"] = record["forward_equivalents"] / record["work_floor"]
        record["patches_per_s"] = record["naive_forwards"] / record["wall_s"]
        rows.append(record)
    return rows


def one_forward_s(model: ap.Model, pairs: ap.PromptPairs) -> float:
    """Median wall time of one forward of the target batch, as every sweep runs it (last position unembedded)."""
    ap.hooks.last_logits(model, pairs.corrupt_run)  # warm-up
    times = []
    for _ in range(3):
        start = time.perf_counter()
        ap.hooks.last_logits(model, pairs.corrupt_run)
        _sync(model.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run_method(model: ap.Model, pairs: ap.PromptPairs, method: str, record: dict, device: str) -> torch.Tensor | None:
    """Time one method; fill `record` (wall_s, peak memory, forward_equivalents, naive_forwards); the
    resid_pre grid of logit differences (layer, pos) for the exact resid_pre sweeps."""
    common = dict(progress=False, check_baseline=False)
    if method in ("resid_pre", "head"):
        positions = "each" if method == "resid_pre" else ["END"]
        with peak(record, device):
            result = ap.sweep(model, pairs, method, positions=positions, **common)
        cost = result.attrs["cost"]
        record.update(forward_equivalents=cost["forward_equivalents"], work_floor=cost["work_floor"],
                      naive_forwards=cost["patches"], chunk=cost["chunk"], engine=result.attrs["engine"])
        if method == "head":
            return None
        return torch.as_tensor(result.sel(metric="logit_diff").transpose("layer", "pos").values, dtype=torch.float32)
    if method == "atp":
        with peak(record, device):
            result = ap.attribute(model, pairs, "resid_pre", positions="each", **common)
        record.update(forward_equivalents=result.attrs["cost"]["forward_equivalents"], naive_forwards=result.attrs["cost"]["patches"])
        return None
    if method == "eap":
        with peak(record, device):
            scores = ap.graph.edge_scores(model, pairs, "eap", **common)
        edges = int(scores.graph.exists.sum())
        record.update(forward_equivalents=None, naive_forwards=edges)  # exact edge scores: one forward per edge
        return None
    prompts = torch.arange(len(pairs), device=model.device)
    answers, wrong = pairs.answers.to(model.device), pairs.wrong.to(model.device)

    def logit_diff(last_logits: torch.Tensor) -> float:
        last_logits = last_logits.float()  # (batch, vocab)
        return float((last_logits[prompts, answers] - last_logits[prompts, wrong]).mean())

    peer = {"nnsight": _nnsight_invokes, "plain": _plain_hooks}[method]
    clean, corrupt = pairs.clean.to(model.device), pairs.corrupt.to(model.device)
    run = peer(model, clean, corrupt, pairs.seq_len - 1, "A", logit_diff)
    with peak(record, device):
        values = run()
    record.update(forward_equivalents=float(values.numel() + 1), naive_forwards=values.numel())  # + the clean capture
    return values


@contextmanager
def peak(record: dict, device: str) -> Iterator[None]:
    """`measured` (wall time, peak RSS above the RSS before) and, on CUDA, the peak allocated above what was allocated before."""
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    with measured(record):
        yield
        _sync(torch.device(device))
    record["peak_mib"] = record["peak_delta_mib"]
    if device.startswith("cuda"):
        record["peak_mib"] = (torch.cuda.max_memory_allocated() - before) / 2**20
        record["peak_gpu_total_mib"] = torch.cuda.max_memory_allocated() / 2**20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---- the report ------------------------------------------------------------------------------------

HEADER = ("| axis | model | params M | prompts × tokens | method | wall s | patches/s | fwd equiv | floor | × naive | × floor "
          "| work / floor | peak MiB | max diff vs ours |")


def print_rows(rows: list[dict]) -> None:
    if not getattr(print_rows, "started", False):
        print(HEADER)
        print("|---|---|---:|---:|---|" + "---:|" * 9)
        print_rows.started = True
    for r in rows:
        fe = "—" if r["forward_equivalents"] is None else f"{r['forward_equivalents']:.1f}"
        floor = f"{r['work_floor']:.1f}" if r.get("work_floor") else "—"
        print(f"| {r['axis']} | {r['model']} | {r['params'] / 1e6:.0f} | {r['prompts']} × {r['tokens']} | {r['method']} "
              f"| {r['wall_s']:.2f} | {r['patches_per_s']:.1f} | {fe} | {floor} | {r['x_naive']:.3g} "
              f"| {_maybe(r, 'x_floor', '.2f')} | {_maybe(r, 'work_over_floor', '.2f')} | {r['peak_mib']:.0f} "
              f"| {_maybe(r, 'max_abs_diff_vs_ours', '.1e')} |", flush=True)


def _maybe(row: dict, key: str, spec: str) -> str:
    return "—" if row.get(key) is None else format(row[key], spec)


def summary(rows: list[dict]) -> None:
    """The issue's two CPU targets, read off this run: ours ≤ 1.15× the work floor, ≥ 4× nnsight's speed."""
    ours = [r for r in rows if r["method"] == "resid_pre"]
    print(f"\nresid_pre sweep (ours): wall / work floor from {min(r['x_floor'] for r in ours):.2f} to {max(r['x_floor'] for r in ours):.2f} "
          f"(target ≤ 1.15); counted work / floor from {min(r['work_over_floor'] for r in ours):.2f} to {max(r['work_over_floor'] for r in ours):.2f}")
    for r in rows:
        if r["method"] == "nnsight":
            mine = next(o for o in ours if (o["axis"], o["model"], o["prompts"], o["tokens"]) == (r["axis"], r["model"], r["prompts"], r["tokens"]))
            print(f"  {r['model']} {r['prompts']} × {r['tokens']}: nnsight batched invokes / ours = {r['wall_s'] / mine['wall_s']:.1f}× "
                  f"(target ≥ 4), grids agree to {r['max_abs_diff_vs_ours']:.1e}")


def plot(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes_of = {"size": ("params", "parameters (M)", 1e6), "length": ("tokens", "prompt length (tokens)", 1),
               "prompts": ("prompts", "prompts", 1)}
    present = [a for a in axes_of if any(r["axis"] == a for r in rows)]
    figure, panels = plt.subplots(1, len(present), figsize=(5.5 * len(present), 4.2), squeeze=False)
    for panel, axis in zip(panels[0], present):
        key, label, scale = axes_of[axis]
        here = [r for r in rows if r["axis"] == axis and r["model"] != REAL]
        for method in METHODS:
            line = sorted((r[key] / scale, r["wall_s"]) for r in here if r["method"] == method)
            if line:
                panel.plot(*zip(*line), marker="o", label=method)
        ours = sorted((r[key] / scale, r) for r in here if r["method"] == "resid_pre")
        if ours:
            xs = [x for x, _ in ours]
            panel.plot(xs, [r["naive_forwards"] * r["forward_s"] for _, r in ours], "k--", lw=1, label="resid_pre naive (1 patch / forward)")
            panel.plot(xs, [r["work_floor"] * r["forward_s"] for _, r in ours], "k:", lw=1, label="resid_pre work floor")
        panel.set_xscale("log")
        panel.set_yscale("log")
        panel.set_xlabel(label)
        panel.set_ylabel("wall s")
        panel.set_title(f"cost vs {axis}")
        panel.legend(fontsize=7)
    figure.suptitle("actpatch sweeps on random-init models shaped like SmolLM2/Qwen2.5/Llama-3.2 (timing only)", fontsize=9)
    figure.tight_layout()
    figure.savefig(path, dpi=120)


if __name__ == "__main__":
    main()

"""Time one exact activation-patching sweep with actpatch and with its peers, on the same prompts.

Two sweeps on 8 IOI prompts (14 tokens) and SmolLM2-135M-Instruct (float32, CPU), both denoising
(clean values patched into the corrupt run), every tool's logit-difference grid checked against ours:
  A  resid_pre, every layer × every position            (30 × 14 = 420 patches)
  B  per-head z (input of o_proj) at END, layer × head  (30 × 9 = 270 patches)
Tools: actpatch batched (the default engine), actpatch reference, a plain PyTorch-hooks loop,
nnsight 0.8 (one trace per patch) and TransformerLens 3.9 (in benchmarks/.venv-tl, as a subprocess).

Each tool × sweep runs in a fresh worker process (this same file with --worker, or
_transformerlens_worker.py): it loads the model, runs one warm-up forward, then times the sweep,
clean-activation capture included, and reports its peak RSS above the RSS it had just before.
Before each worker we wait until other processes use less than half a core, and a timing that
other processes disturbed (more than 0.3 cores on average) is repeated, up to three runs in all.

    bash benchmarks/setup_peers.sh          # once: nnsight here, TransformerLens in .venv-tl
    python benchmarks/sweep_peers.py        # about 20 minutes on 2 idle cores; tables on stdout
Raw numbers go to benchmarks/results/peers.json."""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
TL_PYTHON = HERE / ".venv-tl" / "bin" / "python"

SWEEPS = {
    "A": "resid_pre, every layer × every position, denoise",
    "B": "head z at END, every layer × head, denoise",
}
TOOLS = {  # name -> label in the tables
    "batched": "actpatch batched (default)",
    "reference": "actpatch reference",
    "plain": "plain PyTorch hooks loop",
    "nnsight": "nnsight 0.8.1 (one trace per patch)",
    "transformerlens": "TransformerLens 3.9 (`transformer_lens.patching`)",
}
AGREEMENT = 1e-3      # max |logit_diff grid − ours| that counts as the same result
QUIET_CORES = 0.5     # other processes' CPU use we accept before starting a timed worker
CONTENDED = 0.3       # mean cores other processes used during a timing that makes us time it again
N_PROMPTS = 8


def main() -> None:
    parser = argparse.ArgumentParser(description="Time exact activation-patching sweeps: actpatch vs peers.")
    parser.add_argument("--sweeps", default="A,B", help="comma-separated, from: A,B")
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma-separated, from: " + ",".join(TOOLS))
    parser.add_argument("--no-memory-check", action="store_true", help="skip the plain forward of one batched chunk")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--sweep", help=argparse.SUPPRESS)
    parser.add_argument("--batch", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--spec", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return run_worker(args)
    sweeps, tools = args.sweeps.split(","), args.tools.split(",")
    if unknown := [s for s in sweeps if s not in SWEEPS] + [t for t in tools if t not in TOOLS]:
        parser.error(f"unknown sweeps/tools {unknown}")
    if "batched" not in tools:
        parser.error("the batched engine is the baseline every other tool is compared with; keep it in --tools")

    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "logs").mkdir(exist_ok=True)
    spec = make_spec()
    spec_path = RESULTS / "spec.json"
    spec_path.write_text(json.dumps(spec))
    print(f"SmolLM2-135M-Instruct from {spec['checkpoint']}; {N_PROMPTS} IOI prompts × {len(spec['clean'][0])} tokens; "
          f"{os.cpu_count()} cores; {platform.processor() or platform.machine()}\n")
    report: dict = {"spec": spec, "environment": environment(), "sweeps": {}}
    forwards: dict = {}  # batch size -> peak of one plain forward, shared by sweeps with the same chunk
    for sweep in sweeps:
        records = {}
        for tool in tools:
            if tool == "transformerlens" and not TL_PYTHON.exists():
                print(f"[{sweep}] skipping TransformerLens: {TL_PYTHON} is missing (run benchmarks/setup_peers.sh)")
                continue
            records[tool] = run_tool(tool, sweep, spec_path)
        memory = None if args.no_memory_check else memory_check(records["batched"], spec_path, sweep, forwards)
        report["sweeps"][sweep] = {"description": SWEEPS[sweep], "tools": records, "memory_check": memory}
        print_table(sweep, records, memory)
    out = RESULTS / "peers.json"
    out.write_text(json.dumps(report, indent=1))
    print(f"raw results: {out.relative_to(HERE.parent)}")


def make_spec() -> dict:
    """The prompts every tool runs, as token ids, and the checkpoint folder every tool loads."""
    import actpatch as ap

    model = ap.load_model()
    pairs = ap.ioi_pairs(model, n=N_PROMPTS)
    end = pairs.positions["END"]
    assert bool((end == end[0]).all()) and int(end[0]) == pairs.clean.shape[1] - 1, "END must be the last position"
    return {
        "checkpoint": model.provenance["checkpoint"],
        "model_source": model.provenance,
        "clean": pairs.clean.tolist(),
        "corrupt": pairs.corrupt.tolist(),
        "answers": pairs.answers.tolist(),
        "wrong": pairs.wrong.tolist(),
        "end": int(end[0]),
        "positions": {name: where.tolist() for name, where in pairs.positions.items()},
        "clean_text": list(pairs.clean_text or []),
        "corrupt_text": list(pairs.corrupt_text or []),
    }


# ---- running one timed worker -------------------------------------------------------------------


def run_tool(tool: str, sweep: str, spec_path: Path, attempts: int = 3) -> dict:
    """Time one tool on one sweep; if other processes took more than CONTENDED cores meanwhile,
    time it again (up to `attempts` in all) and keep the least disturbed run."""
    out = RESULTS / f"{tool}_{sweep}.json"
    if tool == "transformerlens":
        command = [str(TL_PYTHON), str(HERE / "_transformerlens_worker.py")]
    else:
        command = [sys.executable, str(Path(__file__).resolve()), "--worker", tool]
    command += ["--sweep", sweep, "--spec", str(spec_path), "--out", str(out)]
    best = None
    for attempt in range(1, attempts + 1):
        quiet = wait_until_quiet()
        print(f"[{sweep}] {TOOLS[tool]} ...", end=" ", flush=True)
        record = _run(command, out, RESULTS / "logs" / f"{tool}_{sweep}.log")
        record.update(quiet, attempt=attempt)
        print(f"{record['wall_s']:.1f} s (others used {record['others_cores_during']:.2f} cores meanwhile)")
        if best is None or record["others_cores_during"] < best["others_cores_during"]:
            best = record
        if record["others_cores_during"] <= CONTENDED:
            break
        print(f"[{sweep}]   disturbed by other processes; timing again")
    return best


def memory_check(batched: dict, spec_path: Path, sweep: str, forwards: dict) -> dict:
    """Peak RSS of one plain forward of the batched engine's chunk, beside the batched sweep's peak.

    Two forwards of (chunk × prompts) sequences: the model's default call (full logits, key/value
    cache), and the lean one that unembeds the last position only, as the engine does."""
    batch = min(batched["chunk"], batched["patches"]) * N_PROMPTS
    check = {"batch": batch, "batched_peak_delta_mib": batched["peak_delta_mib"]}
    for variant in ("default", "last_position"):
        if (batch, variant) not in forwards:
            wait_until_quiet()
            out = RESULTS / f"forward_{variant}_{batch}.json"
            command = [sys.executable, str(Path(__file__).resolve()), "--worker", f"forward_{variant}", "--batch", str(batch),
                       "--spec", str(spec_path), "--out", str(out)]
            forwards[batch, variant] = _run(command, out, RESULTS / "logs" / f"forward_{variant}_{batch}.log")
        record = forwards[batch, variant]
        check[variant] = {"peak_delta_mib": record["peak_delta_mib"], "wall_s": record["wall_s"],
                          "batched_over_forward": batched["peak_delta_mib"] / record["peak_delta_mib"]}
    return check


def _run(command: list[str], out: Path, log: Path) -> dict:
    import psutil

    out.unlink(missing_ok=True)
    busy_before = _busy_cpu_seconds(psutil)
    children_before = _children_cpu_seconds()
    start = time.perf_counter()
    with open(log, "w") as log_file:
        finished = subprocess.run(command, stdout=log_file, stderr=subprocess.STDOUT, cwd=HERE.parent)
    elapsed = time.perf_counter() - start
    if finished.returncode != 0 or not out.exists():
        tail = log.read_text()[-3000:]
        raise SystemExit(f"\nworker failed ({finished.returncode}): {' '.join(command)}\n--- {log} (tail) ---\n{tail}")
    record = json.loads(out.read_text())
    # CPU that other processes used while the worker ran: all busy CPU time minus the worker's own.
    others = (_busy_cpu_seconds(psutil) - busy_before) - (_children_cpu_seconds() - children_before)
    record["others_cores_during"] = max(0.0, others / elapsed)
    return record


def wait_until_quiet(max_wait_s: float = 900) -> dict:
    """Wait (30 s at a time) until other processes use under QUIET_CORES cores; return what we saw.

    The 1-minute load average is recorded too, but it stays high for a minute after our own
    previous worker, so the decision uses the CPU actually in use now."""
    import psutil

    waited = 0.0
    while True:
        cores = psutil.cpu_percent(interval=3) / 100 * (os.cpu_count() or 1)
        if cores <= QUIET_CORES or waited >= max_wait_s:
            if cores > QUIET_CORES:
                print(f"(still busy after {waited:.0f} s; timing anyway)", end=" ")
            return {"others_cores_before": cores, "load_avg_1min_before": os.getloadavg()[0], "waited_s": waited}
        print(f"(machine busy: {cores:.1f} cores in use, load {os.getloadavg()[0]:.2f}; waiting 30 s)", flush=True)
        time.sleep(30)
        waited += 30


def _busy_cpu_seconds(psutil) -> float:
    times = psutil.cpu_times()
    return sum(times) - times.idle - getattr(times, "iowait", 0.0)


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def environment() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for package in ("actpatch", "torch", "transformers", "nnsight", "psutil"):
        try:
            versions[package] = version(package)
        except PackageNotFoundError:
            versions[package] = None
    return {"python": platform.python_version(), "cores": os.cpu_count(), "versions": versions}


# ---- the report ------------------------------------------------------------------------------------


def print_table(sweep: str, records: dict, memory: dict | None) -> None:
    import numpy as np

    ours = records["batched"]
    ours_grid = np.array(ours["grid"])
    print(f"\n### Sweep {sweep}: {SWEEPS[sweep]} ({ours['patches']} patches, grid {ours_grid.shape[0]}×{ours_grid.shape[1]})\n")
    print("| tool | wall s | × ours (batched) | forward equivalents | RSS before sweep MiB | peak Δ RSS MiB "
          "| max abs diff logit_diff vs ours | agrees (≤1e-3) | other load (cores) |")
    print("|---|---:|---:|---:|---:|---:|---:|:-:|---:|")
    for tool, record in records.items():
        diff = float(np.abs(np.array(record["grid"]) - ours_grid).max())
        record["max_abs_diff_vs_batched"] = diff
        record["ratio_to_batched"] = record["wall_s"] / ours["wall_s"]
        print(f"| {TOOLS[tool]} | {record['wall_s']:.1f} | {record['ratio_to_batched']:.2f} | {record['forward_equivalents']:.1f} "
              f"| {record['rss_before_mib']:.0f} | {record['peak_delta_mib']:.0f} | {diff:.1e} | {'yes' if diff <= AGREEMENT else 'NO'} "
              f"| {record['others_cores_during']:.2f} |")
    print(f"\nOur work ratio (batched forward equivalents / patches): {ours['forward_equivalents']:.1f} / {ours['patches']} "
          f"= {ours['forward_equivalents'] / ours['patches']:.3f}  (chunk {ours['chunk']}, no-op patches skipped {ours['noop_patches_skipped']})")
    if memory:
        print(f"Peak memory vs one plain forward of the same chunk ({memory['batch']} sequences = "
              f"{memory['batch'] // N_PROMPTS} copies × {N_PROMPTS} prompts): batched sweep peak Δ {memory['batched_peak_delta_mib']:.0f} MiB")
        for variant, label in (("default", "model's default forward (full logits, KV cache)"), ("last_position", "forward unembedding the last position only, no cache")):
            check = memory[variant]
            verdict = "≤ 2× ✓" if check["batched_over_forward"] <= 2 else "> 2× ✗"
            print(f"  - {label}: peak Δ {check['peak_delta_mib']:.0f} MiB ({check['wall_s']:.1f} s); "
                  f"batched / forward = {check['batched_over_forward']:.2f} ({verdict})")
    if "transformerlens" in records:
        print(f"TransformerLens logits vs HF's on the corrupt prompts: max abs diff {records['transformerlens']['tl_vs_hf_max_abs_logit_diff']:.1e}")
    print()


# ---- workers (each in its own process) --------------------------------------------------------------


def run_worker(args: argparse.Namespace) -> None:
    import torch

    import actpatch as ap
    from _measure import measured, write_json

    torch.set_grad_enabled(False)
    spec = json.loads(Path(args.spec).read_text())
    model = ap.load_model(spec["checkpoint"])
    clean, corrupt = torch.tensor(spec["clean"]), torch.tensor(spec["corrupt"])
    model.hf(input_ids=corrupt)  # warm-up, as every tool gets
    record: dict = {"tool": args.worker, "sweep": args.sweep}
    if args.worker.startswith("forward_"):
        ids = corrupt.repeat(args.batch // len(corrupt), 1)  # (batch, pos)
        lean = dict(use_cache=False, logits_to_keep=1) if args.worker == "forward_last_position" else {}
        with measured(record):
            model.hf(input_ids=ids, **lean)
        return write_json(args.out, record)

    answers, wrong = torch.tensor(spec["answers"]), torch.tensor(spec["wrong"])
    prompts = torch.arange(len(answers))

    def logit_diff(last_logits: torch.Tensor) -> float:
        # last_logits (batch, vocab): mean over prompts of logit(answer) − logit(wrong)
        return float((last_logits[prompts, answers] - last_logits[prompts, wrong]).mean())

    peer = {"plain": _plain_hooks, "nnsight": _nnsight}.get(args.worker)
    if peer is None:  # actpatch itself
        # The spec's token ids, not a fresh ioi_pairs call: every tool must see the very same prompts.
        pairs = ap.PromptPairs(clean=clean, corrupt=corrupt, answers=answers, wrong=wrong,
                               clean_text=tuple(spec["clean_text"]) or None, corrupt_text=tuple(spec["corrupt_text"]) or None,
                               positions={name: torch.tensor(where) for name, where in spec["positions"].items()})
        site, positions = ("resid_pre", None) if args.sweep == "A" else ("head", ["END"])
        with measured(record):
            res = ap.sweep(model, pairs, site, positions=positions, engine=args.worker, progress=False)
        grid = res.sel(metric="logit_diff")
        grid = grid.transpose("layer", "pos") if args.sweep == "A" else grid.squeeze("pos").transpose("layer", "head")
        record.update(res.attrs["cost"], grid=grid.values.tolist(), self_checks=res.attrs["self_checks"])
    else:
        setup = peer(model, clean, corrupt, spec["end"], args.sweep, logit_diff)
        with measured(record):
            grid = setup()
        record.update(grid=grid.tolist(), patches=grid.numel(), forward_equivalents=float(grid.numel()))
    write_json(args.out, record)


def _plain_hooks(model, clean, corrupt, end: int, sweep: str, logit_diff):
    """A researcher's loop: capture the clean activations, then one full forward per patch with a
    forward pre-hook (decoder layer input = resid_pre; o_proj input = z, heads side by side)."""
    import torch

    hf = model.hf
    layers = hf.model.layers
    n_layers, n_heads, d_head = model.dims.n_layers, model.dims.n_heads, model.dims.d_head  # configs without head_dim too
    modules = list(layers) if sweep == "A" else [layer.self_attn.o_proj for layer in layers]

    def run():
        clean_inputs = {}
        handles = [m.register_forward_pre_hook(lambda mod, args, layer=i: clean_inputs.__setitem__(layer, args[0].clone()))
                   for i, m in enumerate(modules)]
        try:
            hf(clean)
        finally:
            for handle in handles:
                handle.remove()
        if sweep == "A":
            grid = torch.zeros(n_layers, clean.shape[1])
            cells = [(layer, pos, slice(None)) for layer in range(n_layers) for pos in range(clean.shape[1])]
        else:
            grid = torch.zeros(n_layers, n_heads)
            cells = [(layer, end, slice(head * d_head, (head + 1) * d_head)) for layer in range(n_layers) for head in range(n_heads)]
        for layer, pos, features in cells:
            def patch(module, args):
                patched = args[0].clone()
                patched[:, pos, features] = clean_inputs[layer][:, pos, features]
                return (patched, *args[1:])

            handle = modules[layer].register_forward_pre_hook(patch)
            try:
                logits = hf(corrupt).logits[:, -1]
            finally:
                handle.remove()
            column = pos if sweep == "A" else features.start // d_head
            grid[layer, column] = logit_diff(logits)
        return grid

    return run


def _nnsight(model, clean, corrupt, end: int, sweep: str, logit_diff):
    """nnsight 0.8 as its tutorials do it: one trace saves the clean activations, then one trace per patch."""
    import torch

    lm = _nnsight_model(model)
    n_layers, n_heads, d_head = model.dims.n_layers, model.dims.n_heads, model.dims.d_head

    def run_resid_pre():
        clean_resid = []
        with lm.trace(clean):
            for layer in range(n_layers):
                clean_resid.append(lm.model.layers[layer].input.save())
        grid = torch.zeros(n_layers, clean.shape[1])
        for layer in range(n_layers):
            for pos in range(clean.shape[1]):
                with lm.trace(corrupt):
                    lm.model.layers[layer].input[:, pos] = clean_resid[layer][:, pos]
                    logits = lm.output.logits[:, -1].save()
                grid[layer, pos] = logit_diff(logits)
        return grid

    def run_heads():
        clean_z = []
        with lm.trace(clean):
            for layer in range(n_layers):
                clean_z.append(lm.model.layers[layer].self_attn.o_proj.input[:, end].save())
        grid = torch.zeros(n_layers, n_heads)
        for layer in range(n_layers):
            for head in range(n_heads):
                cols = slice(head * d_head, (head + 1) * d_head)
                with lm.trace(corrupt):
                    lm.model.layers[layer].self_attn.o_proj.input[:, end, cols] = clean_z[layer][:, cols]
                    logits = lm.output.logits[:, -1].save()
                grid[layer, head] = logit_diff(logits)
        return grid

    return run_resid_pre if sweep == "A" else run_heads


def _nnsight_invokes(model, clean, corrupt, end: int, sweep: str, logit_diff):
    """nnsight 0.8 batched the fastest way its users do (sweep A only): one trace per layer, every
    position's patch an invoke of that trace, so one forward runs all of a layer's patches."""
    import torch

    assert sweep == "A", "batched invokes are timed on the resid_pre sweep"
    lm = _nnsight_model(model)
    n_layers, seq = model.dims.n_layers, clean.shape[1]

    def run():
        clean_resid = []
        with lm.trace(clean):
            for layer in range(n_layers):
                clean_resid.append(lm.model.layers[layer].input.save())
        grid = torch.zeros(n_layers, seq)
        for layer in range(n_layers):
            saved = []
            with lm.trace() as tracer:
                for pos in range(seq):
                    with tracer.invoke(corrupt):
                        lm.model.layers[layer].input[:, pos] = clean_resid[layer][:, pos]
                        saved.append(lm.output.logits[:, -1].save())
            for pos, logits in enumerate(saved):
                grid[layer, pos] = logit_diff(logits)
        return grid

    return run


def _nnsight_model(model):
    """nnsight's wrapper of the loaded model. A randomly initialised model has no tokenizer and
    nnsight insists on one; prompts here are token ids, so a one-word placeholder never reads text."""
    import nnsight

    tokenizer = model.tokenizer
    if tokenizer is None:
        from tokenizers import Tokenizer, models
        from transformers import PreTrainedTokenizerFast

        tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.WordLevel({"<unk>": 0}, unk_token="<unk>")))
    return nnsight.TransformersModel(model.hf, tokenizer=tokenizer, task="text-generation")


if __name__ == "__main__":
    main()

"""What edge circuits cost on SmolLM2-135M IOI: scores, the faithfulness curve, exact removals.

    python benchmarks/edges_cost.py [--prompts 16] [--exact-edges 2000 (0: none)] [--engine batched|reference]

Work is counted, not timed: the floating-point operations of every matrix product (forward and
backward, torch.utils.flop_counter) divided by those of one plain forward of the same prompts
("forward-equivalents"), which does not depend on the machine's load. Exact removals are also
counted as the batched engine counts its work (decoder-layer × token calls). Wall times are
printed beside, as a ratio to a plain forward timed the same way. Prints a table; writes nothing.
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

import actpatch as ap
from actpatch import graph
from actpatch.graph.evaluate import EdgeRuns
from actpatch.graph.exact import removal_logit_diffs

TARGETS = {"eap": 3, "eap-ig-inputs (5 steps)": 12, "faithfulness curve (10 sizes)": 12}


def counted(step):
    """(result, FLOPs, seconds) of `step()`."""
    counter = FlopCounterMode(display=False)
    start = time.perf_counter()
    with counter:
        result = step()
    return result, counter.get_total_flops(), time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--exact-edges", type=int, default=2000, help="removals measured (a seeded sample of all edges); 0 skips them")
    parser.add_argument("--engine", choices=["batched", "reference"], default="batched")
    args = parser.parse_args()
    torch.set_grad_enabled(True)
    model = ap.load_model()
    pairs = ap.ioi_pairs(model, n=args.prompts)
    tokens = pairs.clean.to(model.device)

    def plain_forward():
        with torch.no_grad():
            return model.hf(input_ids=tokens, use_cache=False, logits_to_keep=1).logits

    plain_forward()  # warm up
    _, forward_flops, _ = counted(plain_forward)
    forward_seconds = min(counted(plain_forward)[2] for _ in range(3))
    print(f"model {model.name}: {graph.Graph.of(model).n_edges} edges; {len(pairs)} prompts × {pairs.seq_len} tokens; "
          f"one plain forward: {forward_flops / 1e9:.2f} GFLOP, {forward_seconds:.2f} s")

    print(f"{'what':34s} {'forward-eq.':>12s} {'wall / fwd':>11s} {'÷ target':>9s}  note", flush=True)

    def row(name, flops, seconds, note=""):
        target = TARGETS.get(name)
        fe = flops / forward_flops
        ratio = "" if target is None else f"{fe / target:.2f}"
        print(f"{name:34s} {fe:12.2f} {seconds / forward_seconds:11.1f} {ratio:>9s}  {note}", flush=True)

    runs, flops, seconds = counted(lambda: EdgeRuns.prepare(model, pairs))
    prepare_flops = flops
    row("EdgeRuns.prepare", flops, seconds, "baseline, clean and corrupt sender outputs (shared below)")
    scores, flops, seconds = counted(lambda: graph.edge_scores(model, pairs, "eap", engine=args.engine))
    row("eap", flops, seconds, "alone: its own corrupt run, its clean gradient pass records the clean run")
    ig, flops, seconds = counted(lambda: graph.edge_scores(model, pairs, "eap-ig-inputs", steps=5, engine=args.engine,
                                                            runs=runs))
    row("eap-ig-inputs (5 steps)", flops, seconds, "given the shared runs")
    _, flops, seconds = counted(lambda: graph.edge_scores(model, pairs, "eap-ig-inputs", steps=5, engine=args.engine))
    row("eap-ig-inputs (5 steps), alone", flops, seconds, "its first step's forward (the corrupt run) is also the corrupt recording")
    curve, flops, seconds = counted(lambda: graph.faithfulness_curve(model, pairs, ig, engine=args.engine, runs=runs))
    row("faithfulness curve (10 sizes)", flops, seconds, f"given the shared runs; alone {(flops + prepare_flops) / forward_flops:.2f}; "
        f"CPR {curve.attrs['cpr']:.3f}, CMD {curve.attrs['cmd']:.3f}")
    f = curve.sel(metric="faithfulness").values
    print("curve f:", " ".join(f"{v:.2f}" for v in f), "| n_edges:", [int(n) for n in curve.coords["n_edges"].values])
    if args.exact_edges == 0:
        return
    generator = torch.Generator().manual_seed(0)
    edges = runs.graph.exists.nonzero()
    sample = edges[torch.randperm(len(edges), generator=generator)[: args.exact_edges]]
    (_, cost), flops, seconds = counted(lambda: removal_logit_diffs(runs, sample))
    n = len(sample)
    row(f"exact, {n} removals (resumed)", flops, seconds,
        f"{cost.forward_equivalents / n:.3f} layer-token forwards per edge (naive 1): ratio {cost.ratio:.3f}")


if __name__ == "__main__":
    main()

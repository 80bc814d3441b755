"""How good are attribution estimates on SmolLM2 IOI, and what do they cost?

For each sweep, the exact effects come from the batched engine; each method's estimates are
compared by Spearman rank correlation (signed change in logit difference, and its magnitude) and
top-10 recall (of the 10 largest exact |changes|, how many are in the method's top 10).
AtP* = the softmax recomputation for q/k sites (identical to AtP elsewhere), plus GradDrop, which
ranks by its magnitude (so it has no signed correlation).

    python benchmarks/attribution.py [--prompts 8]
"""
from __future__ import annotations

import argparse
import time

import numpy as np

import actpatch as ap

SWEEPS = {
    "head (all layers, all positions)": dict(site="head"),
    "resid_pre (layer × position)": dict(site="resid_pre"),
    "k (all layers, S2 and END)": dict(site="k", positions=["S2", "END"]),
}
METHODS = {
    "AtP": dict(method="atp"),
    "AtP* (softmax fix only)": dict(method="atp*"),
    "AtP* (with GradDrop)": dict(method="atp*", graddrop=True),
    "IG (5 steps)": dict(method="ig", steps=5),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=8)
    args = parser.parse_args()
    model = ap.load_model()
    pairs = ap.ioi_pairs(model, n=args.prompts)
    ap.hooks.last_logits(model, pairs.corrupt)  # warm-up
    start = time.perf_counter()
    ap.hooks.last_logits(model, pairs.corrupt)
    forward_seconds = time.perf_counter() - start
    print(f"SmolLM2-135M-Instruct, {len(pairs)} IOI prompts × {pairs.seq_len} tokens, denoising; one forward {forward_seconds:.2f} s\n")
    for title, sweep in SWEEPS.items():
        start = time.perf_counter()
        exact = ap.sweep(model, pairs, **sweep)
        exact_seconds = time.perf_counter() - start
        base = exact.attrs["baseline_corrupt"]["logit_diff"]
        exact_change = (exact.sel(metric="logit_diff") - base).values.ravel()
        print(f"### {title}: {exact.attrs['cost']['patches']} patches; exact (batched) {exact_seconds:.1f} s, "
              f"{exact.attrs['cost']['forward_equivalents']:.0f} forward equivalents")
        print("| method | Spearman (signed) | Spearman (magnitude) | top-10 recall | forward equivalents | wall time |")
        print("|---|---|---|---|---|---|")
        for name, options in METHODS.items():
            start = time.perf_counter()
            estimate = ap.attribute(model, pairs, **sweep, **options)
            seconds = time.perf_counter() - start
            change = (estimate.sel(metric="logit_diff") - base).values.ravel()
            magnitude = (estimate.sel(metric="abs_logit_diff_change_graddrop").values.ravel()
                         if "abs_logit_diff_change_graddrop" in estimate.metric else np.abs(change))
            signed = "—" if options.get("graddrop") else f"{_spearman(change, exact_change):.3f}"
            print(f"| {name} | {signed} | {_spearman(magnitude, np.abs(exact_change)):.3f} | "
                  f"{_recall(magnitude, np.abs(exact_change)):.1f} | {estimate.attrs['cost']['forward_equivalents']} | {seconds:.1f} s |")
        print()


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ranks_a, ranks_b = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    return float(np.corrcoef(ranks_a, ranks_b)[0, 1])


def _recall(estimate: np.ndarray, exact: np.ndarray, k: int = 10) -> float:
    return len(set(np.argsort(-estimate)[:k]) & set(np.argsort(-exact)[:k])) / k


if __name__ == "__main__":
    main()

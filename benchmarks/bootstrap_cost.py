"""What do bootstrap intervals cost next to the sweep they are put on?

The README's sweep (`actpatch demo`'s: SmolLM2-135M-Instruct, `ap.ioi_pairs(model, n=8)`,
`resid_pre` at every layer × position, denoising) is timed three ways, alternating, each
`--repeats` times after one warm-up forward:

    plain      ap.sweep(model, pairs, "resid_pre")
    with ci    ap.sweep(model, pairs, "resid_pre", ci=ap.Bootstrap(0.95, n_boot=1000))
    bootstrap  stats.intervals(rows, ci=ap.Bootstrap(n_boot=1000)) on the per-prompt rows alone

The bootstrap's own share is `bootstrap / plain` (the issue's bar: at most 5 %); `with ci / plain`
is the end-to-end ratio, which on a busy machine also carries the sweeps' own spread (printed).
Both sweeps run the same forwards (`attrs["cost"]` is compared), so the ratio is the bootstrap's.

    python benchmarks/bootstrap_cost.py [--prompts 8] [--n-boot 1000] [--repeats 2]
"""
from __future__ import annotations

import argparse
import statistics
import time

import actpatch as ap
from actpatch import stats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8, help="IOI prompt pairs (actpatch demo's default: 8)")
    parser.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs of each")
    args = parser.parse_args()

    model = ap.load_model()
    pairs = ap.ioi_pairs(model, n=args.prompts)
    ap.hooks.last_logits(model, pairs.clean)  # warm-up
    times: dict[str, list[float]] = {"plain": [], "with ci": [], "bootstrap": []}
    costs = {}
    for _ in range(args.repeats):
        started = time.perf_counter()
        plain = ap.sweep(model, pairs, "resid_pre", progress=False)
        times["plain"].append(time.perf_counter() - started)
        started = time.perf_counter()
        bounded = ap.sweep(model, pairs, "resid_pre", ci=ap.Bootstrap(n_boot=args.n_boot), progress=False)
        times["with ci"].append(time.perf_counter() - started)
        rows = ap.sweep(model, pairs, "resid_pre", per_prompt=True, progress=False)
        started = time.perf_counter()
        stats.intervals(rows, ci=ap.Bootstrap(n_boot=args.n_boot))
        times["bootstrap"].append(time.perf_counter() - started)
        costs = {name: result.attrs["cost"]["forward_equivalents"] for name, result in
                 (("plain", plain), ("with ci", bounded), ("per-prompt", rows))}
    sites = plain.sizes["layer"] * plain.sizes["pos"]
    print(f"{model.name}: resid_pre, {sites} sites, {len(pairs)} prompts, n_boot={args.n_boot}, {args.repeats} repeats")
    print(f"forward equivalents: {costs} (the same work: the bootstrap adds no forward)")
    for name, seconds in times.items():
        print(f"  {name:>9}: median {statistics.median(seconds):8.3f} s   runs {', '.join(f'{s:.3f}' for s in seconds)}")
    plain_median = statistics.median(times["plain"])
    print(f"bootstrap / plain sweep: {100 * statistics.median(times['bootstrap']) / plain_median:.2f} %")
    print(f"sweep with ci / plain sweep: {statistics.median(times['with ci']) / plain_median:.3f} "
          f"(plain runs spread {100 * (max(times['plain']) - min(times['plain'])) / plain_median:.1f} % of their median)")


if __name__ == "__main__":
    main()

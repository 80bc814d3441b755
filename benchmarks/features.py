"""Feature patching on the embedded model with its dictionary: batched vs one patch per forward.

    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/features.py [--prompts 4] [--positions END]

Sweeps every latent of `ap.embedded_dictionary(model)` active (in either run) at the given
positions of IOI pairs, denoising, once with the batched engine and once with the reference
engine (one patch per plain forward); checks they give the same numbers and prints both wall
times, the ratio, and each in forward-equivalents (one plain forward of the corrupt prompts).
Then `ap.attribute` over the same latents and its cost in forward-equivalents. The dictionary is
trained first if it is not cached (not timed here: see dictionary_quality.py).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import actpatch as ap


def timed(call):
    start = time.perf_counter()
    value = call()
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=4)
    parser.add_argument("--positions", nargs="+", default=["END"])
    args = parser.parse_args()
    model = ap.load_model()
    sae = ap.embedded_dictionary(model)
    pairs = ap.ioi_pairs(model, n=args.prompts)
    model.last_logits(pairs.corrupt)  # warm-up
    forward = min(timed(lambda: model.last_logits(pairs.corrupt))[1] for _ in range(3))
    common = {
        "dictionary": sae,
        "latents": "active",
        "positions": args.positions,
        "progress": False,
    }
    batched, t_batched = timed(lambda: ap.sweep(model, pairs, "feature", **common))
    reference, t_reference = timed(
        lambda: ap.sweep(model, pairs, "feature", engine="reference", **common)
    )
    estimate, t_attr = timed(lambda: ap.attribute(model, pairs, "feature", **common))
    a = batched.sel(metric="logit_diff").values
    b = reference.sel(metric="logit_diff").values
    n_patches = int(np.isfinite(a).sum())
    rows = [
        ("batched engine", t_batched),
        ("reference engine (one patch per forward)", t_reference),
        ("attribution (AtP)", t_attr),
    ]
    print(
        f"{sae.name}, {sae.n_latents} latents (k={sae.k}); {args.prompts} IOI pairs; positions "
        f"{args.positions}; {batched.sizes['latent']} active latents, {n_patches} patches"
    )
    print(
        f"largest |batched − reference| in logit_diff: {float(np.nanmax(np.abs(a - b))):.2e}"
    )
    print(f"one plain forward: {forward * 1e3:.0f} ms\n")
    print("| run | wall (s) | forward-equivalents |")
    print("|---|---|---|")
    for name, seconds in rows:
        print(f"| {name} | {seconds:.1f} | {seconds / forward:.0f} |")
    print(f"\nreference / batched: {t_reference / t_batched:.1f}x")
    assert estimate.sizes["latent"] == batched.sizes["latent"]


if __name__ == "__main__":
    main()

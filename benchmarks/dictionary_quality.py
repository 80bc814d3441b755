"""How good the embedded model's dictionary is, on text and IOI pairs it was not trained on.

    OMP_NUM_THREADS=2 PYTHONPATH=src python benchmarks/dictionary_quality.py [--rows 16]

Prints (and writes as JSON with --out) what docs/features.md quotes:
  - fraction of variance explained at resid_post of its layer, positions 1.. of held-out rows of
    the Python reference (position 0, the attention sink, is neither trained on nor spliced);
  - L0 (latents non-zero per token) and latents that never fire on those tokens;
  - the model's next-token loss on those rows, plain, with the dictionary's reconstruction
    spliced in at positions 1.., and with the site mean-ablated there (for scale);
  - the IOI logit difference (answer − wrong at the last position) on `ap.ioi_pairs(model, 32)`,
    whose seed the training prompts do not use, plain and spliced.
Trains the dictionary first if it is not cached yet (and reports that wall time).
"""

from __future__ import annotations

import argparse
import json
import time

import torch

import actpatch as ap
from actpatch.embedded import Recipe, collect, held_out_tokens


def spliced(model, layer: int, replace):
    """A forward hook that rewrites resid_post of `layer` at positions 1.. with `replace(x)`."""

    def hook(module, inputs, output):
        hidden = output[0] if isinstance(output, tuple) else output
        hidden = hidden.clone()
        hidden[:, 1:] = replace(hidden[:, 1:]).to(hidden.dtype)
        return (hidden, *output[1:]) if isinstance(output, tuple) else hidden

    return model.layer(layer).register_forward_hook(hook)


def next_token_loss(model, tokens: torch.Tensor) -> float:
    """Mean cross-entropy of predicting tokens 2.. (every prediction made at a spliced position)."""
    total, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(tokens), 8):
            rows = tokens[start : start + 8]
            logits = model.hf(rows, use_cache=False).logits[:, 1:-1].float()
            loss = torch.nn.functional.cross_entropy(
                logits.reshape(-1, logits.shape[-1]),
                rows[:, 2:].reshape(-1),
                reduction="sum",
            )
            total, count = total + float(loss), count + rows[:, 2:].numel()
    return total / count


def logit_diff(model, pairs) -> float:
    with torch.no_grad():
        logits = model.hf(pairs.clean, use_cache=False).logits[:, -1].float()
    rows = torch.arange(len(logits))
    return float((logits[rows, pairs.answers] - logits[rows, pairs.wrong]).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--rows", type=int, default=16, help="held-out rows of 128 tokens"
    )
    parser.add_argument("--out", help="write the numbers here as JSON")
    args = parser.parse_args()
    model = ap.load_model()
    recipe = Recipe()
    started = time.perf_counter()
    sae = ap.embedded_dictionary(model, recipe=recipe)
    numbers: dict[str, float | int | str] = {
        "dictionary": sae.name,
        "n_latents": sae.n_latents,
        "k": sae.k,
        "embedded_dictionary_s": round(time.perf_counter() - started, 1),
    }
    tokens = held_out_tokens(model, recipe, args.rows)
    acts = collect(model, tokens, recipe.layer)
    latents = sae.encode(acts)
    error = (acts - sae.reconstruct(acts)).pow(2).sum()
    numbers.update(
        held_out_tokens=int(acts.shape[0]),
        fve=round(1 - float(error / (acts - acts.mean(0)).pow(2).sum()), 4),
        l0=round(float((latents > 0).sum(-1).float().mean()), 2),
        never_fire=int(((latents > 0).sum(0) == 0).sum()),
    )
    mean = acts.mean(0)
    numbers["loss_plain"] = round(next_token_loss(model, tokens), 4)
    handle = spliced(model, recipe.layer, sae.reconstruct)
    try:
        numbers["loss_spliced"] = round(next_token_loss(model, tokens), 4)
    finally:
        handle.remove()
    handle = spliced(model, recipe.layer, lambda x: mean.expand_as(x))
    try:
        numbers["loss_mean_ablated"] = round(next_token_loss(model, tokens), 4)
    finally:
        handle.remove()
    pairs = ap.ioi_pairs(model, 32)
    numbers["ioi_logit_diff_plain"] = round(logit_diff(model, pairs), 4)
    handle = spliced(model, recipe.layer, sae.reconstruct)
    try:
        numbers["ioi_logit_diff_spliced"] = round(logit_diff(model, pairs), 4)
    finally:
        handle.remove()
    print(json.dumps(numbers, indent=2))
    if args.out:
        with open(args.out, "w", encoding="utf-8") as file:
            json.dump(numbers, file, indent=2)


if __name__ == "__main__":
    main()

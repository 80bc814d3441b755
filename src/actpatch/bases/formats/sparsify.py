"""EleutherAI sparsify folders: `cfg.json` + `sae.safetensors` (`SparseCoder.save_to_disk`).

The folder is named by its hook point, an HF module path under the base model (`layers.12`,
`layers.12.mlp`). Weights: encoder.weight (num_latents, d_in) and encoder.bias, W_dec
(num_latents, d_in), b_dec (d_in,), and W_skip (d_in, d_in) with a skip connection. Latents are
the k largest of ReLU(encoder(x − b_dec)) (a transcoder does not subtract b_dec); a transcoder
reads its module's input and writes its output.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from actpatch.bases.dictionary import DictionaryError
from actpatch.bases.formats.files import json_file, needed, tensors
from actpatch.bases.hookpoints import Hook

CONFIG, WEIGHTS = "cfg.json", "sae.safetensors"


def matches(folder: Path) -> bool:
    return (folder / CONFIG).is_file() and (folder / WEIGHTS).is_file()


def read(folder: Path) -> tuple[dict[str, Any], Hook, Hook]:
    """Dictionary fields, and the hook points it reads and writes."""
    cfg = json_file(folder / CONFIG)
    if cfg.get("activation", "topk") != "topk":
        raise DictionaryError(
            f"{folder / CONFIG}: sparsify activation {cfg.get('activation')!r} is not supported "
            "(only topk)"
        )
    if cfg.get("signed"):
        raise DictionaryError(f"{folder / CONFIG}: signed sparsify latents are not supported")
    weights = tensors(folder / WEIGHTS)
    needed(weights, ("encoder.weight", "encoder.bias", "W_dec", "b_dec"), folder / WEIGHTS)
    transcode = bool(cfg.get("transcode", False))
    fields: dict[str, Any] = {
        "W_enc": weights["encoder.weight"].T,
        "b_enc": weights["encoder.bias"],
        "W_dec": weights["W_dec"],
        "b_dec": weights["b_dec"],
        "activation": "topk",
        "k": cfg.get("k"),
    }
    if not transcode:
        fields["input_bias"] = weights["b_dec"]
    if "W_skip" in weights:
        fields["W_skip"] = weights["W_skip"].T  # applied as x @ W_skip.T
    path = folder.name
    if transcode:
        return fields, Hook(path, "input"), Hook(path, "output")
    return fields, Hook(path, "output"), Hook(path, "output")

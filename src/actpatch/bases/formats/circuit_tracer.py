"""circuit-tracer transcoder sets: `config.yaml` + one `layer_{i}.safetensors` per layer.

config.yaml: `model_kind` (only `transcoder_set`, per-layer transcoders, is supported),
`feature_input_hook` and `feature_output_hook` (TransformerLens names without `blocks.L.`, e.g.
`hook_resid_mid`, `ln2.hook_normalized`, `hook_mlp_out`), optional `activation` (relu, topk) and
`k`, and optional `transcoders` (the layer files, in layer order). A layer file holds W_enc and
W_dec (d_transcoder, d_model), b_enc, b_dec, `activation_function.threshold` for JumpReLU, a `k`
tensor for TopK, and W_skip (d_model, d_model), applied as x @ W_skip.T.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from actpatch.bases.dictionary import DictionaryError
from actpatch.bases.formats.files import needed, tensors
from actpatch.bases.hookpoints import Hook

CONFIG = "config.yaml"


def matches(folder: Path) -> bool:
    return (folder / CONFIG).is_file()


def layers(folder: Path) -> dict[int, Path]:
    """Each layer's file, by layer."""
    cfg = _config(folder)
    if "transcoders" in cfg:
        paths = [str(p) for p in cfg["transcoders"]]
        if remote := [p for p in paths if "://" in p]:
            raise DictionaryError(
                f"{folder / CONFIG} lists files to download ({remote[0]}, ...); nothing is "
                "downloaded here: fetch them and list local paths, or name them layer_N.safetensors"
            )
        return {i: (folder / p) for i, p in enumerate(paths)}
    found = {
        int(m[1]): p
        for p in folder.iterdir()
        if (m := re.fullmatch(r"layer_(\d+)\.safetensors", p.name))
    }
    if not found:
        raise DictionaryError(
            f"{folder}: config.yaml lists no transcoders and there are no layer_N.safetensors files"
        )
    return found


def read(folder: Path, layer: int) -> tuple[dict[str, Any], Hook, Hook]:
    """Layer `layer`'s transcoder: Dictionary fields, and the hook points it reads and writes."""
    cfg = _config(folder)
    path = layers(folder)[layer]
    weights = tensors(path)
    needed(weights, ("W_enc", "W_dec", "b_enc", "b_dec"), path)
    activation = cfg.get("activation")
    fields: dict[str, Any] = {
        "W_enc": weights["W_enc"].T,
        "W_dec": weights["W_dec"],
        "b_enc": weights["b_enc"],
        "b_dec": weights["b_dec"],
    }
    if activation == "topk" or "k" in weights:
        fields.update(activation="topk", k=int(cfg.get("k") or weights["k"].item()))
    elif activation in (None, "jumprelu") and "activation_function.threshold" in weights:
        fields.update(activation="jumprelu", threshold=weights["activation_function.threshold"])
    elif activation not in (None, "relu"):
        raise DictionaryError(
            f"{folder / CONFIG}: activation {activation!r} is not supported (relu, jumprelu, topk)"
        )
    if "W_skip" in weights:
        fields["W_skip"] = weights["W_skip"].T
    hooks = [
        Hook(f"blocks.{layer}.{cfg[key]}") for key in ("feature_input_hook", "feature_output_hook")
    ]
    return fields, hooks[0], hooks[1]


def _config(folder: Path) -> dict[str, Any]:
    import yaml  # a dependency of transformers; read only here

    try:
        cfg = yaml.safe_load((folder / CONFIG).read_text())
    except (OSError, yaml.YAMLError) as error:
        raise DictionaryError(f"{folder / CONFIG} is not readable YAML ({error})") from None
    if not isinstance(cfg, dict):
        raise DictionaryError(f"{folder / CONFIG} holds no settings")
    kind = cfg.get("model_kind", "transcoder_set")
    if kind != "transcoder_set":
        raise DictionaryError(
            f"{folder / CONFIG}: model_kind {kind!r} is not supported yet; per-layer transcoder "
            "sets (transcoder_set) are (cross-layer transcoders write every later MLP output)"
        )
    for key in ("feature_input_hook", "feature_output_hook"):
        if not isinstance(cfg.get(key), str):
            raise DictionaryError(
                f"{folder / CONFIG} lacks {key} (e.g. hook_resid_mid, hook_mlp_out)"
            )
    return cfg

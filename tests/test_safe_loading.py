"""Weights are read only by safetensors and GGUF readers, and a cached conversion is checked against
its manifest on every load.

Unpickling a checkpoint can run arbitrary code, so no module of ours may call a pickle reader, and
`load_hf` asks transformers for safetensors only. The default model's cache is exercised here with
a stand-in conversion (a tiny LLaMA saved as the "converted" model), so the rebuild decisions are
checked in seconds; test_load.py runs the real SmolLM2 conversion."""

from __future__ import annotations

import io
import logging
import os
import pickle
import re
import tokenize
from pathlib import Path

import pytest
import torch

import actpatch as ap
from actpatch.models import cache, load
from tiny import tiny_model

SOURCE = Path(ap.__file__).parent
# A pickle reader anywhere in our code: torch.load (any spelling), the pickle family, joblib, and
# numpy's load with allow_pickle. Matched on code with comments and strings removed, so the
# messages that name these formats to refuse them do not count.
UNSAFE = re.compile(
    r"\btorch\s*\.\s*load\s*\(|\bfrom\s+torch\s+import\s+[^\n]*\bload\b|\b(c?pickle|cloudpickle|dill|joblib|_pickle)\b"
    r"|\bweights_only\s*=\s*False|\ballow_pickle\s*=\s*True"
)


def _code_only(text: str) -> str:
    """`text` with comments and string literals blanked out, lines kept."""
    kept = []
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type in (tokenize.COMMENT, tokenize.STRING):
            continue
        kept.append(token.string)
        if token.type in (tokenize.NEWLINE, tokenize.NL):
            kept.append("")
    return " ".join(kept)


def _unsafe_uses(text: str) -> list[str]:
    return UNSAFE.findall(_code_only(text))


# MIB's causal-variable files are torch.save files, so reading them takes torch.load; only with
# weights_only=True, PyTorch's restricted unpickler (tensors and plain containers, no code).
RESTRICTED_READERS = {"subspace/mib.py"}


def test_no_module_of_ours_reads_pickles():
    files = sorted(SOURCE.rglob("*.py"))
    assert len(files) > 20  # the scan really walks the package
    found = {
        str(path.relative_to(SOURCE)): uses
        for path in files
        if (uses := _unsafe_uses(path.read_text(encoding="utf-8")))
    }
    assert found.keys() <= RESTRICTED_READERS, found
    for name in RESTRICTED_READERS:
        calls = re.findall(r"torch\.load\(([^)]*)\)", (SOURCE / name).read_text(encoding="utf-8"))
        assert calls and all("weights_only=True" in call for call in calls), (name, calls)


@pytest.mark.parametrize(
    "code",
    [
        "state = torch.load(path)",
        "state = torch.load(path, weights_only=False)",
        "from torch import load as read",
        "import pickle",
        "import cloudpickle as cp",
        "values = np.load(path, allow_pickle=True)",
    ],
)
def test_the_scan_finds_each_unsafe_reader(code):
    assert _unsafe_uses(code + "\n")


def test_the_scan_ignores_words_in_strings_and_comments():
    assert (
        _unsafe_uses('message = "pickle files (torch.load) can run code"  # never pickle\n') == []
    )


def test_a_pickled_checkpoint_is_refused_without_being_read(tmp_path, monkeypatch):
    folder = tmp_path / "pickled"
    tiny_model("llama").hf.config.save_pretrained(folder)
    torch.save(tiny_model("llama").hf.state_dict(), folder / "pytorch_model.bin")
    reads: list[str] = []
    monkeypatch.setattr(torch, "load", lambda *a, **k: reads.append("torch.load"))
    monkeypatch.setattr(pickle, "load", lambda *a, **k: reads.append("pickle.load"))
    monkeypatch.setattr(pickle, "Unpickler", lambda *a, **k: reads.append("Unpickler"))
    with pytest.raises(
        ap.CorruptCheckpoint, match=r"pickle files \(pytorch_model\.bin\), which can run code"
    ):
        ap.load_model(folder)
    assert reads == []


# --- the default model's cache, with a stand-in conversion ----------------------------------


@pytest.fixture
def fake_default(tmp_path, monkeypatch):
    """The default-model cache in a temporary folder, 'converted' from a stand-in GGUF file by
    saving the tiny LLaMA; returns the list of conversions made."""
    gguf = tmp_path / "stand-in.gguf"
    gguf.write_bytes(b"GGUF stand-in")
    monkeypatch.setenv("ACTPATCH_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cache, "default_gguf", lambda: gguf)
    conversions: list[Path] = []

    def convert(source: Path, into: Path) -> None:
        conversions.append(into)
        tiny_model("llama").hf.save_pretrained(into)

    monkeypatch.setattr(cache, "_convert", convert)
    return conversions


def _flip_bytes(path: Path) -> None:
    """Change four bytes deep in the file, keeping its size: only a hash notices."""
    with open(path, "r+b") as file:
        file.seek(path.stat().st_size // 2)
        chunk = file.read(4)
        file.seek(-4, os.SEEK_CUR)
        file.write(bytes(b ^ 0xFF for b in chunk))


def test_a_tampered_cache_is_detected_and_rebuilt(fake_default, caplog):
    ap.load_model()
    checkpoint = cache.cache_root() / "smollm2-135m-instruct"
    assert len(fake_default) == 1 and cache.files_problem(checkpoint) is None
    _flip_bytes(checkpoint / "model.safetensors")
    assert "model.safetensors does not match its sha256" in cache.files_problem(checkpoint)
    with caplog.at_level(logging.WARNING, logger=cache.__name__):
        again = ap.load_model()
    assert len(fake_default) == 2
    assert (
        "Rebuilding the cached default model" in caplog.text
        and "does not match its sha256" in caplog.text
    )
    assert cache.files_problem(checkpoint) is None
    # Compared with the model that was saved, not with `first`: safetensors are memory-mapped, so
    # the flipped bytes reach the tensors of a model loaded before the tampering too.
    for want, got in zip(tiny_model("llama").hf.parameters(), again.hf.parameters()):
        assert torch.equal(want, got)


def test_a_truncated_cache_is_detected_and_rebuilt(fake_default, caplog):
    ap.load_model()
    weights = cache.cache_root() / "smollm2-135m-instruct" / "model.safetensors"
    with open(weights, "r+b") as file:
        file.truncate(weights.stat().st_size // 3)
    with caplog.at_level(logging.WARNING, logger=cache.__name__):
        ap.load_model()
    assert (
        len(fake_default) == 2
        and "model.safetensors has the wrong size (truncated or replaced)" in caplog.text
    )


def test_the_cache_passed_by_path_is_refused_when_tampered(fake_default):
    """A folder given by path is its owner's: it is checked against its manifest, never rebuilt."""
    ap.load_model()
    checkpoint = cache.cache_root() / "smollm2-135m-instruct"
    assert ap.load_model(checkpoint).provenance["source"] == str(checkpoint)
    _flip_bytes(checkpoint / "model.safetensors")
    with pytest.raises(
        ap.CorruptCheckpoint,
        match=r"does not match its manifest\.json: model\.safetensors does not match its sha256",
    ):
        ap.load_model(checkpoint)
    assert len(fake_default) == 1


def test_weights_are_asked_for_as_safetensors(tmp_path, monkeypatch):
    """Every from_pretrained call of load_hf passes use_safetensors=True (GGUF files take their own reader)."""
    folder = tmp_path / "tiny"
    tiny_model("llama").hf.save_pretrained(folder)
    calls = []
    real = load.AutoModelForCausalLM.from_pretrained
    monkeypatch.setattr(
        load.AutoModelForCausalLM,
        "from_pretrained",
        lambda *a, **k: (calls.append(k), real(*a, **k))[1],
    )
    ap.load_model(folder)
    assert calls and all(call.get("use_safetensors") is True for call in calls)

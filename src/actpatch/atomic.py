"""Files that appear whole or not at all: results, reports, images and checkpoints.

A run killed while writing must not leave a half-written file under the name a later run (or a
reader) trusts. Every writer here writes to a temporary name in the destination's folder, then
renames it into place with `os.replace`, which is atomic within one file system."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path

TEMPORARY_SUFFIX = ".part"  # what a write in progress is called; a reader skips such files


def write_atomically(
    path: str | os.PathLike, write: Callable[[Path], None], *, durable: bool = False
) -> Path:
    """Call `write(temporary_path)`, then move the file to `path`; return `path`.

    `durable=True` also flushes the file to disk before the rename, so that a power cut (not only a
    killed process) leaves the old file or the new one: worth it for checkpoints, which exist to
    survive failures."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        dir=path.parent, prefix=f".{path.name}.", suffix=TEMPORARY_SUFFIX, delete=False
    ) as handle:
        temporary = Path(handle.name)
    try:
        write(temporary)
        # A temporary file is private (0600); the finished one gets the mode any new file would,
        # so that a report or result can be shared like every other file the user writes.
        os.chmod(temporary, 0o666 & ~_umask())
        if durable:
            with open(temporary, "rb+") as written:
                os.fsync(written.fileno())
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike, text: str, *, durable: bool = False) -> Path:
    """`Path.write_text` (UTF-8), atomically."""
    return write_atomically(
        path, lambda temporary: temporary.write_text(text, encoding="utf-8"), durable=durable
    )

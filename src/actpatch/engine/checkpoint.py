"""Checkpoints of a long sweep: every finished chunk's rows on disk, so that a killed run resumes.

The batched engine reduces each chunk of patched runs to metric rows as it goes; with a
checkpoint, it also appends those rows to a folder, one small file per chunk, each written under a
temporary name and renamed into place (`actpatch.atomic`), so that a run killed at any instant
leaves only whole files. A later run of the *same* sweep loads them and patches only the rest.

"The same sweep" is decided by a fingerprint of everything the rows depend on: the model (its
provenance and a sample of its weights), the prompts' token ids, answers, named positions and input
noise, the list of sites, the weights of any dictionary or subspace they patch in, the direction, the ablation, what a row holds (averaged or per-prompt
metrics) and the package versions. A folder written for another sweep is refused with
`CheckpointMismatch`, which names what differs: rows of another sweep must never be mixed in.

Layout of a checkpoint folder:

    plan.json            the fingerprint, written first
    chunk-000001.json    {"rows": {"<site index>": row, ...}}, one file per finished chunk
    ...

Not this module's job: deciding chunks, or which engines checkpoint (the reference engine does not:
each of its patches is a full forward, and it exists to be plain)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from actpatch import atomic, results
from actpatch.engine.plan import SweepPlan
from actpatch.models.model import Model, weights_fingerprint
from actpatch.pairs import PromptPairs

log = logging.getLogger(__name__)

PLAN_FILE = "plan.json"
CHUNK_PREFIX = "chunk-"


class CheckpointMismatch(ValueError):
    """The checkpoint folder holds rows of another sweep than the one asked for."""


class Checkpoint:
    """A folder of finished rows for one sweep plan; `load()` what is there, `append()` each chunk."""

    def __init__(self, folder: str | os.PathLike, fingerprint: Mapping[str, str]):
        self.folder = Path(folder)
        self.fingerprint = dict(fingerprint)
        self._next = 1 + max((_chunk_number(p) for p in self._chunk_files()), default=0)

    @classmethod
    def open(cls, folder: str | os.PathLike, fingerprint: Mapping[str, str]) -> Checkpoint:
        """The checkpoint in `folder`, created if absent; raises `CheckpointMismatch` if the folder
        belongs to a sweep with another fingerprint."""
        folder = Path(folder)
        plan_file = folder / PLAN_FILE
        if plan_file.is_file():
            stored = json.loads(plan_file.read_text(encoding="utf-8"))
            if differing := [
                k
                for k in sorted(set(stored) | set(fingerprint))
                if stored.get(k) != fingerprint.get(k)
            ]:
                raise CheckpointMismatch(
                    f"the checkpoint in {folder} was written by another sweep (differing: {', '.join(differing)}); "
                    "resume it with the same model, prompts and sweep arguments, or delete the folder (or pass "
                    "another one) to start over"
                )
        elif folder.exists() and any(folder.iterdir()):
            raise CheckpointMismatch(
                f"{folder} is not empty and holds no {PLAN_FILE}: it is not an actpatch checkpoint; "
                "pass an empty or new folder"
            )
        else:
            atomic.write_text(
                plan_file, json.dumps(dict(fingerprint), indent=1, sort_keys=True), durable=True
            )
        return cls(folder, fingerprint)

    def load(self) -> dict[int, Any]:
        """Every finished row, by site index. Temporary files of a write that was killed are removed."""
        for leftover in self.folder.glob(f"*{atomic.TEMPORARY_SUFFIX}"):
            leftover.unlink(missing_ok=True)
        rows: dict[int, Any] = {}
        for path in self._chunk_files():
            stored = json.loads(path.read_text(encoding="utf-8"))
            rows.update((int(index), _decoded(row)) for index, row in stored["rows"].items())
        if rows:
            log.info(
                "checkpoint %s: %d finished patches loaded from %d chunk files",
                self.folder,
                len(rows),
                self._next - 1,
            )
        return rows

    def append(self, rows: Mapping[int, Any]) -> Path:
        """Write one chunk's rows as a new file, atomically and flushed to disk."""
        path = self.folder / f"{CHUNK_PREFIX}{self._next:06d}.json"
        self._next += 1
        text = json.dumps({"rows": {str(index): _encoded(row) for index, row in rows.items()}})
        return atomic.write_text(path, text, durable=True)

    def _chunk_files(self) -> list[Path]:
        return sorted(self.folder.glob(f"{CHUNK_PREFIX}*.json"), key=_chunk_number)


def fingerprint(
    model: Model, pairs: PromptPairs, the_plan: SweepPlan, *, rows: str
) -> dict[str, str]:
    """What a sweep's rows depend on, part by part (hashes for the bulky parts, so a mismatch can name
    the part that differs). `rows` says what a row holds, e.g. "metrics" or "metrics per prompt"."""
    return {
        "model": _digest(
            json.dumps(
                {
                    "name": model.name,
                    "provenance": model.provenance,
                    "class": type(model.hf).__name__,
                },
                sort_keys=True,
                default=str,
            ),
            weights_fingerprint(model),
        ),
        "prompts": _pairs_digest(pairs),
        "sites": _digest("\n".join(str(s) for s in the_plan.sites)),
        "bases": _bases_digest(the_plan.sites),
        "direction": the_plan.direction,
        "ablation": the_plan.ablation or "none",
        "reference prompts": _pairs_digest(the_plan.mean_over)
        if the_plan.mean_over is not None
        else "none",
        "rows": rows,
        "versions": json.dumps(results.versions(), sort_keys=True),
    }


def _pairs_digest(pairs: PromptPairs) -> str:
    parts: list[Any] = [pairs.clean, pairs.corrupt, pairs.answers, pairs.wrong]
    for name in sorted(pairs.positions):
        parts += [name, pairs.positions[name]]
    parts.append(pairs.corrupt_noise if pairs.corrupt_noise is not None else "no noise")
    return _digest(*parts)


def _bases_digest(sites: Any) -> str:
    """What the feature sites' bases compute: a site names its basis only by `name`, and two
    dictionaries of one name (a retrained SAE, another learned subspace) give other rows. Read
    through the `Basis` protocol alone: its decoder, and what it makes of a fixed random probe
    (the encoding reaches encoder, biases and thresholds; the reconstruction a skip connection)."""
    bases = {id(s.basis): s.basis for s in sites if s.basis is not None}
    if not bases:
        return "none"
    parts: list[Any] = []
    for basis in sorted(bases.values(), key=lambda b: (b.name, b.layer)):
        probe = torch.randn(16, basis.d_in, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            decoder = basis.decoder()
            probe = probe.to(decoder.device, decoder.dtype)
            parts += [basis.name, basis.layer, basis.reads, basis.writes, decoder]
            parts += [basis.encode(probe), basis.reconstruct(probe)]
    return _digest(*parts)


def _digest(*parts: Any) -> str:
    digest = hashlib.sha256()
    for part in parts:
        if isinstance(part, torch.Tensor):
            digest.update(f"{tuple(part.shape)}:{part.dtype}".encode())
            digest.update(
                part.detach()
                .to("cpu", torch.float64 if part.is_floating_point() else torch.int64)
                .numpy()
                .tobytes()
            )
        else:
            digest.update(str(part).encode())
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def _chunk_number(path: Path) -> int:
    return int(path.stem.removeprefix(CHUNK_PREFIX))


# Rows are floats, dicts of floats, or dicts of per-prompt numpy arrays. JSON writes a float as the
# shortest text that reads back to the same double, so rows round-trip bit for bit.
def _encoded(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _encoded(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return {"ndarray": value.tolist(), "dtype": str(value.dtype)}
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor):
        return _encoded(value.detach().cpu().numpy())
    return value


def _decoded(value: Any) -> Any:
    if isinstance(value, dict):
        if set(value) == {"ndarray", "dtype"}:
            return np.array(value["ndarray"], dtype=value["dtype"])
        return {k: _decoded(v) for k, v in value.items()}
    return value

"""Time and peak memory of one benchmark step inside a worker process (standard library only).

Shared by sweep_peers.py's workers and _transformerlens_worker.py, which runs in another virtual
environment. Peak memory is the kernel's own high-water mark (VmHWM), reset to the current RSS just
before the step (`/proc/self/clear_refs`, Linux ≥ 4.0), so loading the model never counts; torch's
CPU allocations are invisible to tracemalloc, and RSS sampling misses short spikes."""
from __future__ import annotations

import ctypes
import gc
import json
import time
from contextlib import contextmanager
from typing import Iterator

MIB = 1 << 20


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _release_freed_memory() -> None:
    # Give freed heap back to the OS, so the step's peak is not hidden in memory the loader freed.
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


@contextmanager
def measured(record: dict) -> Iterator[None]:
    """Fill `record` with wall_s, rss_before_mib and peak_delta_mib (peak RSS during the block minus RSS before it)."""
    _release_freed_memory()
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")  # reset VmHWM to the current RSS
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    yield
    record["wall_s"] = time.perf_counter() - start
    record["rss_before_mib"] = before * 1024 / MIB
    record["peak_delta_mib"] = (_status_kib("VmHWM") - before) * 1024 / MIB


def write_json(path: str, payload: dict) -> None:
    with open(path, "w") as out:
        json.dump(payload, out)

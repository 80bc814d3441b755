"""The target run's layer calls and key/value cache, recorded by a forward that runs anyway.

The batched engine resumes patched copies from the target run's recorded layer calls, and cuts
the target's key/value cache at each split position (`batched.Resumer`). The baseline's own target
forward can record both: run with a growing cache, it gives the same logits bit for bit (tested on
every family), so a sweep direction saves one forward of the whole target."""

from __future__ import annotations

import inspect
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from actpatch import hooks
from actpatch.models.model import Model


@dataclass(eq=False)
class TargetRecording:
    """Each decoder layer's (args, kwargs) in one forward of the whole target from position 0, and
    that forward's key/value cache (None where it cannot be cut: sliding-window layers)."""

    calls: list[tuple[tuple, dict]]
    cache: DynamicCache | None


def cuttable_cache(hf: Any) -> DynamicCache | None:
    """An empty cache for `hf` whose layers can later be cut to a prefix (every layer a plain
    growing `DynamicLayer`), or None (a sliding window keeps only the window's keys)."""
    cache = DynamicCache(
        config=hf.config
    )  # its layers, one per decoder layer, come from the config
    return (
        cache
        if cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers)
        else None
    )


def cache_argument(hf: Any, cache: DynamicCache | None) -> dict[str, Any]:
    """The cache keyword the installed transformers takes: `cache` (5.2x on), `past_key_values` before.

    Passing the old name to a release that renamed it floods every sweep with a FutureWarning."""
    takes_cache = "cache" in inspect.signature(hf.forward).parameters
    return {"cache" if takes_cache else "past_key_values": cache}


@contextmanager
def recording(model: Model) -> Iterator[tuple[TargetRecording, dict[str, Any]]]:
    """Record the one forward of the whole target run inside the block: yields the recording (its
    calls fill in as the forward runs) and the keyword arguments that forward must be called with."""
    cache = cuttable_cache(model.hf)
    keywords = (
        {**cache_argument(model.hf, cache), "use_cache": True}
        if cache is not None
        else {"use_cache": False}
    )
    with hooks.layer_inputs(model) as calls:
        yield TargetRecording(calls, cache), keywords

"""Runs recorded for forwards resumed at a layer: each decoder layer's call as the model built it,
and key/value caches cut at a position.

A forward resumed at layer l (`forward.forward(..., layer=l, recorded=...)`) calls the real layers
from l on with a recorded run's arguments. A run split at position p is the key/value cache of its
positions < p and its layers' calls over positions >= p: a patch at position p cannot change the
positions before it (attention is causal), so those come from the cache. `Recordings` keeps one
split per position, recorded once. Where the cache's layers are plain growing ones, one forward
of the whole run records the calls from position 0 and a cache that every later split cuts
(`cuttable_cache`); the baseline's own forward can be that one (`recording`): with a growing cache
it gives the same logits bit for bit (tested on every family).
Not here: running the copies (`forward.py`), choosing where they resume (the engines).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from actpatch.hooks import attach
from actpatch.hooks.forward import Recorded, forward, layer_devices
from actpatch.models.model import Model
from actpatch.run import Run

Call = tuple[tuple, dict]


@dataclass(eq=False)
class Recording:
    """Each decoder layer's (args, kwargs) in one forward of a whole run from position 0, and that
    forward's key/value cache (None where it cannot be cut: sliding-window layers)."""

    calls: list[Call]
    cache: DynamicCache | None


def cuttable_cache(hf: Any) -> DynamicCache | None:
    """An empty cache for `hf` whose layers can later be cut to a prefix (every layer a plain
    growing `DynamicLayer`), or None (a sliding window keeps only the window's keys)."""
    cache = DynamicCache(config=hf.config)  # its layers, one per decoder layer, from the config
    plain = cache.layers and all(type(layer) is DynamicLayer for layer in cache.layers)
    return cache if plain else None


@contextmanager
def recording(model: Model) -> Iterator[tuple[Recording, DynamicCache | None]]:
    """Record the one forward of a whole run inside the block: yields the recording (its calls fill
    in as the forward runs) and the cache that forward must fill (`forward(..., cache=)`)."""
    cache = cuttable_cache(model.hf)
    with layer_inputs(model) as calls:
        yield Recording(calls, cache), cache


@contextmanager
def layer_inputs(model: Model) -> Iterator[list[Call]]:
    """Record the (args, kwargs) each decoder layer is called with during the block.

    Forwards resumed at layer l call the real layers with these arguments (attention masks,
    position embeddings, caches) instead of rebuilding them."""
    calls: list[Call] = []
    with _calls_into(model, calls):
        yield calls


def record(
    model: Model,
    run: Run,
    *,
    taps: Sequence[AbstractContextManager[Any]] = (),
    cache: DynamicCache | None = None,
) -> tuple[Recorded, Tensor]:
    """One forward of `run` under `taps` (recorded as they change it), and its final-position logits.

    `cache`: the keys and values of the positions before `run`'s (a prefix), which the forward
    starts from; the recording keeps the cache as it was given, for copies to start from."""
    calls: list[Call] = []
    replay = copy.deepcopy(cache) if cache is not None else None
    logits = forward(model, run, taps=[*taps, _calls_into(model, calls)], cache=replay)
    return Recorded(placed(model, calls), cache), logits


class Recordings:
    """`run` split at each position copies resume from, each split recorded once (`at`).

    `forwards` lists the positions each recording forward ran over, for the caller's count of
    work. The splits do not depend on which ran first, so a resumed sweep gives the uninterrupted
    one's numbers bit for bit."""

    def __init__(self, model: Model, run: Run, whole: Recording | None = None):
        """`whole`: the run's layer calls and cache from a forward that ran anyway (the baseline's);
        without it the first split records them itself."""
        self.model, self.run = model, run
        self.splits: dict[int, Recorded] = {}
        self.whole_cache: DynamicCache | bool | None = None  # False: it cannot be cut
        self.forwards: list[int] = []
        if whole is not None:
            self.whole_cache = whole.cache if whole.cache is not None else False
            self.splits[0] = Recorded(placed(model, whole.calls))

    def at(self, start: int) -> Recorded:
        """The run's cache before position `start` and its layers' calls from `start` on.

        From the whole run's cache cut to its first `start` positions where it can be cut (keys
        and values at a position do not depend on later ones), so a split costs only the forward
        over the positions after it; otherwise (sliding windows) each split runs its own prefix."""
        if start in self.splits or (self._recorded_whole() and start in self.splits):
            return self.splits[start]
        seq = self.run.tokens.shape[1]
        cache = None
        if start > 0 and (cache := self._cut_cache(start)) is None:
            cache = DynamicCache(config=self.model.hf.config)
            forward(self.model, _positions(self.run, 0, start), cache=cache)
            self.forwards.append(start)
        self.splits[start], _ = record(self.model, _positions(self.run, start, seq), cache=cache)
        self.forwards.append(seq - start)
        return self.splits[start]

    def _recorded_whole(self) -> bool:
        """Whether the run's cache can be cut (every layer a plain `DynamicLayer`). The first call
        records the whole run once with a cache: the calls from position 0 (whose cache argument
        a resumed copy replaces, as every recorded cache) and the cache later splits cut."""
        if self.whole_cache is None:
            if cuttable_cache(self.model.hf) is not None:
                with recording(self.model) as (whole, cache):
                    forward(self.model, self.run, cache=cache)
                self.forwards.append(self.run.tokens.shape[1])
                self.whole_cache = whole.cache
                self.splits.setdefault(0, Recorded(placed(self.model, whole.calls)))
            else:
                self.whole_cache = False
        return self.whole_cache is not False

    def _cut_cache(self, start: int) -> DynamicCache | None:
        """The whole run's key/value cache cut to its first `start` positions; None when it cannot
        be cut."""
        if not self._recorded_whole():
            return None
        cut = copy.deepcopy(self.whole_cache)
        for layer in cut.layers:
            layer.keys, layer.values = (
                layer.keys[..., :start, :].clone(),
                layer.values[..., :start, :].clone(),
            )
        return cut


def placed(model: Model, calls: list[Call]) -> list[Call]:
    """Calls recorded before any device hook moved them: each put where its layer computes, once."""
    return [moved(call, device) for call, device in zip(calls, layer_devices(model))]


def moved(value: Any, device: torch.device) -> Any:
    """`value` (a layer's recorded call: tensors in tuples, lists and dicts) with every tensor on
    `device`; caches are left where they are, since each cache layer lives on its own layer's device."""
    if isinstance(value, Tensor):
        return value.to(device)
    if type(value) in (tuple, list):
        return type(value)(moved(v, device) for v in value)
    if isinstance(value, dict):
        return {key: moved(v, device) for key, v in value.items()}
    return value


@contextmanager
def _calls_into(model: Model, calls: list[Call]) -> Iterator[None]:
    with ExitStack() as stack:
        for index in range(model.dims.n_layers):
            stack.enter_context(
                attach.call_hook(
                    model.layer(index), lambda args, kwargs: calls.append((args, dict(kwargs)))
                )
            )
        yield


def _positions(run: Run, start: int, stop: int) -> Run:
    """`run` over positions start .. stop − 1 (its input noise too)."""
    noise = None if run.noise is None else run.noise[:, start:stop]
    return Run(run.tokens[:, start:stop], noise, name=run.name)

"""Batched engine: the reference sweep's numbers from far less work, and no approximation.

Three savings, each exact for causal decoder models:
- *Many patches per forward*: k patched copies of the target run are stacked along the batch.
- *Layer resume*: a patch in layer l leaves layers < l as in the target run, so a copy enters the
  real decoder layers at l with the target's recorded hidden states and call arguments.
- *Key/value prefix reuse*: a patch at position p leaves every earlier position untouched
  (attention is causal), so positions < p come from the target run's key/value cache and only
  positions >= p are computed.
Only the final position is unembedded. The prefix cache and the per-layer call arguments are
those the model's own incremental forward builds, so masks (sliding windows included) and
position embeddings are never re-implemented here.
"""
from __future__ import annotations

import copy
import logging
import os
from dataclasses import dataclass
from typing import Any, Callable, Sequence

import torch
import xarray as xr
from torch import Tensor
from tqdm.auto import tqdm
from transformers import DynamicCache

from actpatch import hooks
from actpatch.engine import checks, collect, sources
from actpatch.engine.checkpoint import Checkpoint, fingerprint
from actpatch.engine.plan import Ablation, Direction, Positions, SweepPlan, plan
from actpatch.models.model import Model
from actpatch.pairs import PromptPairs
from actpatch.sites import Site

log = logging.getLogger(__name__)

DEFAULT_MEMORY_BUDGET = 1 << 30  # bytes of activations one chunk may hold; settable per sweep


# Attention functions whose masks and caches the equality tests have covered (ours is eager's wrapper).
PROVEN_ATTENTION = ("sdpa", "eager", hooks.PATTERN_ATTENTION)


def unsupported(model: Model) -> str | None:
    """Why the shortcuts here are unproven for `model` (None when they are proven): the sweep then
    falls back to the reference engine rather than risk a silently different number."""
    attention = model.hf.config._attn_implementation
    if attention not in PROVEN_ATTENTION:
        return f"attention implementation {attention!r} is not one of {PROVEN_ATTENTION}"
    devices = set(getattr(model.hf, "hf_device_map", {}).values())
    if len(devices) > 1:
        return f"the model is split over devices {sorted(map(str, devices))}"
    return None


@torch.no_grad()
def sweep(
    model: Model,
    pairs: PromptPairs,
    site: str,
    *,
    direction: Direction = "denoise",
    layers: Sequence[int] | None = None,
    positions: Positions = None,
    heads: Sequence[int] | None = None,
    neurons: Sequence[int] | None = None,
    per_prompt: bool = False,
    progress: bool | None = None,
    chunk: int | None = None,
    memory_budget: int | None = None,
    ablation: Ablation | None = None,
    reference: PromptPairs | None = None,
    check_baseline: bool = True,
    checkpoint: str | os.PathLike | None = None,
) -> xr.DataArray:
    """The reference sweep's result, computed with stacked patches, layer resume and prefix reuse.

    `chunk` fixes how many patched copies share a forward; by default it is derived from
    `memory_budget` (bytes, default 1 GiB) and the prompts' size. A chunk that runs out of memory
    (or, when both are given, is estimated over `memory_budget`) is halved and retried, keeping the
    chunks already done (docs/scale.md). `checkpoint` (a folder) keeps
    every finished chunk's rows on disk and skips those already there (`engine/checkpoint.py`)."""
    the_plan = plan(model, pairs, site, direction=direction, layers=layers, positions=positions, heads=heads,
                    neurons=neurons, ablation=ablation, reference=reference)
    if the_plan.kind == "pattern":
        with hooks.eager_attention(model):
            return _sweep(model, pairs, the_plan, per_prompt, progress, chunk, memory_budget, check_baseline, checkpoint)
    return _sweep(model, pairs, the_plan, per_prompt, progress, chunk, memory_budget, check_baseline, checkpoint)


def _sweep(model, pairs, the_plan: SweepPlan, per_prompt, progress, chunk, memory_budget, check_baseline, checkpoint) -> xr.DataArray:
    base = collect.baseline(model, pairs, check=check_baseline)
    store = None
    if checkpoint is not None:
        rows_hold = "metrics per prompt" if per_prompt else "metrics"
        store = Checkpoint.open(checkpoint, fingerprint(model, pairs, the_plan, rows=rows_hold))
    rows, self_checks, cost = patched_logits(model, pairs, the_plan, base, lambda logits: collect.row(logits, base, per_prompt=per_prompt),
                                             progress=progress, chunk=chunk, memory_budget=memory_budget, checkpoint=store)
    result = collect.finish(model, pairs, the_plan, rows, base, self_checks, engine="batched", per_prompt=per_prompt)
    result.attrs["cost"] = cost
    return result


def patched_logits(
    model: Model,
    pairs: PromptPairs,
    the_plan: SweepPlan,
    base,
    reduce: Callable[[Tensor], Any],
    *,
    progress: bool | None = None,
    chunk: int | None = None,
    memory_budget: int | None = None,
    checkpoint: Checkpoint | None = None,
) -> tuple[list[Any], dict[str, float], dict[str, Any]]:
    """`reduce(final-position logits)` for each of `the_plan.sites` (any list of one kind's sites),
    the self-check errors, and the work done. Each chunk's logits are reduced as soon as they are
    computed, so memory does not grow with the number of patches. With a `checkpoint`, rows it
    holds are not recomputed, and each finished chunk's rows are appended to it."""
    runner = _Resumer(model, the_plan.target, pairs.positions, the_plan.target_noise)

    def one_patch(values: dict[Site, Tensor]) -> Tensor:
        return runner.run([values])[0]

    self_checks = checks.run(model, pairs, the_plan, base, one_patch)
    runner.patch_tokens = 0  # count the sweep's own patches, not the self-checks'
    cache = sources.source_values(model, pairs, the_plan, the_plan.sites)
    size = _checked_chunk(chunk) if chunk is not None else _chunk_size(model, pairs, _checked_budget(memory_budget))
    # An explicit budget also bounds an explicit chunk: pieces estimated over it are halved first.
    backoff = _BackOff(size, _bytes_per_copy(model, pairs), _checked_budget(memory_budget) if memory_budget is not None else None)
    # A patch whose value equals the target's own changes nothing (e.g. where clean and corrupt
    # tokens agree, up to the first differing position): its logits are the target run's, exactly.
    own = sources.target_values(model, pairs, the_plan, the_plan.sites)
    target_logits = base.corrupt_logits if the_plan.direction == "denoise" else base.clean_logits
    noop = reduce(target_logits)
    reduced: dict[int, Any] = {i: noop for i, s in enumerate(the_plan.sites) if torch.equal(cache[s], own[s])}
    del own
    order = sorted((i for i in range(len(the_plan.sites)) if i not in reduced), key=lambda i: runner.entry(the_plan.sites[i]))
    # Chunks are cut from the whole order, resumed or not, so a chunk left to run holds the same
    # copies as in an uninterrupted run and gives the same numbers bit for bit.
    pending = set(order)
    finished = {i: row for i, row in (checkpoint.load() if checkpoint is not None else {}).items() if i in pending}
    reduced.update(finished)
    bar = tqdm(total=len(the_plan.sites), initial=len(reduced), desc=f"{the_plan.direction} {the_plan.kind}",
               disable=None if progress is None else not progress)
    for group in _chunks(order, the_plan.sites, runner, size):
        if not (group := [i for i in group if i not in finished]):
            continue
        outputs = backoff.run(runner, [{the_plan.sites[i]: cache[the_plan.sites[i]]} for i in group])
        reduced.update((i, reduce(logits)) for i, logits in zip(group, outputs))
        if checkpoint is not None:
            checkpoint.append({i: reduced[i] for i in group})
        bar.update(len(group))
    bar.close()
    cost = {
        "patches": len(the_plan.sites),
        "noop_patches_skipped": len(the_plan.sites) - len(order),
        "patches_from_checkpoint": len(finished),
        "chunk": backoff.size,  # after any halving for memory
        # Recording the target at each split position (self-checks' included) plus the patched
        # runs, in full target forwards; the reference engine's figure is `patches`.
        "forward_equivalents": round(runner.forward_equivalents, 3),
    }
    return [reduced[i] for i in range(len(the_plan.sites))], self_checks, cost


def _chunks(order: list[int], sites: list[Site], runner: "_Resumer", size: int) -> list[list[int]]:
    """Consecutive runs of patches that share a prefix length, at most `size` long.

    Sorted by (prefix, layer), a chunk's copies enter at nearby layers, so little is recomputed
    for copies whose own layer comes later than the chunk's first."""
    groups: list[list[int]] = []
    for index in order:
        prefix = runner.entry(sites[index])[0]
        if groups and len(groups[-1]) < size and runner.entry(sites[groups[-1][0]])[0] == prefix:
            groups[-1].append(index)
        else:
            groups.append([index])
    return groups


def _chunk_size(model: Model, pairs: PromptPairs, budget: int) -> int:
    """How many patched copies fit the memory budget (at least one)."""
    return max(1, budget // _bytes_per_copy(model, pairs))


def _bytes_per_copy(model: Model, pairs: PromptPairs) -> int:
    """Estimated bytes one patched copy holds: one layer's transient activations, its share of the
    key/value cache (both in the model's dtype), and its float32 final logits."""
    d = model.dims
    batch, seq = len(pairs), pairs.seq_len
    width = next(model.hf.parameters()).element_size()  # 2 in bfloat16/float16, 4 in float32
    per_token = 6 * d.d_model + 3 * d.d_mlp + 3 * d.n_heads * seq
    cache = 2 * d.n_layers * seq * d.n_kv_heads * d.d_head
    return batch * (width * (seq * per_token + cache) + 4 * d.vocab)


def _checked_chunk(chunk: Any) -> int:
    if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
        raise ValueError(f"chunk must be at least 1 (a whole number of patched copies per forward), got {chunk!r}")
    return chunk


def _checked_budget(budget: Any) -> int:
    if budget is None:
        return DEFAULT_MEMORY_BUDGET
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not budget > 0:
        raise ValueError(f"memory_budget must be a positive number of bytes (e.g. 4 << 30 for 4 GiB), got {budget!r}")
    return int(budget)


class SweepOutOfMemory(MemoryError):
    """Even one patched copy of the target run does not fit in memory."""


class _OverBudget(Exception):
    """A piece whose estimated size exceeds the sweep's explicit memory budget (never leaves `_BackOff`)."""


class _BackOff:
    """Runs a chunk's copies in pieces of at most `size`, halving `size` whenever a piece runs out
    of memory (or is estimated over an explicit budget) and retrying only that piece.

    Finished pieces keep their logits, and the smaller size holds for every later chunk, so one
    out-of-memory costs one failed attempt, not one per chunk. The first halving is a warning;
    later ones are logged at info level."""

    def __init__(self, size: int, bytes_per_copy: int, budget: int | None):
        self.size, self.bytes_per_copy, self.budget = size, bytes_per_copy, budget
        self.halvings = 0

    def run(self, runner: "_Resumer", copies: list[dict[Site, Tensor]]) -> list[Tensor]:
        outputs: list[Tensor] = []
        while len(outputs) < len(copies):
            piece = copies[len(outputs) : len(outputs) + self.size]
            reason = None
            try:
                if self.budget is not None and len(piece) > 1 and len(piece) * self.bytes_per_copy > self.budget:
                    raise _OverBudget()
                outputs.extend(runner.run(piece))
            except _OverBudget:
                reason = f"estimated {len(piece) * self.bytes_per_copy / 2**20:.1f} MiB, over the memory budget of {self.budget / 2**20:.1f} MiB"
            except (RuntimeError, MemoryError) as error:
                if not _out_of_memory(error):
                    raise
                reason = f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else 'out of memory'}"
            if reason is not None:
                # Retried outside the except block, so the failed attempt's tensors are freed first.
                self._halve(len(piece), reason, runner.target.shape)
        return outputs

    def _halve(self, failed: int, reason: str, target_shape: torch.Size) -> None:
        if failed == 1:
            batch, seq = target_shape
            raise SweepOutOfMemory(
                f"one patched copy of the target run ({batch} prompts × {seq} tokens) does not fit in memory ({reason}); "
                "sweep fewer prompts at a time, load the model in bfloat16 (dtype='bfloat16'), or give it more memory"
            )
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        self.size = failed // 2
        self.halvings += 1
        log.log(logging.WARNING if self.halvings == 1 else logging.INFO,
                "a chunk of %d patched copies ran out of memory (%s); continuing with chunks of %d", failed, reason, self.size)


def _out_of_memory(error: BaseException) -> bool:
    """Whether `error` is an allocator's out-of-memory: CUDA's (torch.OutOfMemoryError), the CPU
    allocator's RuntimeError, or Python's MemoryError."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(error).lower()
    return "out of memory" in text or "can't allocate memory" in text


@dataclass
class _Prefix:
    """The target run split at position p: its cache for positions < p, and each layer's call on the rest."""

    cache: DynamicCache | None
    calls: list[tuple[tuple, dict]]


class _Resumer:
    """Runs stacked patched copies of the target run from their entry layer and position."""

    def __init__(self, model: Model, target: Tensor, positions: dict[str, Tensor], noise: Tensor | None = None):
        self.model, self.target, self.positions, self.noise = model, target.to(model.device), positions, noise
        self.prefixes: dict[int, _Prefix] = {}
        # Work done, in (decoder layer × prompt × token) calls: recording the target, and patched runs.
        self.recording_tokens = 0
        self.patch_tokens = 0

    @property
    def forward_equivalents(self) -> float:
        """Work so far in units of one full forward of the target batch (the reference engine's cost per patch)."""
        batch, seq = self.target.shape
        return (self.recording_tokens + self.patch_tokens) / (self.model.dims.n_layers * batch * seq)

    def entry(self, site: Site) -> tuple[int, int]:
        """(first affected position, first affected layer): nothing before either can change.

        Pattern patches resume at position 0: their source pattern spans every key position,
        while a sliding-window cache holds only the window's keys."""
        if site.pos is None or site.kind == "pattern":
            start = 0
        elif isinstance(site.pos, str):
            start = int(self.positions[site.pos].min())
        else:
            start = site.pos % self.target.shape[1]
        return start, site.layer % self.model.dims.n_layers

    def run(self, copies: list[dict[Site, Tensor]]) -> list[Tensor]:
        """Final-position logits (batch, vocab) of each patched copy.

        Copies join the stacked batch at their own entry layer, carrying the target's hidden
        states there: below it they would only recompute the target run."""
        entries = [min(self.entry(site) for site in values) for values in copies]
        start = min(position for position, _ in entries)
        order = sorted(range(len(copies)), key=lambda i: entries[i][1])  # by entry layer
        joins = [entries[i][1] for i in order]
        n_layers = self.model.dims.n_layers
        present = [sum(1 for layer in joins if layer <= j) for j in range(n_layers)]  # copies present at layer j
        prefix = self._prefix(start)
        cache = _repeated_cache(prefix.cache, present)
        shifted = [{_shifted(site, start): value for site, value in copies[i].items()} for i in order]
        positions = {name: where - start for name, where in self.positions.items()}
        batch = self.target.shape[0]
        hidden = None
        with hooks.patch_copies(self.model, shifted, copies_at=[present[layer] for layer in joins], positions=positions):
            for index in range(joins[0], n_layers):
                args, kwargs = prefix.calls[index]
                hidden = _joined(hidden, _first(args, kwargs), present[index] - (present[index - 1] if index > joins[0] else 0))
                call_args, call_kwargs = _expanded(args, kwargs, hidden, batch, present[index], cache)
                self.patch_tokens += hidden.shape[0] * hidden.shape[1]
                output = self.model.layer(index)(*call_args, **call_kwargs)
                hidden = output[0] if isinstance(output, tuple) else output
        logits = self.model.unembed(hidden[:, -1])
        k = len(copies)
        by_sorted = [logits[i::k] for i in range(k)]
        result: list[Tensor] = [None] * k  # type: ignore[list-item]
        for slot, original in enumerate(order):
            result[original] = by_sorted[slot]
        return result

    def _prefix(self, start: int) -> _Prefix:
        """Record (once per position) the target's cache up to `start` and its layers' calls after it."""
        if start not in self.prefixes:
            hf = self.model.hf
            cache = None
            # A noise corruption's target run carries its input noise; copies resume from what is recorded here.
            noise = self.noise
            if start > 0:
                cache = DynamicCache(config=hf.config)
                with hooks.add_to_input(self.model, None if noise is None else noise[:, :start]):
                    hf(input_ids=self.target[:, :start], past_key_values=cache, use_cache=True, logits_to_keep=1)
            replay = copy.deepcopy(cache) if cache is not None else None
            with hooks.add_to_input(self.model, None if noise is None else noise[:, start:]), hooks.layer_inputs(self.model) as calls:
                hf(input_ids=self.target[:, start:], past_key_values=replay, use_cache=replay is not None, logits_to_keep=1)
            self.prefixes[start] = _Prefix(cache, calls)
            self.recording_tokens += self.model.dims.n_layers * self.target.numel()  # the two recording forwards
        return self.prefixes[start]


def _shifted(site: Site, start: int) -> Site:
    """The same site in a run that begins at position `start` (named positions are shifted by the caller)."""
    if isinstance(site.pos, int):
        return Site(site.kind, site.layer, site.head, site.neuron, site.pos - start if site.pos >= 0 else site.pos)
    return site


def _first(args: tuple, kwargs: dict) -> Tensor:
    return args[0] if args else kwargs["hidden_states"]


def _joined(hidden: Tensor | None, target_hidden: Tensor, new: int) -> Tensor:
    """Add `new` copies of the target's hidden states to the prompt-major stack."""
    if new == 0:
        return hidden
    joining = target_hidden.unsqueeze(1).expand(-1, new, *target_hidden.shape[1:])  # (batch, new, pos, d_model)
    if hidden is None:
        return joining.flatten(0, 1)
    stacked = hidden.unflatten(0, (target_hidden.shape[0], -1))
    return torch.cat([stacked, joining], dim=1).flatten(0, 1)


def _repeated_cache(cache: DynamicCache | None, present: list[int]) -> DynamicCache | None:
    """A private copy of the prefix cache, layer j repeated for the copies present there
    (prompt-major); layers append to it as they run, so each run needs its own."""
    if cache is None:
        return None
    fresh = copy.deepcopy(cache)
    for layer, count in zip(fresh.layers, present):
        if count > 1:
            layer.batch_repeat_interleave(count)
    return fresh


def _expanded(args: tuple, kwargs: dict, hidden: Tensor, batch: int, k: int, cache: Any) -> tuple[tuple, dict]:
    """A layer's recorded call, with our hidden states, per-prompt tensors repeated for k copies, and our cache."""

    def expand(value: Any) -> Any:
        if isinstance(value, DynamicCache) or (cache is None and value is None):
            return cache if isinstance(value, DynamicCache) else value
        if isinstance(value, Tensor) and value.ndim > 0 and value.shape[0] == batch and batch > 1 and k > 1:
            return value.repeat_interleave(k, dim=0)
        if isinstance(value, tuple):
            return tuple(expand(v) for v in value)
        return value

    if args:
        return (hidden, *(expand(a) for a in args[1:])), {key: expand(v) for key, v in kwargs.items()}
    return args, {**{key: expand(v) for key, v in kwargs.items()}, "hidden_states": hidden}

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

A model split over devices (`device_map`) runs the same way: each layer's recorded call is moved
once to that layer's device, and the stacked hidden states follow the layers from device to device
(the prefix cache's layers already live where they were computed). On one device every move is a
no-op; only a real split (benchmarks/gpu_check.sh) proves the tensors land where each layer computes.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from actpatch import hooks, memory
from actpatch.engine import checks, sources
from actpatch.engine.plan import SweepPlan
from actpatch.metrics import Baseline
from actpatch.models.model import Model
from actpatch.run import Run
from actpatch.sites import Site

log = logging.getLogger(__name__)

# The source run (its activations are the patch values) and the target run (the baseline the
# copies start from): every exact sweep runs both once, whatever its engine.
UNPATCHED_RUNS = 2
# Sites inside a layer's MLP: with one patched, the last layer's MLP runs at every position.
MLP_SITE_KINDS = ("mlp_out", "mlp_in", "neuron")

# Attention functions whose masks and caches the equality tests have covered (ours is eager's wrapper).
PROVEN_ATTENTION = ("sdpa", "eager", hooks.PATTERN_ATTENTION)


def unsupported(model: Model) -> str | None:
    """Why the shortcuts here are unproven for `model` (None when they are proven): the sweep then
    falls back to the reference engine rather than risk a silently different number."""
    attention = model.hf.config._attn_implementation
    if attention not in PROVEN_ATTENTION:
        return f"attention implementation {attention!r} is not one of {PROVEN_ATTENTION}"
    return None


class Batched:
    """The batched engine, for `runner.run`: the reference sweep's rows from stacked, resumed copies.

    `spec.chunk` fixes how many patched copies share a forward; by default it is derived from
    `spec.memory_budget` (bytes; default 1 GiB on CPU, half the free memory on CUDA:
    `memory.default_budget`) and the prompts' size. A chunk that runs out of
    memory (or, when both are given, is estimated over the budget) is halved and retried, keeping
    the chunks already done (docs/scale.md)."""

    name = "batched"
    records_target = (
        True  # copies resume from the target's layer calls: the baseline's forward records them
    )

    def start(self, model: Model, the_plan: SweepPlan, base: Baseline) -> BatchedPatching:
        return BatchedPatching(model, the_plan, base)


class BatchedPatching:
    """One plan's patched runs: `logits` for a single patch (the self-checks), `rows` for the sweep."""

    def __init__(self, model: Model, the_plan: SweepPlan, base: Baseline):
        self.model, self.plan, self.base = model, the_plan, base
        self.resumer = Resumer(model, the_plan.target, the_plan.recorded_target)
        spec = the_plan.spec
        self.budget = (
            int(spec.memory_budget)
            if spec.memory_budget is not None
            else memory.default_budget(self.resumer.devices)
        )
        self.size = (
            spec.chunk
            if spec.chunk is not None
            else _chunk_size(model, the_plan.target, self.budget)
        )
        # An explicit budget also bounds an explicit chunk: pieces estimated over it are halved first.
        self.backoff = _BackOff(
            self.size, _bytes_per_copy(model, the_plan.target), spec.memory_budget
        )
        self.cache: dict[Site, Tensor] | None = None  # source values, from `known`
        self.noop: set[int] = set()

    def logits(self, values: Mapping[Site, Tensor]) -> Tensor:
        return self.resumer.run([dict(values)])[0]

    def known(self, reduce: Callable[[Tensor], Any]) -> dict[int, Any]:
        """Rows known without a patched run: a patch whose value equals the target's own changes
        nothing (e.g. where clean and corrupt tokens agree, up to the first differing position), so
        its logits are the target run's, exactly."""
        the_plan = self.plan
        self.cache = sources.source_values(self.model, the_plan, the_plan.sites)
        own = sources.target_values(self.model, the_plan, the_plan.sites)
        target_logits = (
            self.base.corrupt_logits if the_plan.direction == "denoise" else self.base.clean_logits
        )
        self.noop = {i for i, s in enumerate(the_plan.sites) if torch.equal(self.cache[s], own[s])}
        return {i: reduce(target_logits) for i in sorted(self.noop)}

    def rows(
        self, reduce: Callable[[Tensor], Any], done: Collection[int]
    ) -> Iterator[dict[int, Any]]:
        """`reduce(final-position logits)` for each site not in `done`, a chunk at a time. Each
        chunk's logits are reduced as soon as they are computed, so memory does not grow with the
        number of patches."""
        the_plan, runner = self.plan, self.resumer
        if self.cache is None:
            self.known(reduce)
        runner.floor_tokens = 0  # the floor is the sweep's own patches' (the self-checks' count as work, not as floor)
        order = sorted(
            (i for i in range(len(the_plan.sites)) if i not in self.noop),
            key=lambda i: runner.entry(the_plan.sites[i]),
        )
        bar = tqdm(
            total=len(the_plan.sites),
            initial=len(self.noop | set(done)),
            desc=f"{the_plan.direction} {the_plan.kind}",
            disable=None if the_plan.spec.progress is None else not the_plan.spec.progress,
        )
        # Chunks are cut from the whole order, resumed or not, so a chunk left to run holds the same
        # copies as in an uninterrupted run and gives the same numbers bit for bit.
        for group in _chunks(order, the_plan.sites, runner, self.size):
            if not (group := [i for i in group if i not in done]):
                continue
            outputs = self.backoff.run(
                runner, [{the_plan.sites[i]: self.cache[the_plan.sites[i]]} for i in group]
            )
            log.debug("chunk of %d patches from %s done", len(group), the_plan.sites[group[0]])
            yield {i: reduce(logits) for i, logits in zip(group, outputs)}
            bar.update(len(group))
        bar.close()

    def cost(self) -> dict[str, Any]:
        return {
            "patches": len(self.plan.sites),
            "noop_patches_skipped": len(self.noop),
            "chunk": self.backoff.size,  # after any halving for memory
            "memory_budget": self.budget,  # bytes the chunk was sized for (given, or memory.default_budget)
            # The two unpatched runs (the baseline, which captures the patch values), recording the
            # target at each split position, and the patched runs (the self-checks' included), in
            # full target forwards; the reference engine's figure is `patches` + 2.
            "forward_equivalents": round(UNPATCHED_RUNS + self.resumer.forward_equivalents, 3),
            # What no exact engine of this kind can skip: the two unpatched runs, and each patched
            # copy's layers from its own entry layer on, over the positions from its own first
            # affected one, and its final position's unembedding (no recordings, no self-checks).
            "work_floor": round(UNPATCHED_RUNS + self.resumer.floor_equivalents, 3),
        }


def patched_logits(
    model: Model, the_plan: SweepPlan, base: Baseline, reduce: Callable[[Tensor], Any]
) -> tuple[list[Any], dict[str, float], dict[str, Any]]:
    """`reduce(final-position logits)` for each of `the_plan.sites` (any list of one kind's sites),
    the self-check errors, and the work done: the batched engine outside a sweep (verify, shards)."""
    patching = BatchedPatching(model, the_plan, base)
    self_checks = checks.run(model, the_plan, base, patching.logits)
    rows = patching.known(reduce)
    for chunk in patching.rows(reduce, set(rows)):
        rows.update(chunk)
    return [rows[i] for i in range(len(the_plan.sites))], self_checks, patching.cost()


def _chunks(order: list[int], sites: list[Site], runner: Resumer, size: int) -> list[list[int]]:
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


def _chunk_size(model: Model, target: Run, budget: int) -> int:
    """How many patched copies fit the memory budget (at least one)."""
    return max(1, budget // _bytes_per_copy(model, target))


def _bytes_per_copy(model: Model, target: Run) -> int:
    """Estimated bytes one patched copy holds: one layer's transient activations, its share of the
    key/value cache (both in the model's dtype), and its float32 final logits."""
    batch, seq = target.tokens.shape
    width = next(model.hf.parameters()).element_size()  # 2 in bfloat16/float16, 4 in float32
    return memory.copy_bytes(model.dims, batch, seq, width, cache=True)


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

    def run(self, runner: Resumer, copies: list[dict[Site, Tensor]]) -> list[Tensor]:
        outputs: list[Tensor] = []
        while len(outputs) < len(copies):
            piece = copies[len(outputs) : len(outputs) + self.size]
            reason = None
            try:
                if (
                    self.budget is not None
                    and len(piece) > 1
                    and len(piece) * self.bytes_per_copy > self.budget
                ):
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
        log.log(
            logging.WARNING if self.halvings == 1 else logging.INFO,
            "a chunk of %d patched copies ran out of memory (%s); continuing with chunks of %d",
            failed,
            reason,
            self.size,
        )


def _out_of_memory(error: BaseException) -> bool:
    """Whether `error` is an allocator's out-of-memory: CUDA's (torch.OutOfMemoryError), the CPU
    allocator's RuntimeError, or Python's MemoryError."""
    if isinstance(error, (torch.OutOfMemoryError, MemoryError)):
        return True
    text = str(error).lower()
    return "out of memory" in text or "can't allocate memory" in text


class Resumer:
    """Runs stacked patched copies of the target run from their entry layer and position, through
    `hooks.forward` (which resumes them), and counts the work.

    `run` is the one place a chunk's copies meet the model: tests wrap it to count or to fail
    chunks (out of memory, a kill mid-sweep)."""

    def __init__(self, model: Model, target: Run, recorded: hooks.Recording | None = None):
        """`recorded`: the target's layer calls and cache from a forward that ran anyway (the
        baseline's, `sources.recorded`); without it the first split records them itself."""
        self.model, self.target_run = model, target
        self.target, self.positions = target.tokens.to(model.device), target.positions
        self.recordings = hooks.Recordings(model, target, recorded)
        # Work done, in (decoder layer × prompt × token) calls: recording the target, and patched runs;
        # unembedding one position counts as `unembedding` such calls (their parameters' ratio).
        self.patch_tokens = 0
        self.floor_tokens = 0  # the part of patch_tokens no resume or prefix reuse could avoid
        self.unembedding = _unembedding_in_layer_tokens(model)
        # of a decoder layer's work: what the last one skips off the final position
        self.mlp_share = _mlp_share_of_layer(model)
        # Where each decoder layer computes (several devices under a device_map), and the final norm.
        self.devices = hooks.layer_devices(model)
        self.head_device = hooks.head_device(model)

    @property
    def recording_tokens(self) -> float:
        """Work of the forwards that recorded the target, each over some of its positions with one
        of them unembedded."""
        batch = len(self.target)
        return sum(
            self.model.dims.n_layers * batch * positions + self.unembedding * batch
            for positions in self.recordings.forwards
        )

    @property
    def forward_equivalents(self) -> float:
        """Work so far in units of one full forward of the target batch (the reference engine's cost per patch)."""
        return (self.recording_tokens + self.patch_tokens) / self._forward_tokens()

    @property
    def floor_equivalents(self) -> float:
        """The patched runs' unavoidable work so far, in the same units as `forward_equivalents`."""
        return self.floor_tokens / self._forward_tokens()

    def _forward_tokens(self) -> float:
        """One full forward of the target batch: every layer at every position, the last one unembedded."""
        batch, seq = self.target.shape
        return self.model.dims.n_layers * batch * seq + self.unembedding * batch

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
        shifted = [
            {_shifted(site, start): value for site, value in copies[i].items()} for i in order
        ]
        positions = {name: where - start for name, where in self.positions.items()}
        batch, seq = self.target.shape
        # The last layer's MLP acts on each position alone and the logits read the final one: it runs
        # there only, unless a copy patches that MLP or its neurons (their hooks need every position).
        trimmed = not any(
            site.layer % n_layers == n_layers - 1
            and bool(_kinds_touched(site) & set(MLP_SITE_KINDS))
            for values in copies
            for site in values
        )
        # per row and skipped position, in layer-token calls
        share = self.mlp_share if trimmed else 0.0
        self.floor_tokens += sum(
            (n_layers - layer) * batch * (seq - position) - share * batch * (seq - position - 1)
            for position, layer in entries
        )
        self.floor_tokens += self.unembedding * batch * len(copies)
        patches = hooks.patch_copies(self.model, shifted, named_positions=positions)
        by_sorted = self.resumed(joins, start, taps=[patches], trim=trimmed)
        result: list[Tensor] = [None] * len(copies)  # type: ignore[list-item]
        for slot, original in enumerate(order):
            result[original] = by_sorted[slot]
        return result

    def resumed(
        self,
        joins: list[int],
        start: int,
        *,
        taps: Sequence[AbstractContextManager[Any]] = (),
        trim: bool = True,
    ) -> Tensor:
        """Final-position logits (copy, batch, vocab) of stacked copies of the target run, each
        joining at its layer in `joins` (ascending), over the positions from `start` on, under
        `taps` (the hooks that make the copies differ, attached for the resumed forward alone),
        and the work counted. `trim`: nothing in the last layer's MLP is read or written at
        positions before the final one. What `run` does for patches; exact edge removals too."""
        recorded = self.recordings.at(start)  # recorded before, and without, the copies' taps
        n_layers = self.model.dims.n_layers
        present = [sum(1 for layer in joins if layer <= j) for j in range(n_layers)]
        batch, seq = self.target.shape
        share = self.mlp_share if trim else 0.0
        self.patch_tokens += (self.unembedding - share * (seq - start - 1)) * batch * len(joins)
        self.patch_tokens += sum(present[joins[0] :]) * batch * (seq - start)
        logits = hooks.forward(
            self.model,
            self.target_run,
            taps=taps,
            copies=joins,
            layer=joins[0],
            recorded=recorded,
            trim=trim,
        )
        return hooks.per_copy(logits, len(joins))


def _unembedding_in_layer_tokens(model: Model) -> float:
    """The cost of unembedding one position in (decoder layer × token) calls: the unembedding's
    parameters over a decoder layer's (each does one multiply-add per parameter per token)."""
    layer = sum(p.numel() for p in model.layer(0).parameters())
    return model.hf.get_output_embeddings().weight.numel() / layer


def _mlp_share_of_layer(model: Model) -> float:
    """The MLP's part of a decoder layer's work per token: its parameters over the layer's."""
    layer = model.layer(0)
    return sum(p.numel() for p in model.submodule(0, model.arch.mlp).parameters()) / sum(
        p.numel() for p in layer.parameters()
    )


def _shifted(site: Site, start: int) -> Site:
    """The same site in a run that begins at position `start` (named positions are shifted by the caller)."""
    if isinstance(site.pos, int):
        return dataclasses.replace(site, pos=site.pos - start if site.pos >= 0 else site.pos)
    return site


def _kinds_touched(site: Site) -> set[str]:
    """The site kinds a patch at `site` reads or writes: a feature site's are its basis's."""
    return {site.basis.reads, site.basis.writes} if site.basis is not None else {site.kind}

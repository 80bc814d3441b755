"""Feature circuits evaluated exactly: the clean prompt, every dictionary node outside the circuit
at its off value (the corrupt run's, or ablated), many circuits stacked in one forward.

Node circuits' rule (`evaluate.py`), with nodes for components: the circuit computes from the
clean input and from the ablated rest. Every latent of every dictionary at every position and
every error node is a node; those outside the circuit are patched, each dictionary's together as
one write (`bases.nodes.NodeSet`: the sum of their rank-one moves and their errors' moves, with
current values from the same forward, so a dictionary's nodes move with what the circuit's nodes
upstream of it changed). Nothing else is touched: a circuit over two dictionaries is weighed
against their nodes, while the rest of the model runs on. With `direction="noise"` the circuit's
own nodes are patched instead: the circuit removed, what completeness asks.

Copies of the clean run are stacked and resumed at their first dictionary's layer
(`engine.batched.Resumer`): the batched engine's exact path, which tests hold against
one-circuit-at-a-time patching of each latent as its own site.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import Tensor

from actpatch import memory, metrics
from actpatch.bases.nodes import NodeSet
from actpatch.basis import Basis
from actpatch.circuits.curve import prompt_block
from actpatch.circuits.evaluate import Ablation, CircuitRuns, with_intervals
from actpatch.engine import checks, sources
from actpatch.engine.batched import Resumer
from actpatch.engine.runner import dictionary_note
from actpatch.engine.spec import DIRECTIONS, Direction
from actpatch.models.model import Model
from actpatch.pairs import PromptPairs
from actpatch.sites import FEATURE_KINDS, Site, SiteError, validate
from actpatch.stats import bootstrap

FEATURE_METRICS = ("faithfulness", *metrics.METRICS)


class FeatureRuns(CircuitRuns):
    """The baseline, each dictionary's clean and off latents and errors, and the clean run
    recorded for resumed copies: prepared once, then any number of circuits evaluated.

    `logits(circuits, direction)` runs them; `evaluate_feature_circuit` and
    `feature_faithfulness_curve` take `runs=` to share one preparation."""

    def __init__(
        self,
        model: Model,
        pairs: PromptPairs,
        dictionaries: Sequence[Any],
        ablation: Ablation = None,
        *,
        chunk: int | None = None,
    ):
        super().__init__(model, pairs, ablation)
        self.dictionaries = checked_dictionaries(model, dictionaries)
        if chunk is not None and (
            isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1
        ):
            raise ValueError(f"chunk is a number of circuits per forward, 1 or more, got {chunk!r}")
        self.chunk = chunk or self._copies_per_forward()
        self.resumer = Resumer(model, pairs.clean_run)
        with torch.no_grad():
            clean = self._values(pairs.clean_run)
            if ablation is None:
                self.off = self._values(pairs.corrupt_run)
            else:  # each latent and error knocked out on its own, as sweeps ablate feature sites
                flat = {(i, part): v for i, pair in enumerate(clean) for part, v in enumerate(pair)}
                ablated = sources.ablate(flat, ablation)
                self.off = [(ablated[(i, 0)], ablated[(i, 1)]) for i in range(len(clean))]
            # The no-op patch through this evaluation's own path: every node at its clean value.
            every = [self._every(d) for d in self.dictionaries]
            copy = {
                Site("feature_error", d.layer, basis=nodes): nodes.written_by(
                    *clean[i], like=clean[i][1]
                )
                for i, (d, nodes) in enumerate(zip(self.dictionaries, every))
            }
            self.self_checks = {
                "noop_patch_error": checks.same_run_error(
                    model, self.resumer.run([copy])[0], self.base, "noise"
                )
            }

    def logits(
        self,
        circuits: Sequence[Sequence[Site]],
        direction: Direction | Sequence[Direction] = "denoise",
    ) -> Tensor:
        """(circuit, batch, vocab) final-position logits of the clean prompt with every node outside
        each circuit at its off value (denoise), or the circuit's own nodes (noise); `direction`
        may name one per circuit. A circuit that patches nothing is the clean run, taken from the
        baseline."""
        directions = [direction] * len(circuits) if isinstance(direction, str) else list(direction)
        if len(directions) != len(circuits) or any(d not in DIRECTIONS for d in directions):
            raise ValueError(
                f"direction must be one of {DIRECTIONS}, one per circuit or one for all"
            )
        found = self.base.clean_logits.new_empty((len(circuits), *self.base.clean_logits.shape))
        found[:] = self.base.clean_logits
        # Stacked copies share rows as they enter, so a chunk holds copies entering at one layer
        # (their first patched dictionary's): a copy's later writes then see the same copies
        # present. A copy's patches (masks and values) are built for its chunk only.
        entry = {}
        for i, (circuit, way) in enumerate(zip(circuits, directions)):
            if layers := [d.layer for d, _ in self._patched(circuit, way)]:
                entry[i] = min(layers)
        with torch.no_grad():
            for layer in sorted(set(entry.values())):
                group = [i for i in entry if entry[i] == layer]
                for start in range(0, len(group), self.chunk):
                    part = group[start : start + self.chunk]
                    copies = [self._copy(circuits[i], directions[i]) for i in part]
                    for i, logits in zip(part, self.resumer.run(copies)):
                        found[i] = logits.float().to(found.device)
        return found

    def provenance(
        self, direction: Direction, *, analysis: str = "evaluate_feature_circuit", **extra
    ) -> dict:
        return super().provenance(
            direction,
            analysis=analysis,
            dictionaries=[dictionary_note(d) for d in self.dictionaries],
            **extra,
        )

    def masks(self, circuit: Sequence[Site]) -> list[tuple[Tensor, Tensor]]:
        """Per dictionary, which of its nodes `circuit` holds: latents (batch, pos, n_latents) and
        error nodes (batch, pos), a node at a named position marked at each prompt's own index."""
        batch, seq = self.pairs.clean.shape
        found = [
            (
                torch.zeros(batch, seq, d.n_latents, dtype=torch.bool),
                torch.zeros(batch, seq, dtype=torch.bool),
            )
            for d in self.dictionaries
        ]
        for node in circuit:
            latents, errors = found[self._index(node)]
            at = self._where(node, batch, seq)
            if node.kind == "feature":
                latents[(*at, node.latent)] = True
            else:
                errors[at] = True
        return found

    def _copy(self, circuit: Sequence[Site], direction: Direction) -> dict[Site, Tensor]:
        """One copy's patches: each dictionary's patched nodes written together."""
        copy = {}
        for d, nodes in self._patched(circuit, direction):
            off_latents, off_error = self.off[self.dictionaries.index(d)]
            site = Site("feature_error", d.layer, basis=nodes)
            copy[site] = nodes.written_by(off_latents, off_error, like=off_error)
        return copy

    def _patched(self, circuit: Sequence[Site], direction: Direction) -> list[tuple[Any, NodeSet]]:
        """Each dictionary with nodes to patch, and those nodes: outside the circuit (denoise) or
        in it (noise)."""
        found = []
        for d, (latents, errors) in zip(self.dictionaries, self.masks(circuit)):
            if direction == "denoise":
                latents, errors = ~latents, ~errors
            if bool(latents.any()) or bool(errors.any()):
                found.append((d, NodeSet(d, latents, errors)))
        return found

    def _every(self, d: Any) -> NodeSet:
        batch, seq = self.pairs.clean.shape
        return NodeSet(
            d,
            torch.ones(batch, seq, d.n_latents, dtype=torch.bool),
            torch.ones(batch, seq, dtype=torch.bool),
        )

    def _values(self, run: Any) -> list[tuple[Tensor, Tensor]]:
        """Each dictionary's latents (batch, pos, n_latents) and error (batch, pos, d_out) in `run`."""
        reads = [Site(d.reads, d.layer) for d in self.dictionaries]
        errors = [Site("feature_error", d.layer, basis=d) for d in self.dictionaries]
        found = sources.captured(self.model, run, list(dict.fromkeys(reads)) + errors)
        return [
            (d.encode(found[r]), found[e].float())
            for d, r, e in zip(self.dictionaries, reads, errors)
        ]

    def _index(self, node: Site) -> int:
        if not isinstance(node, Site) or node.kind not in FEATURE_KINDS:
            raise SiteError(
                f"a feature circuit holds latents (Site('feature', layer, latent=i, basis=d)) and "
                f"error nodes (Site('feature_error', layer, basis=d)), not {node!r}"
            )
        for i, d in enumerate(self.dictionaries):
            if node.basis is d:
                validate(
                    node,
                    self.model.arch,
                    self.model.dims,
                    parallel=self.model.arch.is_parallel(self.model.hf.config),
                )
                return i
        names = ", ".join(d.name for d in self.dictionaries)
        raise SiteError(
            f"{node} is a node of {getattr(node.basis, 'name', node.basis)!r}, which is not among the "
            f"circuit's dictionaries ({names}): add it to dictionaries="
        )

    def _where(self, node: Site, batch: int, seq: int) -> tuple:
        """(prompts, positions) the node covers: every position, one index, or a named position at
        each prompt's own index."""
        every = slice(None)
        if node.pos is None:
            return every, every
        if isinstance(node.pos, str):
            if node.pos not in self.pairs.positions:
                known = ", ".join(self.pairs.positions) or "none"
                raise SiteError(
                    f"{node}: no named position {node.pos!r} in these prompts (named positions: {known})"
                )
            return torch.arange(batch), torch.as_tensor(self.pairs.positions[node.pos]).long()
        if not -seq <= node.pos < seq:
            raise SiteError(
                f"{node}: position {node.pos} is out of range for prompts of {seq} tokens"
            )
        return every, node.pos % seq

    def _copies_per_forward(self) -> int:
        """Copies that fit `memory.default_budget`: a layer's transient activations and cache share
        per copy, each dictionary's latents and write (float32) and its masks."""
        batch, seq = self.pairs.clean.shape
        width = next(self.model.hf.parameters()).element_size()
        per_copy = memory.copy_bytes(self.model.dims, batch, seq, width, cache=True)
        per_copy += sum(  # float32 latents (three at once) and writes, and the masks (bool)
            batch * seq * (13 * d.n_latents + 8 * d.d_out) for d in self.dictionaries
        )
        budget = memory.default_budget({p.device for p in self.model.hf.parameters()})
        return max(1, budget // per_copy)


def evaluate_feature_circuit(
    model: Model,
    pairs: PromptPairs,
    circuit: Sequence[Site],
    *,
    dictionaries: Sequence[Any] | None = None,
    direction: Direction = "denoise",
    ablation: Ablation = None,
    runs: FeatureRuns | None = None,
    ci: float | bootstrap.Bootstrap | None = None,
) -> xr.DataArray:
    """Every metric of a feature circuit, and its `faithfulness` f = (m(C) − m(∅)) / (m(clean) −
    m(∅)) on the mean logit difference, ∅ every node of `dictionaries` at its off value.

    Denoising keeps the circuit's nodes and patches every other node of `dictionaries` (default:
    those `runs` were prepared for, else the ones the circuit's nodes name; an empty circuit
    needs them) with its corrupt-run value, or
    `ablation` ("mean", "zero", "resample" of its clean-run value); `direction="noise"` removes the
    circuit instead (its nodes patched, the rest kept): f near 0 then means the circuit is complete.
    Error nodes are nodes: list them (`top_features(..., errors="kept")` does) or they are patched.
    `ci=0.95` (or an `actpatch.Bootstrap`) adds a `stat` dimension over resampled prompts, from the
    same forwards."""
    ci = bootstrap.Bootstrap.of(ci)
    circuit = list(circuit)
    if dictionaries is None and runs is not None:
        dictionaries = runs.dictionaries
    if dictionaries is None:
        dictionaries = list(
            {
                id(s.basis): s.basis for s in circuit if isinstance(s, Site) and s.basis is not None
            }.values()
        )
        if not dictionaries:
            raise SiteError(
                "an empty circuit needs dictionaries= to say whose nodes are patched around it"
            )
    if runs is None:
        runs = FeatureRuns(model, pairs, dictionaries, ablation)
    check_runs(runs, model, pairs, dictionaries, ablation)
    logits = runs.logits([circuit, []], [direction, "denoise"])
    values = metrics.averaged(logits[0], runs.base)
    empty = metrics.averaged(logits[1], runs.base)["logit_diff"]
    full = float(runs.base.clean_logit_diff.double().mean())
    result = xr.DataArray(
        [(values["logit_diff"] - empty) / (full - empty), *(values[m] for m in metrics.METRICS)],
        dims=["metric"],
        coords={"metric": list(FEATURE_METRICS)},
        name="circuit_performance",
    )
    result.attrs.update(
        runs.provenance(
            direction,
            circuit=[str(s) for s in circuit],
            empty_logit_diff=empty,
            full_logit_diff=full,
        )
    )
    if ci is not None:
        empties = metrics.logit_diff(logits[1].double(), runs.base.answers, runs.base.wrong)
        by_circuits = prompt_block(
            runs.base, logits[:1], empty=empties, full=runs.base.clean_logit_diff
        )
        by_runs = prompt_block(runs.base, logits[:1])
        norm = metrics.METRICS.index("norm_logit_diff")
        f = bootstrap.replicates(by_circuits, ci)[:, norm, 0]
        rest = bootstrap.replicates(by_runs, ci)[:, :, 0]
        result = with_intervals(result, _stacked(f, rest), ci)
    return result


def checked_dictionaries(model: Model, dictionaries: Sequence[Any]) -> list[Any]:
    """`dictionaries` as bases that fit `model`, one per site they write."""
    found = list(dictionaries) if not isinstance(dictionaries, Basis) else [dictionaries]
    if not found:
        raise ValueError(
            "feature circuits need at least one dictionary (actpatch.load_dictionary(path, model))"
        )
    parallel = model.arch.is_parallel(model.hf.config)
    writes: dict[tuple[str, int], str] = {}
    for d in found:
        if not isinstance(d, Basis):
            raise TypeError(
                f"feature circuits take dictionaries (actpatch.load_dictionary(path, model)), got {type(d).__name__}"
            )
        if (fits := getattr(d, "check_fits", None)) is not None:
            fits(model)
        validate(Site("feature_error", d.layer, basis=d), model.arch, model.dims, parallel=parallel)
        where = (d.writes, d.layer)
        if where in writes:
            raise ValueError(
                f"{writes[where]} and {d.name} both write {d.writes} at layer {d.layer}: a feature "
                "circuit takes one dictionary per place it writes"
            )
        writes[where] = d.name
    return found


def check_runs(
    runs: FeatureRuns,
    model: Model,
    pairs: PromptPairs,
    dictionaries: Sequence[Any],
    ablation: Ablation,
) -> None:
    """Refuse runs prepared for another model, other prompts, dictionaries or ablation."""
    if (
        runs.model is not model
        or runs.pairs is not pairs
        or runs.ablation != ablation
        or [id(d) for d in runs.dictionaries] != [id(d) for d in dictionaries]
    ):
        raise ValueError(
            "these FeatureRuns were prepared for another model, other pairs, dictionaries or ablation: "
            "prepare them with the same ones (FeatureRuns(model, pairs, dictionaries, ablation))"
        )


def _stacked(f: np.ndarray, rest: np.ndarray) -> np.ndarray:
    """(resample, metric) of FEATURE_METRICS: f's resamples, then every other metric's."""
    return np.concatenate([f[:, None], rest], axis=1)

"""Exact evaluation of edge circuits: the clean prompt, each edge outside the circuit carrying its
sender's out-of-circuit value.

Every receiver's input is the sum of its senders' outputs, each taken from the current (patched)
run if the edge is in the circuit and at its out-of-circuit value if not: the corrupt run's
output (default), or the clean output zeroed, averaged over the prompts position by position, or
another prompt's (`ablation="zero" | "mean" | "resample"`). Computed as the actual residual stream
minus Σ (current − off) over the missing edges, constant terms (output-projection biases) cancel.
So the full circuit is the clean run and the empty one the corrupt (or ablated) run, exactly.
Several circuits are run at once as copies stacked along the batch. Not here: scores
(`graph/scores.py`) and choosing circuits (`graph/select.py`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch
import xarray as xr
from torch import Tensor

from actpatch import deprecation, hooks, memory, metrics, results
from actpatch.circuits import curve
from actpatch.circuits.evaluate import performance, with_intervals
from actpatch.engine import checks, collect, sources
from actpatch.engine.spec import ENGINES, EngineName
from actpatch.graph.nodes import EdgeError, Graph
from actpatch.hooks.edges import EdgePlan, EdgeRecord, edge_hooks
from actpatch.models.model import Model
from actpatch.pairs import PromptPairs
from actpatch.run import Run
from actpatch.stats import bootstrap

Ablation = Literal["zero", "mean", "resample"]
# The edge engines' names before they were named as the sweeps' are: fast, plain.
OLD_ENGINES = {"fast": "batched", "plain": "reference"}


@bootstrap.old_keywords("n_boot", "boot_seed")
def evaluate(
    model: Model,
    pairs: PromptPairs,
    circuit: Tensor | Sequence[str],
    *,
    ablation: Ablation | None = None,
    check_baseline: bool = True,
    ci: float | bootstrap.Bootstrap | None = None,
) -> xr.DataArray:
    """Every metric (averaged over prompts) with only `circuit`'s edges carrying current values.

    `circuit`: edge names (`["input->a0.h0<q>", "a0.h0->logits"]`) or a (sender, receiver) bool
    matrix from `Graph.circuit`, `Graph.node_circuit` or `select.top_edges`. `norm_logit_diff` is
    normalised by the clean and corrupt runs (with an ablation, see `faithfulness` for the
    normalisation by the empty circuit). `ci=0.95` adds a `stat` dimension (value, lo, hi) as
    `actpatch.evaluate_circuit` does (a level or an `actpatch.Bootstrap`): every metric's interval
    over resamples of the prompts, from the same forward's per-prompt rows (docs/uncertainty.md)."""
    ci = bootstrap.Bootstrap.of(ci)
    runs = EdgeRuns.prepare(model, pairs, ablation=ablation, check_baseline=check_baseline)
    circuit = runs.graph.checked(circuit)
    logits = runs.logits(circuit[None])[0]
    result = performance(logits, runs.base)
    result.attrs.update(runs.provenance("graph.evaluate", check_baseline=check_baseline))
    result.attrs.update(
        model=model.name,
        ablation=ablation or "corrupt",
        n_edges=int(circuit.sum()),
        n_edges_total=runs.graph.n_edges,
        n_prompts=len(pairs),
    )
    if ci is None:
        return result
    block = runs.prompt_block([logits])
    resampled = bootstrap.replicates(block, ci)[..., 0]  # (resample, metric)
    return with_intervals(result, resampled, ci)


@dataclass(eq=False)
class EdgeRuns:
    """What every evaluation on one model and one set of prompts shares: the graph, each sender's
    clean and out-of-circuit outputs (sender, batch, pos, d_model), and the baseline."""

    model: Model
    pairs: PromptPairs
    graph: Graph
    clean: Tensor
    off: Tensor
    base: metrics.Baseline
    ablation: Ablation | None = None
    _checks: dict[str, float] | None = field(default=None, repr=False)

    @classmethod
    @torch.no_grad()
    def prepare(
        cls,
        model: Model,
        pairs: PromptPairs,
        *,
        ablation: Ablation | None = None,
        check_baseline: bool = True,
    ) -> EdgeRuns:
        sources.check_ablation(ablation, pairs, "the corrupt run's outputs")
        graph = Graph.of(model)
        # The recording forwards are the baseline runs: their final-position logits are the baseline's.
        clean, clean_logits = sender_outputs(model, graph, pairs.clean_run, logits=True)
        corrupt, corrupt_logits = sender_outputs(model, graph, pairs.corrupt_run, logits=True)
        base = collect.checked(model, pairs, clean_logits, corrupt_logits, check=check_baseline)
        if ablation is None:
            off = corrupt
        else:  # the sweeps' one definition of each ablation, over the prompts (dimension 1 here)
            off = sources.ablate({None: clean.transpose(0, 1)}, ablation)[None].transpose(0, 1)
        return cls(model, pairs, graph, clean, off, base, ablation)

    def provenance(self, analysis: str, **options) -> dict:
        """`results.provenance` of an edge analysis: model, prompts, versions, the out-of-circuit
        values (`source`), the baselines, and `options`: the analysis's own arguments, only
        those it used."""
        return results.provenance(
            self.model,
            self.pairs,
            analysis=analysis,
            source=self.ablation or "corrupt",
            baseline_clean=metrics.averaged(self.base.clean_logits, self.base),
            baseline_corrupt=metrics.averaged(self.base.corrupt_logits, self.base),
            self_checks=self.self_checks(),
            self_check_tolerance=checks.tolerance(next(self.model.hf.parameters()).dtype),
            **options,
        )

    def self_checks(self) -> dict[str, float]:
        """The edge path's no-op patches, run once per `EdgeRuns` (one forward of two copies):
        every edge kept gives the clean run and, with the corrupt run's values outside the
        circuit, no edge kept gives the corrupt run. Raises `SelfCheckFailed` past the tolerance,
        so a circuit's numbers never come from an edge path that cannot reproduce the model."""
        if self._checks is None:
            empty, full = self.logits(torch.stack([self.graph.empty(), self.graph.full()]))
            found = {
                "full_circuit_error": checks.same_run_error(self.model, full, self.base, "noise")
            }
            if self.ablation is None:
                found["empty_circuit_error"] = checks.same_run_error(
                    self.model, empty, self.base, "denoise"
                )
            self._checks = found
        return self._checks

    def prompt_block(
        self, logits: Sequence[Tensor], empty: Tensor | None = None, full: Tensor | None = None
    ) -> bootstrap.Block:
        """Every metric of each prompt of each circuit's run (`logits`: (batch, vocab) each), as the
        block a bootstrap over prompts resamples: normalised by the clean and corrupt runs, or by
        the `empty` and `full` circuits' per-prompt logit differences where given (that is f)."""
        return curve.prompt_block(self.base, logits, empty, full)

    def check_for(self, model: Model, pairs: PromptPairs, ablation: Ablation | None) -> None:
        """Refuse to reuse these runs for another model, other prompts or another ablation."""
        if self.model is not model or self.pairs is not pairs or self.ablation != ablation:
            raise ValueError(
                f"these EdgeRuns were prepared for {self.model.name} on {len(self.pairs)} prompts with "
                f"ablation={self.ablation!r}: prepare them with the same model, pairs and ablation "
                f"(EdgeRuns.prepare(model, pairs, ablation={ablation!r}))"
            )

    def plan(self, copies: int, **changes) -> EdgePlan:
        """The plan of a circuit or gradient run (only its final-position logits are read); the fast
        path runs the last layer's MLP at the final position alone, the plain path everywhere."""
        changes.setdefault("final_position_only", changes.get("fast", True))
        return EdgePlan(
            stages=self.graph.stages(),
            attn_in_norm=attn_in_norm(self.model),
            copies=copies,
            batch=len(self.pairs),
            off=self.off,
            exists=self.graph.exists,
            **changes,
        )

    @torch.no_grad()
    def logits(
        self, circuits: Tensor, *, chunk: int | None = None, engine: EngineName = "batched"
    ) -> Tensor:
        """Final-position logits (circuit, batch, vocab) of each (sender, receiver) circuit in
        `circuits` (circuit, sender, receiver); fractional entries weigh an edge in between.

        `engine="reference"`: the oracle, attention expanded per head and o_proj called on a block
        input (`hooks.edges.EdgePlan.fast`); the old names "fast" and "plain" warn."""
        engine = checked_engine(engine, "EdgeRuns.logits")
        return torch.cat(
            [
                self._forward(part, fast=engine == "batched")
                for part in self._chunks(circuits, chunk)
            ]
        )

    def mean_logit_diff(self, logits: Tensor) -> Tensor:
        """The mean logit difference over the prompts, in float64: a scalar from (batch, vocab)
        logits, one per circuit from (circuit, batch, vocab). Every edge analysis reads a circuit by it."""
        if logits.ndim == 3:
            return torch.stack([self.mean_logit_diff(one) for one in logits])
        return metrics.logit_diff(logits.double(), self.pairs.answers, self.pairs.wrong).mean()

    def copies_per_forward(self, chunk: int | None = None, *, grads: bool = False) -> int:
        """How many circuits share a forward: `chunk`, or as many as `memory.default_budget` allows
        (1 GiB on CPU, half the free memory on CUDA).

        Per prompt and position a copy holds, at its widest stage, 3·H head inputs and the deltas of
        every sender (d_model each); a backward keeps every layer's, so gradients divide by n_layers."""
        if chunk is not None:
            if isinstance(chunk, bool) or not isinstance(chunk, int) or chunk < 1:
                raise ValueError(
                    f"chunk must be a positive number of circuits per forward, got {chunk!r}"
                )
            return chunk
        dims, width = self.model.dims, self.clean.element_size()
        per_copy = (
            len(self.pairs)
            * self.pairs.seq_len
            * dims.d_model
            * width
            * (3 * dims.n_heads + len(self.graph.senders))
        )
        per_copy *= 2 * (
            dims.n_layers if grads else 1
        )  # transients of the attention on H-times expanded rows
        return max(
            1, memory.default_budget({p.device for p in self.model.hf.parameters()}) // per_copy
        )

    def _chunks(self, circuits: Tensor, chunk: int | None) -> list[Tensor]:
        if circuits.ndim != 3 or circuits.shape[1:] != self.graph.exists.shape:
            raise EdgeError(
                f"circuits must be a (circuit, sender, receiver) stack of {tuple(self.graph.exists.shape)} "
                f"matrices, got {tuple(circuits.shape)}"
            )
        return list(circuits.split(self.copies_per_forward(chunk)))

    def _forward(self, circuits: Tensor, *, fast: bool = True) -> Tensor:
        copies = circuits.shape[0]
        absent = self.graph.exists.double() * (
            1 - circuits.double()
        )  # float64: fractional weights stay exact
        with edge_hooks(
            self.model, self.plan(copies, absent=absent.to(self.model.device), fast=fast)
        ) as record:
            logits = hooks.forward(self.model, self.pairs.clean_run, copies=copies)
        check_reached(self.graph, record)
        logits = logits.to(
            torch.promote_types(logits.dtype, torch.float32)
        )  # float64 models stay float64
        return hooks.per_copy(logits, copies)


def checked_engine(engine: str, caller: str) -> str:
    """`engine` as the sweeps name it; the edge engines' old names warn and mean the same engine."""
    engine = deprecation.renamed_value("engine", engine, OLD_ENGINES, caller)
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {ENGINES}, got {engine!r}")
    return engine


def attn_in_norm(model: Model) -> str:
    """Path (in a decoder layer) of the norm attention reads the residual stream through."""
    return model.arch.attn_in_norm


@torch.no_grad()
def sender_outputs(
    model: Model, graph: Graph, run: Run, *, logits: bool = False
) -> Tensor | tuple[Tensor, Tensor]:
    """Each sender's output in `run` (its input noise included): (sender, batch, pos, d_model); with
    `logits`, also the final-position logits (batch, vocab, float32), as `hooks.last_logits` gives them."""
    plan = EdgePlan(stages=graph.stages(), attn_in_norm=attn_in_norm(model), batch=len(run))
    # Noise first: hooks run in the order they were attached, so `input` records the noisy input.
    with hooks.add_to_input(model, run.noise), edge_hooks(model, plan) as record:
        final = hooks.final_logits(model, run.tokens).float()
    check_reached(graph, record)
    outputs = torch.stack([record.outputs[s] for s in range(len(graph.senders))])
    return (outputs, final) if logits else outputs


def check_reached(graph: Graph, record: EdgeRecord) -> None:
    """Raise if some receivers were never reached: their edges would silently do nothing."""
    stages = graph.stages()
    if missing := [s for i, s in enumerate(stages) if i not in record.fired]:
        raise RuntimeError(
            f"the forward never reached the norm feeding {missing[0].kind} of layer {missing[0].layer} "
            "(and maybe others): the architecture table's paths do not match this model's forward"
        )

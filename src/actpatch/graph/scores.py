"""Edge scores: how much each edge carries the behaviour, estimated from gradients or measured exactly.

Every score is in the units of the metric, the mean logit difference m over the prompts, and
signed so that a positive score is an edge that *helps* the clean behaviour:

    score(s→r) ≈ m(every edge) − m(every edge but s→r)

- `eap` (edge attribution patching): (o_s(clean) − o_s(off)) · ∂m/∂(input of r) at the clean run,
  summed over prompts and positions: one forward and one backward.
- `eap-ig-inputs` (EAP-IG): the same difference times the gradient averaged over `steps` runs
  whose first-layer input is interpolated, corrupt + (k/steps)·(clean − corrupt), k = 0..steps−1
  (EAP-IG's left Riemann sum, which starts at the corrupt run).
- `eap-ig-activations`: the gradient averaged over runs in which one sender group's output (the
  input; one layer's heads; one MLP) is interpolated, off + (k/steps)·(clean − off), k = 1..steps,
  one group at a time; `(1 + 2·n_layers)·steps` passes. Here the interpolated output still depends
  on its own inputs, so gradients flow through it to the edges upstream.
- `clean-corrupted`: the gradient averaged over the clean and the corrupt run (two passes).
- `exact`: m(every edge) − m(every edge but s→r), measured by evaluating each edge's removal
  (copies stacked along the batch); cost: one forward per edge.
EAP-IG computes (corrupt − clean)·∇(−logit difference), the same number. The gradient at a
receiver is at its own input: the forward runs with every head's q, k and v inputs separate
(`hooks/edges.py`), which with all edges present all equal the residual stream there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, get_args

import torch
from torch import Tensor
from tqdm.auto import tqdm

from actpatch import hooks, metrics
from actpatch.engine import collect
from actpatch.engine.spec import EngineName
from actpatch.graph.evaluate import (
    Ablation,
    EdgeRuns,
    attn_in_norm,
    check_reached,
    checked_engine,
    sender_outputs,
)
from actpatch.graph.nodes import Graph
from actpatch.hooks.edge_gradients import receiver_gradients
from actpatch.hooks.edges import EdgePlan, edge_hooks
from actpatch.models.model import Model
from actpatch.pairs import PromptPairs

if TYPE_CHECKING:
    from actpatch.graph.exact import RemovalCost

Method = Literal["eap", "eap-ig-inputs", "eap-ig-activations", "clean-corrupted", "exact"]
METHODS: tuple[str, ...] = get_args(Method)
GRADIENT_FREE = ("exact",)


@dataclass(eq=False)
class EdgeScores:
    """One score per edge, as a (sender, receiver) matrix over `graph` (0 where there is no edge)."""

    graph: Graph
    scores: Tensor  # (sender, receiver) float64
    method: str
    attrs: dict = field(default_factory=dict)

    def __getitem__(self, edge: str) -> float:
        return float(self.scores[self.graph.edge(edge)])

    def as_dict(self) -> dict[str, float]:
        """{edge name: score} for every edge, in matrix order."""
        return {
            self.graph.edge_name(int(s), int(r)): float(self.scores[s, r])
            for s, r in self.graph.exists.nonzero()
        }


def edge_scores(
    model: Model,
    pairs: PromptPairs,
    method: Method = "eap-ig-inputs",
    *,
    steps: int = 5,
    ablation: Ablation | None = None,
    chunk: int | None = None,
    check_baseline: bool = True,
    progress: bool | None = None,
    engine: EngineName = "batched",
    runs: EdgeRuns | None = None,
) -> EdgeScores:
    """Every edge's score by `method` (see the module docstring for what each computes).

    `steps`: interpolation points of the integrated-gradient methods. `ablation`: out-of-circuit
    values other than the corrupt run's (zero, mean, resample), for `eap`, `eap-ig-activations`
    and `exact`. `chunk`: runs stacked per forward (default: what `memory.default_budget` holds: 1 GiB on CPU, half the free memory on CUDA).
    `engine`: "batched" (the default) or "reference", the oracle every batched path is tested
    against (gradient runs expand every attention layer per head; exact scores run each removal's
    whole forward), as `sweep` names its engines.
    `runs`: an `EdgeRuns.prepare(model, pairs, ablation=...)` to reuse (its baseline and recorded
    outputs), e.g. for a faithfulness curve after the scores; without it, `eap`'s gradient forward
    on the clean prompt is also the clean recording run, and `eap-ig-inputs`' first step (the
    corrupt run) the corrupt one: one forward fewer each.

        scores = ap.graph.edge_scores(model, pairs, "eap-ig-inputs", steps=5)
        circuit = ap.graph.top_edges(scores, percent=5)
    """
    engine = checked_engine(engine, "edge_scores")
    if method not in METHODS:
        raise ValueError(
            f"unknown edge-scoring method {method!r}; choose one of: {', '.join(METHODS)}"
        )
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise ValueError(f"steps must be a positive integer (interpolation points), got {steps!r}")
    if ablation is not None and method in ("eap-ig-inputs", "clean-corrupted"):
        raise ValueError(
            f"{method} interpolates towards the corrupt run and takes no ablation; "
            "use eap, eap-ig-activations or exact with ablation="
        )
    if runs is not None:
        runs.check_for(model, pairs, ablation)
    elif method == "eap" and engine == "batched" and ablation is None:
        runs, totals = _with_gradient_pass(model, pairs, check_baseline, gradients_on="clean")
        return _finished(runs, _scores(runs, totals, 1), method, steps, engine)
    elif method == "eap-ig-inputs" and engine == "batched":
        runs, first = _with_gradient_pass(model, pairs, check_baseline, gradients_on="corrupt")
        later = _gradient_runs(runs, method, steps)[1:]
        scores = _from_gradients(
            runs,
            later,
            runs.copies_per_forward(chunk, grads=True),
            progress,
            fast=True,
            totals=first,
        )
        return _finished(runs, scores, method, steps, engine)
    else:
        runs = EdgeRuns.prepare(model, pairs, ablation=ablation, check_baseline=check_baseline)
    cost = None
    if method == "exact" and engine == "batched":
        scores, cost = _exact_resumed(runs, chunk)
    elif method == "exact":
        scores = _exact(runs, runs.copies_per_forward(chunk), progress)
    else:
        scores = _from_gradients(
            runs,
            _gradient_runs(runs, method, steps),
            runs.copies_per_forward(chunk, grads=True),
            progress,
            fast=engine == "batched",
        )
    return _finished(runs, scores, method, steps, engine, cost)


def _bar_off(progress: bool | None, steps: int) -> bool | None:
    """tqdm's `disable`: as asked, else off for a few steps and on a terminal only (None: tqdm's
    own test), so a redirected log holds no bar."""
    if progress is not None:
        return not progress
    return True if steps < 4 else None


def _finished(
    runs: EdgeRuns, scores: Tensor, method: str, steps: int, engine: str, cost=None
) -> EdgeScores:
    options = {"method": method, **({"steps": steps} if "ig" in method else {}), "engine": engine}
    attrs = {
        **runs.provenance("edge_scores", **options),
        "model": runs.model.name,
        "ablation": runs.ablation or "corrupt",
        "n_prompts": len(runs.pairs),
        "metric": "mean logit difference",
        "steps": steps if "ig" in method else None,
        "engine": engine,
    }
    if cost is not None:
        attrs["cost"] = {
            "forward_equivalents": round(cost.forward_equivalents, 3),
            "naive_forwards": cost.naive,
        }
    return EdgeScores(runs.graph, scores * runs.graph.exists, method, attrs)


# --- gradient methods -------------------------------------------------------------------------


@dataclass(frozen=True)
class _GradientRun:
    """One forward-backward: the first layer's input (None: the clean run's), and edge weights
    (None: every edge present) for `eap-ig-activations`' interpolated sender groups."""

    first_input: Tensor | None = None  # (batch, pos, d_model)
    absent: Tensor | None = None  # (sender, receiver)


def _gradient_runs(runs: EdgeRuns, method: str, steps: int) -> list[_GradientRun]:
    clean_input, off_input = runs.clean[0], runs.off[0]
    if method == "eap":
        return [_GradientRun()]
    if method == "clean-corrupted":
        return [_GradientRun(), _GradientRun(first_input=off_input)]
    if method == "eap-ig-inputs":
        return [
            _GradientRun(first_input=off_input + (k / steps) * (clean_input - off_input))
            for k in range(steps)
        ]
    graph, found = runs.graph, []
    for group in _sender_groups(graph):
        for k in range(1, steps + 1):
            absent = torch.zeros(graph.exists.shape)
            absent[group] = (1 - k / steps) * graph.exists[group].float()
            found.append(_GradientRun(absent=absent))
    return found


def _sender_groups(graph: Graph) -> list[slice]:
    """The input, each layer's heads together, each MLP: what eap-ig-activations interpolates."""
    groups, h = [slice(0, 1)], graph.n_heads
    for layer in range(graph.n_layers):
        first = 1 + layer * (h + 1)
        groups += [slice(first, first + h), slice(first + h, first + h + 1)]
    return groups


def _from_gradients(
    runs: EdgeRuns,
    gradient_runs: list[_GradientRun],
    size: int,
    progress,
    *,
    fast: bool,
    totals: dict[int, Tensor] | None = None,
) -> Tensor:
    """(clean − off) · the receivers' input gradients averaged over `gradient_runs` and the one run
    whose summed gradients are `totals`, when given."""
    n_runs = len(gradient_runs) + (totals is not None)
    totals = dict(totals or {})
    chunks = [gradient_runs[i : i + size] for i in range(0, len(gradient_runs), size)]
    for part in tqdm(chunks, desc="edge gradients", disable=_bar_off(progress, len(chunks))):
        for stage_index, grad in _gradients(runs, part, fast=fast).items():
            totals[stage_index] = grad if stage_index not in totals else totals[stage_index] + grad
    return _scores(runs, totals, n_runs)


def _scores(runs: EdgeRuns, totals: dict[int, Tensor], n_runs: int) -> Tensor:
    """(sender, receiver) float64: (clean − off) · each stage's summed gradients / n_runs."""
    graph = runs.graph
    delta = (runs.clean - runs.off).double().flatten(1)  # (sender, batch·pos·d_model)
    scores = torch.zeros(graph.exists.shape, dtype=torch.float64)
    for stage_index, stage in enumerate(graph.stages()):
        grad = totals[stage_index].double() / n_runs  # (batch, pos, receiver, d_model)
        by_receiver = grad.permute(0, 1, 3, 2).reshape(
            delta.shape[1], -1
        )  # (batch·pos·d_model, receiver)
        scores[: stage.senders, stage.receivers] = (delta[: stage.senders] @ by_receiver).cpu()
    return scores


def _with_gradient_pass(
    model: Model,
    pairs: PromptPairs,
    check_baseline: bool,
    *,
    gradients_on: Literal["clean", "corrupt"],
) -> tuple[EdgeRuns, dict[int, Tensor]]:
    """The two recording runs, one of which is also a gradient run: one forward fewer than
    `EdgeRuns.prepare` and a gradient run.

    `clean` for EAP (its one gradient run is the clean run); `corrupt` for EAP-IG on the inputs,
    whose Riemann sum starts at the corrupt run (k = 0): that step's first-layer input is the
    corrupt run's own, noise included, and nothing else of the prompt reaches the layers."""
    graph = Graph.of(model)
    runs = {"clean": pairs.clean_run, "corrupt": pairs.corrupt_run}
    recorded, logits = {}, {}
    for name, run in runs.items():
        if name == gradients_on:
            recorded[name], logits[name], grads = _recording_gradient_pass(model, graph, pairs, run)
        else:
            recorded[name], logits[name] = sender_outputs(model, graph, run, logits=True)
    base = collect.checked(model, pairs, logits["clean"], logits["corrupt"], check=check_baseline)
    return EdgeRuns(model, pairs, graph, recorded["clean"], recorded["corrupt"], base), grads


def _recording_gradient_pass(
    model: Model, graph: Graph, pairs: PromptPairs, run
) -> tuple[Tensor, Tensor, dict[int, Tensor]]:
    """One forward of `run` that records every sender's output and its final-position logits, and
    its backward from the mean logit difference to every receiver's input: (outputs, logits, grads)."""
    gradient_plan = EdgePlan(
        stages=graph.stages(), attn_in_norm=attn_in_norm(model), copies=1, batch=len(pairs)
    )
    recording_plan = EdgePlan(
        stages=graph.stages(), attn_in_norm=attn_in_norm(model), batch=len(pairs)
    )
    # Order matters: the noise is added first, the gradients' leaf is made from the noisy input, the recorder reads it.
    with (
        torch.enable_grad(),
        hooks.add_to_input(model, run.noise),
        receiver_gradients(model, gradient_plan) as grads,
        edge_hooks(model, recording_plan) as recorded,
    ):
        logits = hooks.final_logits(model, run.tokens).float()
        diff = metrics.logit_diff(logits, pairs.answers, pairs.wrong)
        torch.autograd.grad(diff.mean(), grads.leaf)
    check_reached(graph, recorded)
    outputs = torch.stack([recorded.outputs[s].detach() for s in range(len(graph.senders))])
    return outputs, logits.detach(), grads.grads


def _gradients(runs: EdgeRuns, part: list[_GradientRun], *, fast: bool) -> dict[int, Tensor]:
    """One forward and backward of len(part) stacked copies; each copy's mean logit difference is
    differentiated, so the recorded gradients are summed over copies.

    Runs with every edge present (all but eap-ig-activations') take the fast path, an ordinary
    forward whose gradients are split per receiver afterwards (`hooks.edge_gradients.receiver_gradients`)."""
    model, pairs, graph = runs.model, runs.pairs, runs.graph
    copies = len(part)
    first = torch.cat(
        [run.first_input if run.first_input is not None else runs.clean[0] for run in part]
    )
    leaf = first.detach().requires_grad_(True)
    with torch.enable_grad():  # also when called under no_grad: the view must be in the graph
        first = leaf.view_as(
            leaf
        )  # not a leaf itself: module-tracking modes (FlopCounterMode) hook modules' inputs
    if fast and all(run.absent is None for run in part):
        plan = runs.plan(copies, first_input=first)
        hooked = receiver_gradients(model, plan)
    else:
        absent = torch.stack(
            [
                run.absent if run.absent is not None else torch.zeros(graph.exists.shape)
                for run in part
            ]
        )
        plan = runs.plan(
            copies, absent=absent.to(model.device), grads=True, first_input=first, fast=fast
        )
        hooked = edge_hooks(model, plan)
    answers, wrong = hooks.stacked(pairs.answers, copies), hooks.stacked(pairs.wrong, copies)
    with torch.enable_grad(), hooked as record:
        logits = hooks.forward(model, pairs.clean_run, copies=copies).float()
        diff = metrics.logit_diff(logits, answers, wrong)
        # Gradients with respect to the input only: no weight gradients are computed (a plain
        # backward would spend about one more forward on them), and the receivers' taps still fire.
        torch.autograd.grad(hooks.per_copy(diff, copies).mean(1).sum(), leaf)
    return record.grads


# --- exact --------------------------------------------------------------------------------------


@torch.no_grad()
def _exact(runs: EdgeRuns, size: int, progress) -> Tensor:
    graph = runs.graph
    edges = graph.exists.nonzero()
    full = runs.mean_logit_diff(runs.logits(graph.full()[None]))[0]
    scores = torch.zeros(graph.exists.shape, dtype=torch.float64)
    starts = range(0, len(edges), size)
    for start in tqdm(starts, desc="exact edge scores", disable=_bar_off(progress, len(starts))):
        chunk = edges[start : start + size]
        circuits = graph.full()[None].repeat(len(chunk), 1, 1)
        circuits[torch.arange(len(chunk)), chunk[:, 0], chunk[:, 1]] = False
        removed = runs.mean_logit_diff(runs.logits(circuits, chunk=size, engine="reference"))
        scores[chunk[:, 0], chunk[:, 1]] = (full - removed).cpu()
    return scores


def _exact_resumed(runs: EdgeRuns, chunk: int | None) -> tuple[Tensor, RemovalCost]:
    """Every edge removed alone, each copy resumed at its receiver's layer (`graph/exact.py`)."""
    from actpatch.graph.exact import removal_logit_diffs

    edges = runs.graph.exists.nonzero()
    removed, cost = removal_logit_diffs(runs, edges, chunk=chunk)
    full = runs.mean_logit_diff(runs.base.clean_logits[None])[0]
    scores = torch.zeros(runs.graph.exists.shape, dtype=torch.float64)
    scores[edges[:, 0], edges[:, 1]] = full.cpu() - removed
    return scores, cost

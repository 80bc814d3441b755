"""Exact one-edge removals, stacked and resumed: m(every edge but s→r) for many edges at once.

With one edge s→r out of the circuit, the rule of `evaluate.py` changes only r's input, by
−(o_s(clean) − o_s(off)), so everything upstream of r is the clean run. Each removal is therefore
a copy of the clean run that enters the real decoder layers at r's layer, from the clean run's
recorded layer calls (`engine.batched.Resumer.resumed`, told that layer), and at positions from the first where any
sender's clean and off outputs differ (before it the copies are the clean run, taken from its
key/value cache). Copies are stacked per receiver stage; `hooks.edge_removal.removed_edges` changes r's
input on each copy's rows, and the layers above run unhooked. A logit receiver needs no layer
at all: the final norm and unembedding of the clean final residual stream minus the delta.

The work is counted as the batched engine counts it (decoder-layer × token calls, in forwards of
the clean batch); the plain path (`EdgeRuns.logits`, one whole forward per removal) is the oracle.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from actpatch import hooks, memory
from actpatch.engine.batched import Resumer
from actpatch.graph.evaluate import EdgeRuns, attn_in_norm
from actpatch.hooks.edge_removal import Removal, removed_edges
from actpatch.sites import Site


@dataclass
class RemovalCost:
    """Work of a set of removals, in forwards of the clean batch."""

    forward_equivalents: float
    naive: float  # one whole forward per removal

    @property
    def ratio(self) -> float:
        return self.forward_equivalents / self.naive if self.naive else 0.0


@torch.no_grad()
def removal_logit_diffs(
    runs: EdgeRuns, edges: Tensor, *, chunk: int | None = None
) -> tuple[Tensor, RemovalCost]:
    """(edge,) mean logit difference over the prompts (float64) with each (sender, receiver) in
    `edges` (edge, 2) removed alone, and the work it took."""
    model, pairs, graph = runs.model, runs.pairs, runs.graph
    size = chunk if chunk is not None else _copies_per_forward(runs)
    delta = runs.clean - runs.off  # (sender, batch, pos, d_model)
    differs = delta.abs().amax((0, 1, 3)).nonzero().flatten()
    start = (
        int(differs[0]) if len(differs) else pairs.seq_len - 1
    )  # positions before it are the clean run's
    stages = graph.stages()
    stage_of = torch.empty(len(graph.receivers), dtype=torch.long)
    for index, stage in enumerate(stages):
        stage_of[stage.receivers] = index
    n_layers = model.dims.n_layers
    heads = range(model.dims.n_heads)
    sites = [Site("resid_post", n_layers - 1)] + [
        Site("head", layer, head=h) for layer in range(n_layers) for h in heads
    ]
    clean = hooks.capture(model, pairs.clean_run, sites)
    for layer in range(n_layers):  # (batch, pos, head, d_head)
        clean[Site("head", layer)] = torch.stack(
            [clean.pop(Site("head", layer, head=h)) for h in heads], 2
        )
    resumer = Resumer(model, pairs.clean_run)
    result = torch.empty(len(edges), dtype=torch.float64)
    for index, stage in enumerate(stages):
        mine = (stage_of[edges[:, 1]] == index).nonzero().flatten()
        for part in mine.split(size) if len(mine) else ():
            senders, columns = edges[part, 0], edges[part, 1] - stage.receivers.start
            if stage.kind == "logits":
                final = clean[Site("resid_post", n_layers - 1)][:, -1]  # (batch, d_model)
                resid = final[None] - delta[senders, :, -1].to(
                    final.dtype
                )  # (copy, batch, d_model)
                logits = model.unembed(resid.flatten(0, 1)).view(len(part), len(pairs), -1)
            else:
                logits = _resumed(
                    runs, resumer, clean, stage, senders, columns.tolist(), delta, start
                )
            result[part] = runs.mean_logit_diff(logits)
    batch, seq = pairs.clean.shape
    forward = n_layers * batch * seq
    # the resumer's recording of the clean run and its resumed copies, and the capture above (one forward)
    cost = RemovalCost(
        (resumer.recording_tokens + resumer.patch_tokens) / forward + 1.0, float(len(edges))
    )
    return result, cost


def _resumed(
    runs: EdgeRuns,
    resumer: Resumer,
    clean: dict,
    stage,
    senders: Tensor,
    columns: list[int],
    delta: Tensor,
    start: int,
) -> Tensor:
    """(copy, batch, vocab) logits of copies of the clean run resumed at `stage`'s layer and `start`,
    the stage's last MLP at the final position only (the removals change its input, not which
    positions the logits read)."""
    model, copies = runs.model, len(columns)
    layer = stage.layer
    rows = delta[senders][:, :, start:].flatten(0, 1)  # copy-major (copy·batch, pos, d_model)
    removal = Removal(
        layer,
        stage.kind,
        attn_in_norm(model),
        columns,
        rows,
        clean[Site("head", layer)][:, start:] if stage.kind == "attn" else None,
    )
    joins = [layer] * copies  # every copy enters at the receivers' layer
    logits = resumer.resumed(joins, start, taps=[removed_edges(model, removal)])
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def _copies_per_forward(runs: EdgeRuns) -> int:
    """Copies that fit `memory.default_budget`: one layer's transient activations per copy (no per-head expansion here)."""
    batch, seq = runs.pairs.clean.shape
    per_copy = memory.copy_bytes(runs.model.dims, batch, seq, runs.clean.element_size())
    return max(1, memory.default_budget({p.device for p in runs.model.hf.parameters()}) // per_copy)

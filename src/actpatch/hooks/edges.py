"""Hooks for edge circuits: each receiver reads its own input, and each sender's output is recorded.

Under `edge_hooks` a forward of the real model computes, at every receiver r,

    input_r = residual stream there − Σ_s absent[s, r] · (o_s(current) − o_s(off))

where o_s is sender s's output in this forward, `off` its out-of-circuit value, and `absent` is 1
for an edge outside the circuit, 0 inside (fractions interpolate). Nothing is re-implemented:
- *input*: the first decoder layer's input (a pre-hook; it may be replaced, e.g. interpolated);
- *head h*: o_proj applied to z with every other head's slice zeroed, minus o_proj(0): one call of
  the real o_proj on a (batch, pos, head, head·d_head) block input gives all heads; where the
  family normalises attention's output before adding it (Gemma 3's post-attention RMSNorm), each
  head's output is that times the scale the norm computes from the layer's whole output in this
  forward (a norm is linear once its scale is fixed), so the heads still sum to what is added;
  in a circuit's forward (not in a recording run, which stays the model's own bit for bit) o_proj's
  output is then that sum plus its bias, rather than computed a second time;
- *MLP*: the output of the module the architecture table names `mlp`.
Receivers are pre-hooks on the norms that read the stream (attention's input norm, `mlp_in_norm`,
`final_norm`). A layer whose 3·H head inputs differ runs its real attention module on the batch
expanded H times, copy h carrying head h's inputs: its q input through the input norm, its k and
v inputs swapped in at the k and v projections (or spliced into a fused projection's output); the
attention's other arguments are expanded alike, and at o_proj head h's z is taken from copy h.
Under grouped-query attention each query head thus gets keys and values from its own input.

Rows are copy-major (`stack.py`): with `copies` circuits of `batch` prompts, row c·batch + b. The hooks are
registered through `attach.registered`, and every one is removed on exit, error or not.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import torch
from torch import Tensor, nn

from actpatch.hooks import attach
from actpatch.hooks.forward import final_position_only
from actpatch.hooks.layout import canonical
from actpatch.hooks.linear import bias_of, head_rows, linear_map
from actpatch.models.model import Model


@dataclass
class EdgePlan:
    """What one forward under `edge_hooks` does. `stages` come from `Graph.stages()`."""

    stages: list  # list[graph.nodes.Stage]
    attn_in_norm: str  # path of attention's input norm in a decoder layer
    copies: int = 1
    batch: int = 1
    absent: Tensor | None = (
        None  # (copies, sender, receiver): None records outputs and changes nothing
    )
    exists: Tensor | None = (
        None  # (sender, receiver) bool: the graph's edges (needed with `absent`)
    )
    off: Tensor | None = None  # (sender, batch, pos, d_model): each sender's out-of-circuit value
    grads: bool = False  # record ∂(backward's scalar)/∂(every receiver's input)
    # Per-head q/k/v from the projections' head rows, attention on H/KV copies, head outputs from
    # o_proj's head columns; False: the oracle (attention on H copies, o_proj on a block input).
    fast: bool = True
    first_input: Tensor | None = (
        None  # (copies·batch, pos, d_model): replaces the first layer's input
    )
    # The last layer's MLP only at the final position (the only one the logits read): its output
    # elsewhere is left 0. For runs whose logits and gradients are all that is read, not recordings.
    final_position_only: bool = False


@dataclass
class EdgeRecord:
    """Filled in by a forward (and a backward) under `edge_hooks`."""

    outputs: dict[int, Tensor] = field(
        default_factory=dict
    )  # sender -> (rows, pos, d_model), when recording only
    grads: dict[int, Tensor] = field(
        default_factory=dict
    )  # stage -> (batch, pos, receiver, d_model), summed over copies
    fired: set = field(default_factory=set)  # stages whose receivers were reached
    leaf: Tensor | None = None  # receiver_gradients: the first layer's input the gradients flow to


@contextmanager
def edge_hooks(model: Model, plan: EdgePlan) -> Iterator[EdgeRecord]:
    """Attach the edge taps for the block's forwards; yields what they record; always unhooks."""
    taps = _Taps(model, plan)
    with attach.registered(taps.registrations()):
        yield taps.record


class _Taps:
    def __init__(self, model: Model, plan: EdgePlan):
        self.model, self.plan, self.record = model, plan, EdgeRecord()
        self.dims = model.dims
        self.per_head: dict[
            int, str
        ] = {}  # layer -> "expand" (H copies) or "project" (H/KV copies) this forward
        self.projected: dict[
            int, list[Tensor]
        ] = {}  # layer -> the projections' outputs on the copies ("project")
        self.group = self.dims.n_heads // self.dims.n_kv_heads
        self.kv_inputs: dict[
            int, tuple[Tensor, Tensor]
        ] = {}  # layer -> normed k and v inputs (expanded rows)
        self.pending: dict[
            int, Tensor
        ] = {}  # layer -> per-head contributions awaiting the post-norm's scale
        self.summed: dict[
            int, Tensor
        ] = {}  # layer -> o_proj's output, from its heads' contributions
        # o(current) − o(off) of every sender so far: without gradients one buffer (copies, sender,
        # batch, pos, d_model) written in place, so a stage's weighted sum reads it without a copy;
        # with gradients a dict of separate tensors (in-place writes would break the backward).
        self.deltas: dict[int, Tensor] = {}
        self.buffer: Tensor | None = None
        self.total: Tensor | None = None  # Σ of every delta so far
        # Gemma 3: attention's output passes a norm before it is added, so `attn` is not o_proj's parent
        self.post_norm = model.arch.attn != model.arch.o_proj.rsplit(".", 1)[0]

    def registrations(self) -> list[attach.Registration]:
        model, arch = self.model, self.model.arch
        attention_path = arch.o_proj.rsplit(".", 1)[0]
        found = [(model.layer(0), self._first_input, "pre")]
        for stage_index, stage in enumerate(self.plan.stages):
            layer = stage.layer
            receiver = (
                self._attn_inputs(stage_index, stage)
                if stage.kind == "attn"
                else self._single_input(stage_index, stage)
            )
            found.append((receiver_norm(model, self.plan, stage), receiver, "pre"))
            found += trimmed(model, self.plan, stage)
            if stage.kind == "attn":
                found.append(
                    (model.submodule(layer, attention_path), self._expand_arguments(layer), "pre")
                )
                if self.plan.fast and self.plan.absent is not None:
                    for which, path in enumerate(
                        [arch.qkv] if isinstance(arch.qkv, str) else arch.qkv
                    ):
                        found.append(
                            (model.submodule(layer, path), self._skip_projection(layer), "pre")
                        )
                        found.append(
                            (
                                model.submodule(layer, path),
                                self._projected_output(layer, which),
                                "out",
                            )
                        )
                if isinstance(arch.qkv, str):
                    found.append((model.submodule(layer, arch.qkv), self._fused_kv(layer), "out"))
                else:
                    found.append(
                        (model.submodule(layer, arch.qkv[1]), self._kv_input(layer, 0), "pre")
                    )
                    found.append(
                        (model.submodule(layer, arch.qkv[2]), self._kv_input(layer, 1), "pre")
                    )
                found.append((model.submodule(layer, arch.o_proj), self._heads(stage), "pre"))
                found.append(
                    (model.submodule(layer, arch.o_proj), self._summed_heads(layer), "out")
                )
                if self.post_norm:
                    found.append((model.submodule(layer, arch.attn), self._post_norm(stage), "out"))
            elif stage.kind == "mlp":
                found.append((model.submodule(layer, arch.mlp), self._mlp_output(stage), "out"))
        return found

    # --- senders ---------------------------------------------------------------------------

    def _first_input(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        if self.plan.first_input is not None:
            hidden = self.plan.first_input.to(hidden.dtype)
        elif self.plan.grads:
            hidden = hidden.detach().requires_grad_(
                True
            )  # the leaf every receiver's gradient flows to
        self._store(0, hidden)
        if hidden is (args[0] if args else kwargs["hidden_states"]):
            return None
        return (
            ((hidden, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": hidden})
        )

    def _heads(self, stage):
        heads, d_head = self.dims.n_heads, self.dims.d_head
        layer = stage.layer

        def hook(o_proj, args, kwargs):
            z = args[0]
            mode = self.per_head.get(layer)
            factor = {"expand": heads, "project": self.group}.get(mode, 1)
            rows = z.shape[0] // factor
            h = torch.arange(heads, device=z.device)
            if (
                factor > 1
            ):  # head h's inputs rode on copy h ("expand") or h mod H/KV ("project"): take its z there
                by_copy = z.view(rows, factor, z.shape[1], heads, d_head)
                z = (
                    by_copy[:, h if mode == "expand" else h % factor, :, h]
                    .permute(1, 2, 0, 3)
                    .contiguous()
                )
            else:
                z = z.view(rows, z.shape[1], heads, d_head)
            matrix = linear_map(o_proj, known_only=True) if self.plan.fast else None
            if matrix is not None:  # o_proj's columns of head h times its z: the real weights, once
                contributions = torch.einsum(
                    "nphd,ehd->nphe", z, matrix.view(matrix.shape[0], heads, d_head).to(z.dtype)
                )
            else:
                eye = torch.eye(heads, dtype=z.dtype, device=z.device)
                block = (
                    torch.einsum("nphd,hg->nphgd", z, eye)
                    .reshape(rows, z.shape[1], heads, heads * d_head)
                    .contiguous()
                )
                contributions = o_proj.forward(block) - o_proj.forward(
                    torch.zeros_like(block[:1, :1, :1])
                )
            if self.post_norm:
                self.pending[layer] = contributions
            else:
                self._store_heads(stage, contributions)
            z = z.reshape(rows, z.shape[1], heads * d_head)
            if (
                matrix is None or self.plan.absent is None
            ):  # recording runs stay the model's own, bit for bit
                return (z, *args[1:]), kwargs
            # o_proj's output is the sum of its heads' contributions (and its bias): not computed twice
            wide = torch.promote_types(z.dtype, torch.float32)
            self.summed[layer] = (contributions.sum(-2, dtype=wide) + bias_of(o_proj).to(wide)).to(
                z.dtype
            )
            return (z[:1, :1], *args[1:]), kwargs

        return hook

    def _summed_heads(self, layer):
        def hook(o_proj, args, output):
            return self.summed.pop(layer, None)

        return hook

    def _post_norm(self, stage):
        def hook(norm, args, output):
            contributions = self.pending.pop(stage.layer)
            self._store_heads(stage, contributions * _fixed_scale(norm, args[0]).unsqueeze(-2))

        return hook

    def _store_heads(self, stage, contributions: Tensor) -> None:
        for h in range(self.dims.n_heads):
            self._store(stage.senders + h, contributions[:, :, h])

    def _mlp_output(self, stage):
        def hook(module, args, output):
            self._store(stage.senders, output[0] if isinstance(output, tuple) else output)

        return hook

    def _store(self, sender: int, output: Tensor) -> None:
        plan = self.plan
        if plan.absent is None:
            self.record.outputs[sender] = output
            return
        current, off = (
            output.view(plan.copies, plan.batch, *output.shape[1:]),
            plan.off[sender].to(output.dtype),
        )
        if plan.grads:
            delta = self.deltas[sender] = current - off
            self.total = delta if self.total is None else self.total + delta
            return
        if self.buffer is None:
            self.buffer = current.new_empty(plan.copies, len(plan.off), *current.shape[1:])
        delta = torch.sub(current, off, out=self.buffer[:, sender])
        self.total = delta.clone() if self.total is None else self.total.add_(delta)

    # --- receivers -------------------------------------------------------------------------

    def _receiver_inputs(
        self, stage_index: int, stage, resid: Tensor
    ) -> tuple[Tensor | None, bool]:
        """(copies, batch, pos, receiver, d_model) inputs of the stage's receivers, or None where
        they all equal the residual stream; and whether they differ between receivers.

        Σ absent·delta is summed over the edges out of the circuit, or, when fewer senders have an
        edge in it, as (Σ of every delta reaching the stage) − Σ present·delta: a small circuit
        then costs in proportion to its own edges, not the graph's."""
        plan, record = self.plan, self.record
        record.fired.add(stage_index)
        if plan.absent is None:
            return None, False
        copies, batch, n = plan.copies, plan.batch, stage.senders
        base = resid.view(copies, batch, *resid.shape[1:]).unsqueeze(-2)
        absent = plan.absent[:, :n, stage.receivers].to(resid.dtype)  # (copies, sender, receiver)
        # every receiver of a stage reads the same senders (not all of those before it: parallel MLPs)
        edges = plan.exists[:n, stage.receivers].to(device=resid.device, dtype=resid.dtype)
        present = edges - absent
        missing = absent.abs().sum((0, 2)).nonzero().flatten().tolist()
        kept = present.abs().sum((0, 2)).nonzero().flatten().tolist()
        differ = bool((absent != absent[..., :1]).any())
        if not missing:
            if not plan.grads:
                return None, False
            inputs = base.expand(*base.shape[:-2], absent.shape[-1], base.shape[-1])
        elif len(kept) < len(missing):
            unread = (
                (edges[:, 0] == 0).nonzero().flatten().tolist()
            )  # recorded, but no edge to this stage
            reaching = self.total - sum(
                (self._delta(s) for s in unread), torch.zeros((), device=resid.device)
            )
            inputs = base - reaching.unsqueeze(-2) + self._weighted(kept, present)
        else:
            inputs = base - self._weighted(missing, absent)
        if plan.grads:

            def keep(grad: Tensor) -> None:
                total = grad.sum(0)
                record.grads[stage_index] = (
                    total if stage_index not in record.grads else record.grads[stage_index] + total
                )

            attach.on_gradient(inputs, keep)
        return inputs, differ

    def _delta(self, sender: int) -> Tensor:
        return self.deltas[sender] if self.buffer is None else self.buffer[:, sender]

    def _weighted(self, senders: list[int], weights: Tensor) -> Tensor:
        """Σ_s weights[:, s, r] · delta_s, (copies, batch, pos, receiver, d_model); 0 for no senders.

        From the buffer: over the listed senders when they are few (a gathered copy), else over every
        sender before the stage, whose weights are 0 where unlisted; and per copy only once for each
        distinct column of weights (receivers reading the same edges share their sum; most of a small
        circuit's receivers read none of it, and a column of zeros is not multiplied at all)."""
        if not senders:
            return torch.zeros((), dtype=weights.dtype, device=weights.device)
        if self.buffer is None:
            deltas = torch.stack(
                [self.deltas[s] for s in senders], 1
            )  # (copies, sender, batch, pos, d_model)
            return torch.einsum("csbpd,csr->cbprd", deltas, weights[:, senders])
        copies, n, receivers = weights.shape
        if 2 * len(senders) < n:
            index = torch.tensor(senders, device=self.buffer.device)
            deltas, weights = self.buffer.index_select(1, index), weights[:, index]
        else:
            deltas = self.buffer[:, :n]
        shape = deltas.shape[2:]  # (batch, pos, d_model)
        flat = deltas.reshape(copies, deltas.shape[1], -1)  # (copies, sender, batch·pos·d_model)
        summed = flat.new_zeros(copies, receivers, flat.shape[-1])
        for copy in range(copies):
            columns, inverse = torch.unique(
                weights[copy].t(), dim=0, return_inverse=True
            )  # (distinct, sender)
            used = columns.any(1)
            distinct = flat.new_zeros(len(columns), flat.shape[-1])
            distinct[used] = columns[used] @ flat[copy]
            summed[copy] = distinct[inverse]
        return summed.view(copies, receivers, *shape).permute(0, 2, 3, 1, 4)

    def _single_input(self, stage_index, stage):
        def hook(norm, args, kwargs):
            inputs, _ = self._receiver_inputs(stage_index, stage, args[0])
            if inputs is None:
                return None
            return (inputs[..., 0, :].reshape(args[0].shape), *args[1:]), kwargs

        return hook

    def _attn_inputs(self, stage_index, stage):
        heads = self.dims.n_heads

        def hook(norm, args, kwargs):
            resid = args[0]
            self.per_head.pop(stage.layer, None)
            inputs, differ = self._receiver_inputs(stage_index, stage, resid)
            per_head = inputs is not None and (differ or self.plan.grads)
            if inputs is None:
                return None
            if not per_head:
                return (inputs[..., 0, :].reshape(resid.shape), *args[1:]), kwargs
            rows, pos, d = resid.shape
            if self.plan.fast and not self.plan.grads:
                self.per_head[stage.layer] = "project"
                self.projected[stage.layer] = self._project(
                    stage.layer, norm, inputs.reshape(rows, pos, 3 * heads, d)
                )
                return (
                    None  # the norm runs on the stream, its output is expanded and never projected
                )
            self.per_head[stage.layer] = "expand"
            # (rows, pos, qkv, head, d) -> per input kind (rows·head, pos, d), row n·H + h carrying head h
            split = (
                inputs.reshape(rows, pos, 3, heads, d)
                .permute(2, 0, 3, 1, 4)
                .reshape(3, rows * heads, pos, d)
            )
            self.kv_inputs[stage.layer] = (norm.forward(split[1]), norm.forward(split[2]))
            return (split[0], *args[1:]), kwargs

        return hook

    def _expand_arguments(self, layer):
        heads = self.dims.n_heads

        def hook(attention, args, kwargs):
            mode = self.per_head.get(layer)
            if mode is None or (mode == "project" and self.group == 1):
                return None
            if mode == "project":  # H/KV copies of every row, the hidden states included
                return repeated_call(args, kwargs, self.group)
            hidden = args[0] if args else kwargs["hidden_states"]
            expand = partial(_repeat_rows, rows=hidden.shape[0] // heads, times=heads)
            new_kwargs = {k: (v if k == "hidden_states" else expand(v)) for k, v in kwargs.items()}
            return ((args[0], *(expand(a) for a in args[1:])) if args else args), new_kwargs

        return hook

    def _project(self, layer: int, norm: nn.Module, inputs: Tensor) -> list[Tensor]:
        """The q/k/v projections' outputs (in their own layout) on H/KV copies of each row, from
        the receivers' inputs (rows, pos, 3·H, d_model): copy j carries query head h = g·(H/KV) + j's
        keys and values at KV head g, and every head's query (only those read from copy j matter)."""
        arch, heads, group = self.model.arch, self.dims.n_heads, self.group
        normed = norm.forward(inputs)  # the real norm, on each receiver's own input
        rows, pos = normed.shape[:2]
        fused = isinstance(arch.qkv, str)
        per_kind = []
        for which, kind in enumerate(("q", "k", "v")):
            module = self.model.submodule(layer, arch.qkv if fused else arch.qkv[which])
            matrix, bias = linear_map(module), bias_of(module)
            rows_of = head_rows(kind, self.model, matrix).to(
                normed.dtype
            )  # (unit, d_head, d_model)
            shift = canonical(kind, self.model, bias.to(normed.dtype))  # (unit, d_head)
            if kind != "q":  # query head h reads KV head h // group
                rows_of, shift = (
                    rows_of.repeat_interleave(group, 0),
                    shift.repeat_interleave(group, 0),
                )
            out = (
                torch.einsum(
                    "nphd,hed->nphe", normed[:, :, which * heads : (which + 1) * heads], rows_of
                )
                + shift
            )
            if kind == "q":
                out = out.unsqueeze(1).expand(rows, group, pos, heads, out.shape[-1])
            else:  # (rows, pos, KV, copy, d_head) -> (rows, copy, pos, KV, d_head)
                out = out.view(rows, pos, heads // group, group, -1).permute(0, 3, 1, 2, 4)
            per_kind.append(out.reshape(rows * group, pos, -1, out.shape[-1]))
        if not fused:
            return [out.flatten(-2) for out in per_kind]
        width = linear_map(self.model.submodule(layer, arch.qkv)).shape[0]
        raw = torch.empty(rows * group, pos, width, dtype=normed.dtype, device=normed.device)
        for kind, out in zip(("q", "k", "v"), per_kind):
            canonical(kind, self.model, raw)[...] = out
        return [raw]

    def _skip_projection(self, layer):
        def hook(projection, args, kwargs):
            if self.per_head.get(layer) != "project":
                return None
            return (
                args[0][:1, :1],
                *args[1:],
            ), kwargs  # its output is replaced: compute almost nothing

        return hook

    def _projected_output(self, layer, which: int):
        def hook(projection, args, output):
            if self.per_head.get(layer) != "project":
                return None
            return self.projected[layer][which]

        return hook

    def _kv_input(self, layer, which: int):
        def hook(projection, args, kwargs):
            if self.per_head.get(layer) != "expand":
                return None
            return (self.kv_inputs[layer][which], *args[1:]), kwargs

        return hook

    def _fused_kv(self, layer):
        heads, d_head = self.dims.n_heads, self.dims.d_head
        concat = self.model.arch.qkv_layout == "concat"

        def hook(projection, args, output):
            if self.per_head.get(layer) != "expand":
                return None
            k_input, v_input = self.kv_inputs[layer]
            k_out, v_out = projection.forward(k_input), projection.forward(v_input)
            if concat:  # [q | k | v], each heads·d_head wide
                width = heads * d_head
                return torch.cat(
                    [output[..., :width], k_out[..., width : 2 * width], v_out[..., 2 * width :]],
                    -1,
                )
            # interleaved: per head [q_h | k_h | v_h]
            per_head = [t.unflatten(-1, (heads, 3 * d_head)) for t in (output, k_out, v_out)]
            spliced = torch.cat(
                [
                    per_head[0][..., :d_head],
                    per_head[1][..., d_head : 2 * d_head],
                    per_head[2][..., 2 * d_head :],
                ],
                -1,
            )
            return spliced.flatten(-2)

        return hook


def _fixed_scale(norm: nn.Module, normed_input: Tensor) -> Tensor:
    """The per-feature factor an RMS norm multiplies `normed_input` by, (rows, pos, d_model): its
    scale 1/rms(x) computed from this very input, times its gain (read off the real module as
    norm(1)·√(1 + eps), so either gain convention, w or 1 + w, is what the module uses)."""
    if getattr(norm, "bias", None) is not None or "LayerNorm" in type(norm).__name__:
        # A LayerNorm also subtracts the mean and adds a bias: per-head outputs would need another rule.
        raise NotImplementedError(
            f"{type(norm).__name__} normalises attention's output before it is added; edge "
            "circuits define per-head outputs through such a norm only for RMS norms (Gemma 3)"
        )
    eps = getattr(norm, "eps", None)
    eps = getattr(norm, "variance_epsilon", 1e-6) if eps is None else eps
    ones = torch.ones(normed_input.shape[-1], dtype=normed_input.dtype, device=normed_input.device)
    gain = norm.forward(ones).float() * math.sqrt(1.0 + eps)
    x = normed_input.float()
    return (torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * gain).to(normed_input.dtype)


def receiver_norm(model: Model, plan: EdgePlan, stage) -> nn.Module:
    """The norm whose input a stage's receivers read: attention's input norm, the MLP's input
    norm, or the final norm (logits)."""
    if stage.kind == "attn":
        return model.submodule(stage.layer, plan.attn_in_norm)
    if stage.kind == "mlp":
        return model.submodule(stage.layer, model.arch.mlp_in_norm)
    return model.hf.get_submodule(model.arch.final_norm)


def trimmed(model: Model, plan: EdgePlan, stage) -> list[attach.Registration]:
    """The last layer's MLP run at the final position only, where the plan asks for it
    (`EdgePlan.final_position_only`) and `stage` is that MLP; else nothing. Registered after the
    stage's receiver, so that the MLP's output, padded back to every position, is what is recorded."""
    last = stage.kind == "mlp" and stage.layer == model.dims.n_layers - 1
    if not (last and plan.final_position_only):
        return []
    return final_position_only(model.submodule(stage.layer, model.arch.mlp))


def repeated_call(args: tuple, kwargs: dict, times: int) -> tuple[tuple, dict]:
    """A module call's (args, kwargs) with each row of its hidden states, and of every per-row
    tensor beside them, repeated `times` times, row by row (row n·times + j is copy j of row n)."""
    hidden = args[0] if args else kwargs["hidden_states"]
    expand = partial(_repeat_rows, rows=hidden.shape[0], times=times)
    repeated = hidden.repeat_interleave(times, dim=0)
    new_kwargs = {k: repeated if k == "hidden_states" else expand(v) for k, v in kwargs.items()}
    return ((repeated, *(expand(a) for a in args[1:])) if args else args), new_kwargs


def _repeat_rows(value: Any, rows: int, times: int) -> Any:
    """`value` with each of its `rows` batch rows repeated `times` times, row by row (tensors, and
    tuples of them, whose first dimension is the batch); anything else as it is."""
    if isinstance(value, Tensor) and value.ndim >= 2 and value.shape[0] == rows and rows > 1:
        return value.repeat_interleave(times, dim=0)
    if isinstance(value, tuple):
        return tuple(_repeat_rows(v, rows, times) for v in value)
    return value

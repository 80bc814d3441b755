"""Receiver-input gradients of edge circuits from one ordinary forward and backward, for runs in
which every edge is present (EAP's clean run, EAP-IG's interpolated inputs): nothing is computed
per head in the forward, only the gradients are split per receiver afterwards."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import Tensor, nn

from actpatch.hooks.edges import EdgePlan, EdgeRecord, final_position_only, registered
from actpatch.hooks.layout import canonical
from actpatch.hooks.linear import head_rows, linear_map
from actpatch.models.model import Model


@contextmanager
def receiver_gradients(model: Model, plan: EdgePlan) -> Iterator[EdgeRecord]:
    """∂(the block's backward scalar)/∂(every receiver's input) from an ordinary forward and backward,
    for runs in which every edge is present (`plan.absent` is None): the clean run in EAP, the
    interpolated-input runs of EAP-IG on the inputs.

    With every edge present each head's q, k and v inputs all equal the residual stream, so nothing
    needs computing per head in the forward; only the gradients must be split. Between the stream
    and a head's q (k, v) stand the input norm and the projection's rows of that head: the gradient
    at the projection's output, sliced by head, is taken back through those rows (a per-head product
    with the projection's matrix) and then through the real norm as one batched vector-Jacobian
    product for all 3·H receivers of the layer (one forward of the norm, its backward batched). Under grouped-query attention a KV head's k and v
    serve several query heads; to split their gradients the attention runs on `group` = H / KV
    copies of the batch (copy j carries query heads j, j + group, ... : at o_proj each head's z is
    taken from its own copy), the projections themselves run once, on the real rows, and are
    repeated. Filled in when the block exits; `record.grads` as under `edge_hooks`."""
    taps = _GradTaps(model, plan)
    with registered(taps):
        yield taps.record
    taps.finish()


class _GradTaps:
    def __init__(self, model: Model, plan: EdgePlan):
        if plan.absent is not None:
            raise ValueError("receiver_gradients is for runs with every edge present; use edge_hooks(grads=True)")
        self.model, self.plan, self.record, self.dims = model, plan, EdgeRecord(), model.dims
        self.group = self.dims.n_heads // self.dims.n_kv_heads
        self.rows: int | None = None
        self.norm_inputs: dict[int, Tensor] = {}  # layer -> what attention's input norm read (rows, pos, d_model)
        self.output_grads: dict[tuple[int, int], Tensor] = {}  # (layer, q/k/v) -> gradient at the projection output

    def registrations(self) -> list[tuple[nn.Module, Any, str]]:
        model, arch = self.model, self.model.arch
        attention_path = arch.o_proj.rsplit(".", 1)[0]
        found = [(model.layer(0), self._first_input, "pre")]
        for stage_index, stage in enumerate(self.plan.stages):
            layer = stage.layer
            if stage.kind == "attn":
                found.append((model.submodule(layer, self.plan.attn_in_norm), self._norm_input(stage_index, layer), "pre"))
                if self.group > 1:
                    found.append((model.submodule(layer, attention_path), self._expand_arguments, "pre"))
                    found.append((model.submodule(layer, arch.o_proj), self._own_copy_z, "pre"))
                paths = [arch.qkv] if isinstance(arch.qkv, str) else list(arch.qkv)
                for which, path in enumerate(paths):
                    projection = model.submodule(layer, path)
                    if self.group > 1:
                        found.append((projection, self._real_rows, "pre"))
                    found.append((projection, self._projection_output(layer, which), "out"))
            else:
                module = (model.submodule(layer, model.arch.mlp_in_norm) if stage.kind == "mlp"
                          else model.hf.get_submodule(arch.final_norm))
                found.append((module, self._single_input(stage_index), "pre"))
                if stage.kind == "mlp" and self.plan.final_position_only and layer == self.dims.n_layers - 1:
                    found += final_position_only(model.submodule(layer, arch.mlp))
        return found

    def _first_input(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        self.rows = hidden.shape[0]
        replaced = self.plan.first_input.to(hidden.dtype) if self.plan.first_input is not None else hidden.detach()
        if not replaced.requires_grad:
            self.record.leaf = replaced.requires_grad_(True)
            replaced = replaced.view_as(replaced)  # not a leaf itself: module-tracking modes hook modules' inputs
        return ((replaced, *args[1:]), kwargs) if args else (args, {**kwargs, "hidden_states": replaced})

    def _norm_input(self, stage_index: int, layer: int):
        def hook(norm, args, kwargs):
            self.record.fired.add(stage_index)
            self.norm_inputs[layer] = args[0].detach()
        return hook

    def _single_input(self, stage_index: int):
        record = self.record

        def hook(norm, args, kwargs):
            record.fired.add(stage_index)
            mine = args[0].view_as(args[0])  # its own node: the gradient through this receiver alone

            def keep(grad: Tensor) -> None:
                record.grads[stage_index] = grad.unflatten(0, (self.plan.copies, -1)).sum(0).unsqueeze(-2)

            mine.register_hook(keep)
            return (mine, *args[1:]), kwargs
        return hook

    def _expand_arguments(self, attention, args, kwargs):
        group, rows = self.group, self.rows

        def expand(value):  # per-row tensors only: a batch-1 mask broadcasts as it is
            if isinstance(value, Tensor) and value.ndim >= 2 and value.shape[0] == rows and rows > 1:
                return value.repeat_interleave(group, dim=0)
            if isinstance(value, tuple):
                return tuple(expand(v) for v in value)
            return value

        if args:
            return (args[0].repeat_interleave(group, dim=0), *(expand(a) for a in args[1:])), {k: expand(v) for k, v in kwargs.items()}
        return args, {k: (v.repeat_interleave(group, dim=0) if k == "hidden_states" else expand(v)) for k, v in kwargs.items()}

    def _real_rows(self, projection, args, kwargs):
        # The copies' inputs are equal: project the real rows once and repeat the output.
        return (args[0][:: self.group], *args[1:]), kwargs

    def _projection_output(self, layer: int, which: int):
        def hook(projection, args, output):
            repeated = output.repeat_interleave(self.group, dim=0) if self.group > 1 else output.view_as(output)

            def keep(grad: Tensor) -> None:
                self.output_grads[(layer, which)] = grad

            repeated.register_hook(keep)
            return repeated
        return hook

    def _own_copy_z(self, o_proj, args, kwargs):
        heads, d_head, group = self.dims.n_heads, self.dims.d_head, self.group
        z = args[0]
        by_copy = z.view(-1, group, z.shape[1], heads, d_head)  # (rows, copy, pos, head, d_head)
        h = torch.arange(heads, device=z.device)
        own = by_copy[:, h % group, :, h]  # (head, rows, pos, d_head): head h from copy h mod group
        return (own.permute(1, 2, 0, 3).reshape(by_copy.shape[0], z.shape[1], heads * d_head), *args[1:]), kwargs

    # --- after the backward ------------------------------------------------------------------

    def finish(self) -> None:
        """Each layer's 3·H receiver-input gradients, from the projection-output gradients."""
        arch, group = self.model.arch, self.group
        fused = isinstance(arch.qkv, str)
        for stage_index, stage in enumerate(self.plan.stages):
            if stage.kind != "attn" or stage_index not in self.record.fired:
                continue
            layer, x = stage.layer, self.norm_inputs[stage.layer]
            cotangents = []
            for which, kind in enumerate(("q", "k", "v")):
                projection = self.model.submodule(layer, arch.qkv if fused else arch.qkv[which])
                per_head_map = head_rows(kind, self.model, linear_map(projection))  # (unit, d_head, d_model)
                grad = self.output_grads.get((layer, 0 if fused else which))
                if grad is None:  # nothing downstream depends on this projection
                    cotangents.append(torch.zeros(*x.shape[:2], self.dims.n_heads, x.shape[-1], dtype=x.dtype, device=x.device))
                    continue
                grad = canonical(kind, self.model, grad).unflatten(0, (-1, group))  # (rows, copy, pos, unit, d_head)
                if kind == "q":  # head h's z is read from one copy only: in the others its gradient is 0
                    grad = grad.sum(1)
                else:  # query head h = g·group + j reads KV head g in copy j
                    grad = grad.permute(0, 2, 3, 1, 4).flatten(2, 3)
                    per_head_map = per_head_map.repeat_interleave(group, dim=0)
                cotangents.append(torch.einsum("rphe,hed->hrpd", grad, per_head_map.to(grad.dtype)))
            cotangent = torch.cat(cotangents)  # (3·H, rows, pos, d_model): q of every head, then k, then v
            norm = self.model.submodule(layer, self.plan.attn_in_norm)
            with torch.enable_grad():  # one forward of the norm, its vector-Jacobian product batched over receivers
                leaf = x.clone().requires_grad_(True)
                (grad_in,) = torch.autograd.grad(norm.forward(leaf), leaf, cotangent.to(x.dtype), is_grads_batched=True)
            per_receiver = grad_in.unflatten(1, (self.plan.copies, -1)).sum(1)  # (3·H, batch, pos, d_model)
            self.record.grads[stage_index] = per_receiver.permute(1, 2, 0, 3)

"""Receiver-input gradients of edge circuits from one ordinary forward and backward, for runs in
which every edge is present (EAP's clean run, EAP-IG's interpolated inputs): nothing is computed
per head in the forward, only the gradients are split per receiver afterwards."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor

from actpatch.hooks import attach
from actpatch.hooks.edges import EdgePlan, EdgeRecord, receiver_norm, repeated_call, trimmed
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
    and a head's q (k, v) stand the input norm and the projection's rows of that head: during the
    backward, the gradient at the projection's output, sliced by head, is taken back through those
    rows (a per-head product with the projection's matrix) and then through the real norm as one
    batched vector-Jacobian product for the layer's H receivers of that kind (one forward of the
    norm, its backward batched). The per-head products *are* the projection's backward: their sum
    is what is passed on to the stream, so the split costs no product twice. Under grouped-query attention a KV head's k and v
    serve several query heads; to split their gradients the attention runs on `group` = H / KV
    copies of the batch (copy j carries query heads j, j + group, ... : at o_proj each head's z is
    taken from its own copy), the projections themselves run once, on the real rows, and are
    repeated. Filled in when the block exits; `record.grads` as under `edge_hooks`."""
    taps = _GradTaps(model, plan)
    with attach.registered(taps.registrations()):
        yield taps.record
    taps.finish()


class _GradTaps:
    def __init__(self, model: Model, plan: EdgePlan):
        if plan.absent is not None:
            raise ValueError(
                "receiver_gradients is for runs with every edge present; use edge_hooks(grads=True)"
            )
        self.model, self.plan, self.record, self.dims = model, plan, EdgeRecord(), model.dims
        self.group = self.dims.n_heads // self.dims.n_kv_heads
        self.norm_inputs: dict[
            int, Tensor
        ] = {}  # layer -> what attention's input norm read (rows, pos, d_model)
        self.attached: dict[
            tuple[int, int], Tensor
        ] = {}  # (layer, projection) -> its input, in the autograd graph
        self.per_kind: dict[
            tuple[int, str], Tensor
        ] = {}  # (layer, q/k/v) -> (head, batch, pos, d_model) gradients

    def registrations(self) -> list[attach.Registration]:
        model, arch = self.model, self.model.arch
        attention_path = arch.o_proj.rsplit(".", 1)[0]
        found = [(model.layer(0), self._first_input, "pre")]
        for stage_index, stage in enumerate(self.plan.stages):
            layer = stage.layer
            receiver = (
                self._norm_input(stage_index, layer)
                if stage.kind == "attn"
                else self._single_input(stage_index)
            )
            found.append((receiver_norm(model, self.plan, stage), receiver, "pre"))
            found += trimmed(model, self.plan, stage)
            if stage.kind == "attn":
                if self.group > 1:
                    found.append(
                        (model.submodule(layer, attention_path), self._expand_arguments, "pre")
                    )
                    found.append((model.submodule(layer, arch.o_proj), self._own_copy_z, "pre"))
                paths = [arch.qkv] if isinstance(arch.qkv, str) else list(arch.qkv)
                for which, path in enumerate(paths):
                    projection = model.submodule(layer, path)
                    found.append((projection, self._detached_input(layer, which), "pre"))
                    found.append((projection, self._projection_output(layer, which), "out"))
        return found

    def _first_input(self, module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        replaced = (
            self.plan.first_input.to(hidden.dtype)
            if self.plan.first_input is not None
            else hidden.detach()
        )
        if not replaced.requires_grad:
            self.record.leaf = replaced.requires_grad_(True)
            replaced = replaced.view_as(
                replaced
            )  # not a leaf itself: module-tracking modes hook modules' inputs
        return (
            ((replaced, *args[1:]), kwargs)
            if args
            else (args, {**kwargs, "hidden_states": replaced})
        )

    def _norm_input(self, stage_index: int, layer: int):
        def hook(norm, args, kwargs):
            self.record.fired.add(stage_index)
            self.norm_inputs[layer] = args[0].detach()

        return hook

    def _single_input(self, stage_index: int):
        record = self.record

        def hook(norm, args, kwargs):
            record.fired.add(stage_index)
            mine = args[0].view_as(
                args[0]
            )  # its own node: the gradient through this receiver alone

            def keep(grad: Tensor) -> None:
                record.grads[stage_index] = (
                    grad.unflatten(0, (self.plan.copies, -1)).sum(0).unsqueeze(-2)
                )

            attach.on_gradient(mine, keep)
            return (mine, *args[1:]), kwargs

        return hook

    def _expand_arguments(self, attention, args, kwargs):
        return repeated_call(args, kwargs, self.group)

    def _detached_input(self, layer: int, which: int):
        def hook(projection, args, kwargs):
            # The copies' inputs are equal: project the real rows once (the output is repeated).
            real = args[0][:: self.group] if self.group > 1 else args[0]
            self.attached[(layer, which)] = real
            # Its own backward is not run: `_PerHeadBackward` computes the same product head by head.
            return (real.detach(), *args[1:]), kwargs

        return hook

    def _projection_output(self, layer: int, which: int):
        kinds = (
            ("q", "k", "v") if isinstance(self.model.arch.qkv, str) else (("q", "k", "v")[which],)
        )

        def split(grad: Tensor) -> Tensor:
            total = None
            for kind in kinds:
                cotangent = self._cotangent(
                    layer, kind, grad
                )  # (head, rows, pos, d_model) at the norm's output
                self.per_kind[(layer, kind)] = self._through_norm(layer, cotangent)
                total = cotangent.sum(0) if total is None else total + cotangent.sum(0)
            return total

        def hook(projection, args, output):
            repeated = output.repeat_interleave(self.group, dim=0) if self.group > 1 else output
            return _PerHeadBackward.apply(repeated, self.attached.pop((layer, which)), split)

        return hook

    def _own_copy_z(self, o_proj, args, kwargs):
        heads, d_head, group = self.dims.n_heads, self.dims.d_head, self.group
        z = args[0]
        by_copy = z.view(-1, group, z.shape[1], heads, d_head)  # (rows, copy, pos, head, d_head)
        h = torch.arange(heads, device=z.device)
        own = by_copy[:, h % group, :, h]  # (head, rows, pos, d_head): head h from copy h mod group
        return (
            own.permute(1, 2, 0, 3).reshape(by_copy.shape[0], z.shape[1], heads * d_head),
            *args[1:],
        ), kwargs

    # --- in the backward ---------------------------------------------------------------------

    def _cotangent(self, layer: int, kind: str, grad: Tensor) -> Tensor:
        """(head, rows, pos, d_model): each query head's share of the gradient at the projection's
        input, from `grad` at its (repeated) output: head h's rows of the matrix times its slice."""
        arch, group = self.model.arch, self.group
        projection = self.model.submodule(
            layer, arch.qkv if isinstance(arch.qkv, str) else arch.qkv[("q", "k", "v").index(kind)]
        )
        per_head_map = head_rows(
            kind, self.model, linear_map(projection)
        )  # (unit, d_head, d_model)
        grad = canonical(kind, self.model, grad).unflatten(
            0, (-1, group)
        )  # (rows, copy, pos, unit, d_head)
        if kind == "q":  # head h's z is read from one copy only: in the others its gradient is 0
            grad = grad.sum(1)
        else:  # query head h = g·group + j reads KV head g in copy j
            grad = grad.permute(0, 2, 3, 1, 4).flatten(2, 3)
            per_head_map = per_head_map.repeat_interleave(group, dim=0)
        return torch.einsum("rphe,hed->hrpd", grad, per_head_map.to(grad.dtype))

    def _through_norm(self, layer: int, cotangent: Tensor) -> Tensor:
        """(head, batch, pos, d_model): the cotangents taken back through the real input norm (one
        forward of it, its vector-Jacobian product batched over heads), summed over copies."""
        x = self.norm_inputs[layer]
        norm = self.model.submodule(layer, self.plan.attn_in_norm)
        with (
            torch.enable_grad()
        ):  # a backward of its own, inside the model's (as reentrant checkpoints do)
            leaf = x.clone().requires_grad_(True)
            (grad_in,) = torch.autograd.grad(
                norm.forward(leaf), leaf, cotangent.to(x.dtype), is_grads_batched=True
            )
        return grad_in.unflatten(1, (self.plan.copies, -1)).sum(1)

    # --- after the backward ------------------------------------------------------------------

    def finish(self) -> None:
        """Each layer's 3·H receiver-input gradients: q of every head, then k, then v."""
        for stage_index, stage in enumerate(self.plan.stages):
            if stage.kind != "attn" or stage_index not in self.record.fired:
                continue
            x = self.norm_inputs[stage.layer]
            zeros = x.new_zeros(self.dims.n_heads, x.shape[0] // self.plan.copies, *x.shape[1:])
            # a projection nothing downstream depends on got no gradient: zeros
            found = [self.per_kind.get((stage.layer, kind), zeros) for kind in ("q", "k", "v")]
            self.record.grads[stage_index] = torch.cat(found).permute(1, 2, 0, 3)


class _PerHeadBackward(torch.autograd.Function):
    """Identity on a projection's output, whose backward sends `split(grad)` to the projection's
    input (`source`) instead of the projection's own backward (the input was detached from it)."""

    @staticmethod
    def forward(ctx, output: Tensor, source: Tensor, split) -> Tensor:
        ctx.split = split
        return output.view_as(output)

    @staticmethod
    def backward(ctx, grad: Tensor):
        return None, ctx.split(grad), None

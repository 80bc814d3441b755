"""The linear maps edge hooks read off real projections: a module's matrix and bias, and a
projection's rows of each head, so per-head q, k, v and o_proj pieces use the model's own weights."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from actpatch.hooks.layout import canonical
from actpatch.models.model import Model


def head_rows(kind: str, model: Model, matrix: Tensor) -> Tensor:
    """The rows of a projection's (d_out, d_in) matrix that compute each head's `kind`, as
    (unit, d_head, d_in): units are query heads for q, KV heads for k and v."""
    return canonical(kind, model, matrix.t()).permute(1, 2, 0)


def linear_map(module: nn.Module, *, known_only: bool = False) -> Tensor | None:
    """The (d_out, d_in) matrix M of a linear projection, module(x) = x Mᵀ + b: `nn.Linear`'s weight,
    GPT-2 `Conv1D`'s transposed; any other module is read off its outputs on the identity (or,
    with `known_only`, None)."""
    weight = getattr(module, "weight", None)
    if isinstance(module, nn.Linear):
        return weight
    if type(module).__name__ == "Conv1D" and weight is not None and weight.ndim == 2:
        return weight.t()
    if known_only:
        return None
    d_in = getattr(module, "in_features", None) or weight.shape[-1]
    eye = torch.eye(d_in, dtype=weight.dtype, device=weight.device)
    return (module.forward(eye) - module.forward(torch.zeros_like(eye[:1]))).t()


def bias_of(module: nn.Module) -> Tensor:
    """b of module(x) = x Mᵀ + b (zeros when it has none)."""
    bias = getattr(module, "bias", None)
    if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
        return (
            bias
            if isinstance(bias, Tensor)
            else torch.zeros(
                module.weight.shape[0 if isinstance(module, nn.Linear) else 1],
                dtype=module.weight.dtype,
                device=module.weight.device,
            )
        )
    matrix = linear_map(module)
    return module.forward(
        torch.zeros(1, matrix.shape[1], dtype=matrix.dtype, device=matrix.device)
    )[0]

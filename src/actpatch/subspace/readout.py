"""What the weights right after a site read from its vector: the row space of the next read-out.

A direction in the null space of the read-out is ignored by the model on every input; patching
it alone cannot change the output. Makelov et al. (2023) show a subspace patch can still work by
mixing such a direction with a *dormant* one that the read-out does see but real inputs never
move (the MLP-in-the-middle illusion), so the guards patch each part of a subspace alone.

The read-out of a head is its columns of the attention's output projection; of a neuron layer,
the MLP's down projection (for gated MLPs the neuron site is already the gated product, so this
is exact); of the last layer's residual (or the last MLP's output), the unembedding, with the
centring of a LayerNorm when the final norm is one (norm scales are diagonal and non-zero, so they
change no null space). A mid-stream residual has no single read-out: the residual stream carries
every direction on to every later layer and to the unembedding, which reads all of d_model in the
models we support; there the split is skipped and said so, and the full-component and random
controls carry the check.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from actpatch.hooks.linear import linear_map
from actpatch.models.model import Model
from actpatch.sites import Site

# Singular values below this share of the largest count as zero: float32 weights round at ~1e-7,
# and a read-out built with exact zeros (a planted model) gives zeros to ~1e-7.
RANK_TOL = 1e-5


def readout(model: Model, site: Site) -> tuple[Tensor | None, str]:
    """The (k, d) matrix through which the next weights read the site's d-vector, and a sentence
    naming it; (None, why) where the site has no single read-out."""
    layer = site.layer % model.dims.n_layers
    last = layer == model.dims.n_layers - 1
    with torch.no_grad():
        if site.kind == "head":
            o_proj = linear_map(model.submodule(layer, model.arch.o_proj)).float()
            d_head = model.dims.d_head
            return o_proj[
                :, site.head * d_head : (site.head + 1) * d_head
            ], "the head's columns of o_proj"
        if site.kind == "neuron":
            down = linear_map(model.submodule(layer, model.arch.mlp_down)).float()
            return down, "the MLP's down projection"
        if last and site.kind in ("resid_post", "mlp_out"):
            unembed = model.hf.get_output_embeddings().weight.float()
            norm = model.hf.get_submodule(model.arch.final_norm)
            if isinstance(norm, nn.LayerNorm):
                d = unembed.shape[1]
                unembed = unembed @ (torch.eye(d, device=unembed.device) - 1 / d)
                return unembed, "the unembedding after the final LayerNorm's centring"
            return unembed, "the unembedding"
    return None, (
        "a mid-stream residual: the stream carries every direction to later layers and the "
        "unembedding, so no direction is ignored downstream; the split is skipped"
    )


def row_space(matrix: Tensor) -> Tensor:
    """(d, k') orthonormal basis of the directions `matrix` (k, d) reads."""
    _, s, Vh = torch.linalg.svd(matrix.float(), full_matrices=False)
    keep = (
        s > RANK_TOL * s.max()
        if s.numel() and float(s.max()) > 0
        else torch.zeros_like(s, dtype=torch.bool)
    )
    return Vh[keep].T


def split(U: Tensor, row_basis: Tensor, *, tol: float = 1e-3) -> tuple[Tensor, Tensor, float]:
    """U's span split into the part in the row space and the part in the null space: two
    orthonormal bases (d, r_row), (d, r_null), and the share of U's squared norm in the row space.
    Components shorter than `tol` (U's columns have length 1) count as absent."""
    row_basis = row_basis.to(U)
    in_row = row_basis @ (row_basis.T @ U)
    share = float(in_row.pow(2).sum() / max(U.shape[1], 1))
    return _span(in_row, tol), _span(U - in_row, tol), share


def _span(A: Tensor, tol: float) -> Tensor:
    if A.shape[1] == 0:
        return A
    left, s, _ = torch.linalg.svd(A, full_matrices=False)
    return left[:, s > tol]

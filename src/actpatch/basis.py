"""The one contract every basis meets, and the one rule for patching in it.

A leaf module (torch only): sites name a basis, and everything above them builds on it.

A basis reads the activation at one site (`reads`) and writes into one site (`writes`): the same
site for an SAE or a subspace, the MLP's input and output for a transcoder. Patching latent i
moves the written activation by (f_source,i − f_target,i) · decoder[i], a rank-one write; what
the basis does not reconstruct is its *error* (written activation − reconstruction), one more
node per position. Patching every latent and the error is the plain patch of `writes`.
A basis may define `error(read, written)` where its error is not written − reconstruct(read):
`bases.nodes.NodeSet`, some of a dictionary's nodes written as one, is the case.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import Tensor


@runtime_checkable
class Basis(Protocol):
    """A basis at a hook point. Shapes use the site's width `d_in` (read) and `d_out` (written)."""

    name: str  # how results label it, e.g. "sae.resid_post.6" or "das.resid_pre.3"
    layer: int
    reads: str  # the site kind encoded (a sites.SiteKind, or "mlp_in" for transcoders)
    writes: str  # the site kind the decoder rows move
    d_in: int
    d_out: int
    n_latents: int

    def encode(self, x: Tensor) -> Tensor:
        """(..., d_in) → (..., n_latents): the coordinates of `x` in this basis."""

    def decoder(self) -> Tensor:
        """(n_latents, d_out): latent i writes f_i · row i into `writes`."""

    def reconstruct(self, x: Tensor) -> Tensor:
        """(..., d_in) → (..., d_out): the basis's estimate of the written activation from `x`."""


def move_latents(
    written: Tensor,
    source_latents: Tensor,
    target_latents: Tensor,
    decoder: Tensor,
    latents: Tensor | None = None,
) -> Tensor:
    """The written activation with the chosen latents set to the source's values.

    `written` (..., d_out) is the target run's activation; the latents are (..., n_latents);
    `latents` a boolean or index selection of latents (None: all). Linear in the difference, so a
    latent equal in both runs changes nothing, and stacking many such patches is cheap."""
    delta = source_latents - target_latents
    if latents is not None:
        keep = torch.zeros(delta.shape[-1], dtype=torch.bool, device=delta.device)
        keep[latents] = True
        delta = delta * keep.to(delta.dtype)
    return written + delta @ decoder.to(delta.dtype)


def error_of(basis: Basis, read: Tensor, written: Tensor) -> Tensor:
    """What `basis` does not reconstruct at these activations: its own `error(read, written)`
    where it defines one, else written − reconstruct(read)."""
    if (error := getattr(basis, "error", None)) is not None:
        return error(read, written)
    estimate = basis.reconstruct(read)
    return written.to(estimate.dtype) - estimate

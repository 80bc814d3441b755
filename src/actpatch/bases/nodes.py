"""Some of a dictionary's nodes written as one: what chosen latents and error nodes write together.

A feature circuit patches every node outside it, often thousands of latents at every position.
As one rank-one write each, that is thousands of encodes per forward. Seen as a basis, a set S of
a dictionary's nodes (latents at positions, the error node at positions) has one "error", what
those nodes write together, position by position:

    Σ_{i ∈ S} f_i(read) · decoder[i]  +  [error ∈ S] · (written − reconstruct(read))

Patching that `feature_error` site moves the written activation by exactly the sum of the moves of
its latents and its error node patched one by one (the tests compare the two), and the hooks and
engines take it as they take any basis: current values come from the same forward, so writes at
several dictionaries compose.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from actpatch.basis import Basis, error_of


@dataclass(eq=False)  # compared by identity, as every basis a site holds
class NodeSet:
    """Nodes of `dictionary`: `latents` (batch, pos, n_latents) and `errors` (batch, pos), True
    where the latent (or the error node) at that prompt and position is in the set."""

    dictionary: Basis
    latents: Tensor
    errors: Tensor

    @property
    def name(self) -> str:
        return f"{self.dictionary.name}.nodes"

    @property
    def layer(self) -> int:
        return self.dictionary.layer

    @property
    def reads(self) -> str:
        return self.dictionary.reads

    @property
    def writes(self) -> str:
        return self.dictionary.writes

    @property
    def d_in(self) -> int:
        return self.dictionary.d_in

    @property
    def d_out(self) -> int:
        return self.dictionary.d_out

    @property
    def n_latents(self) -> int:
        return self.dictionary.n_latents

    def encode(self, x: Tensor) -> Tensor:
        return self.dictionary.encode(x)

    def decoder(self) -> Tensor:
        return self.dictionary.decoder()

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.dictionary.reconstruct(x)

    def error(self, read: Tensor, written: Tensor) -> Tensor:
        """(batch, pos, d_out): what the set's nodes write together in this activation."""
        latents = self.dictionary.encode(read) if bool(self.latents.any()) else None
        error = error_of(self.dictionary, read, written) if bool(self.errors.any()) else None
        return self.written_by(latents, error, like=written)

    def written_by(self, latents: Tensor | None, error: Tensor | None, *, like: Tensor) -> Tensor:
        """What the set writes when the dictionary's latents (batch, pos, n_latents) and error
        (batch, pos, d_out) take these values (None: not needed, the set holds none of them):
        the value its `feature_error` site is patched with. `like`: an activation of that shape."""
        out = torch.zeros(like.shape, dtype=torch.float32, device=like.device)
        if error is not None:
            kept = self.errors.to(like.device)[..., None]
            out = torch.where(kept, error.float(), out)
        if latents is not None:
            chosen = latents.float() * self.latents.to(like.device)
            out = out + chosen @ self.dictionary.decoder().to(like.device)
        return out

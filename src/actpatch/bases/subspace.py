"""A subspace as a basis: U orthonormal (d × r) at one site; its patch moves U Uᵀ (x_s − x_t).

Encoding is x ↦ x U (the coordinates in the subspace), the decoder is Uᵀ, the reconstruction
U Uᵀ x. What the subspace misses, (I − U Uᵀ) x, is its error and is never patched, so the patched
vector is x_t + U Uᵀ (x_s − x_t): `move_latents` with every latent. U comes from a direction, a
basis, PCA of activations, a difference of class means, or distributed alignment search
(`actpatch.subspace.das`). Running patches is `actpatch.subspace.patching`'s job.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from actpatch import caller
from actpatch.bases import vectors
from actpatch.bases.basis import move_latents
from actpatch.models.model import Model
from actpatch.pairs import PromptPairs
from actpatch.sites import Site

# How far UᵀU may stray from the identity and still count as orthonormal (float32 rounding of a
# QR factor is ~1e-6; a hand-typed basis that is merely close is not).
ORTHONORMAL_TOL = 1e-4


class BasisError(ValueError):
    """A subspace that cannot be used as given; the message says how to fix it."""


@dataclass(frozen=True, eq=False)
class Subspace:
    """span(U) at `site`: U is (d, r) with orthonormal columns, d the site's width (r = 0 allowed:
    patching it changes nothing)."""

    site: Site
    U: Tensor
    name: str = ""

    def __post_init__(self) -> None:
        site = vectors.as_site(self.site)
        object.__setattr__(self, "site", site)
        U = torch.as_tensor(self.U).detach().float()
        if U.ndim != 2:
            raise BasisError(
                f"U is (d, rank), one column per direction; got shape {tuple(U.shape)}"
            )
        object.__setattr__(self, "U", U)
        gram = U.T @ U
        if gram.numel() and float((gram - torch.eye(U.shape[1])).abs().max()) > ORTHONORMAL_TOL:
            raise BasisError(
                "U's columns are not orthonormal (UᵀU is not the identity); build it with "
                "Subspace.from_basis(site, vectors), which orthonormalises them and says so"
            )
        if not self.name:
            object.__setattr__(self, "name", f"subspace.{site.kind}.{site.layer}")

    # --- the Basis contract ---------------------------------------------------------------
    @property
    def layer(self) -> int:
        return self.site.layer

    @property
    def reads(self) -> str:
        """The site's kind: a subspace reads and writes the one site it lives in."""
        return self.site.kind

    writes = reads

    @property
    def d_in(self) -> int:
        """The site's width, read and written alike."""
        return self.U.shape[0]

    d_out = d_in

    @property
    def rank(self) -> int:
        """The subspace's dimensions, U's columns; each is one latent of the basis."""
        return self.U.shape[1]

    n_latents = rank

    def encode(self, x: Tensor) -> Tensor:
        return x @ self.U.to(device=x.device, dtype=x.dtype)

    def decoder(self) -> Tensor:
        return self.U.T

    def reconstruct(self, x: Tensor) -> Tensor:
        U = self.U.to(device=x.device, dtype=x.dtype)
        return x @ U @ U.T

    def patched(self, source: Tensor, target: Tensor) -> Tensor:
        """x_t + U Uᵀ (x_s − x_t): the target's vector, its part in the subspace the source's."""
        return move_latents(
            target, self.encode(source), self.encode(target), self.decoder().to(target.device)
        )

    def at(self, **site: Any) -> Subspace:
        """The same U at another site of the same width: `basis.at(layer=3)`, `at(head=2)`,
        `at(pos="S2")` (the fields of `Site`); to patch one shared basis at several sites."""
        return Subspace(dataclasses.replace(self.site, **site), self.U, self.name)

    def check_width(self, model: Model) -> None:
        """Raise unless U is as wide as the site's vector on `model`."""
        d = vectors.width(model, self.site)
        if self.d_in != d:
            raise BasisError(
                f"{self.site}: U has {self.d_in} rows but the site's vector is {d} wide on "
                f"{model.name}; build the subspace from vectors of length {d}"
            )

    # --- constructors -----------------------------------------------------------------------
    @classmethod
    def from_direction(cls, site: Site | str, direction: Tensor, *, name: str = "") -> Subspace:
        """The line spanned by `direction` (d,), normalised to unit length."""
        direction = torch.as_tensor(direction).detach().float().reshape(-1)
        norm = float(direction.norm())
        if norm == 0 or not torch.isfinite(direction).all():
            raise BasisError("a direction must be a finite, non-zero vector")
        return cls(site, (direction / norm)[:, None], name)

    @classmethod
    def from_basis(cls, site: Site | str, basis: Tensor, *, name: str = "") -> Subspace:
        """The span of the columns of `basis` (d, r), orthonormalised with a warning if need be."""
        basis = torch.as_tensor(basis).detach().float()
        if basis.ndim != 2:
            raise BasisError(
                f"a basis is (d, rank), one column per direction; got shape {tuple(basis.shape)}"
            )
        gram = basis.T @ basis
        if float((gram - torch.eye(basis.shape[1])).abs().max()) <= ORTHONORMAL_TOL:
            return cls(site, basis, name)
        q, r = torch.linalg.qr(basis)
        if basis.shape[1] > basis.shape[0] or bool(
            (r.diagonal().abs() < 1e-6 * r.abs().max()).any()
        ):
            raise BasisError(
                f"the {basis.shape[1]} basis vectors are linearly dependent; pass independent ones"
            )
        warnings.warn(
            "the basis vectors are not orthonormal; patching their span, orthonormalised by QR",
            stacklevel=caller.stacklevel(),
        )
        return cls(site, q, name)

    @classmethod
    def from_pca(
        cls, model: Model, pairs: PromptPairs, site: Site | str, rank: int, *, name: str = ""
    ) -> Subspace:
        """The top `rank` principal directions of the site's vectors over every prompt of both runs
        (and every position the site covers), centred on their mean."""
        site = vectors.as_site(site)
        check_rank(model, site, rank)
        runs = (pairs.clean_run, pairs.corrupt_run)
        X = torch.cat(
            [
                vectors.read(model, run, site).float().reshape(-1, vectors.width(model, site))
                for run in runs
            ]
        )
        _, _, Vh = torch.linalg.svd(X - X.mean(0), full_matrices=False)
        return cls(site, Vh[:rank].T.cpu(), name or f"pca.{site.kind}.{site.layer}")

    @classmethod
    def from_class_means(
        cls, model: Model, pairs: PromptPairs, site: Site | str, *, name: str = ""
    ) -> Subspace:
        """The direction from the corrupt prompts' mean vector to the clean prompts' mean vector."""
        site = vectors.as_site(site)
        d = vectors.width(model, site)
        means = [
            vectors.read(model, run, site).float().reshape(-1, d).mean(0)
            for run in (pairs.clean_run, pairs.corrupt_run)
        ]
        if float((means[0] - means[1]).norm()) == 0:
            raise BasisError(
                f"{site}: the clean and corrupt means are equal, so they define no direction"
            )
        return cls.from_direction(
            site, (means[0] - means[1]).cpu(), name=name or f"means.{site.kind}.{site.layer}"
        )


def check_rank(model: Model, site: Site, rank: int) -> None:
    """Raise unless 0 <= rank <= the site's width."""
    d = vectors.width(model, site)
    if not isinstance(rank, int) or not 0 <= rank <= d:
        raise BasisError(
            f"{site}: rank must be a whole number from 0 to the site's width {d}, got {rank!r}"
        )

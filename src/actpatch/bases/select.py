"""Which latents a feature sweep patches: `latents="active"`, the latents non-zero in either run.

A latent that is zero in both runs at a position cannot change anything there when patched, so
a sweep over the active ones loses nothing; the rest of a dictionary's latents (usually thousands)
would only cost forwards. Finding them costs one capture of each run.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from actpatch.bases.basis import Basis
from actpatch.hooks import add_to_input, capture
from actpatch.models.model import Model
from actpatch.pairs import PromptPairs
from actpatch.sites import Site, SiteError


def active_latents(
    model: Model, pairs: PromptPairs | Sequence[PromptPairs], basis: Basis, positions: Any = None
) -> list[int]:
    """The latents of `basis` non-zero at the swept `positions` ("each", "all" or None: every
    position; else indices and named positions) of any prompt, clean or corrupt, in index order."""
    if not isinstance(basis, Basis):
        raise SiteError(
            "latents='active' needs dictionary= (from actpatch.load_dictionary), "
            f"got {type(basis).__name__}"
        )
    groups = [pairs] if isinstance(pairs, PromptPairs) else list(pairs)
    active = torch.zeros(basis.n_latents, dtype=torch.bool)
    for group in groups:
        chosen = _chosen(positions)
        for run in (group.clean_run, group.corrupt_run):
            sites = [Site(basis.reads, basis.layer, pos=p) for p in chosen]
            with add_to_input(model, run.noise):
                read = capture(model, run.tokens, sites, named_positions=run.positions)
            for site in sites:
                latents = basis.encode(read[site])  # (batch, [pos,] n_latents)
                active |= (latents != 0).flatten(0, -2).any(0).cpu()
    return [int(i) for i in active.nonzero().flatten()]


def _chosen(positions: Any) -> list:
    if positions is None or (isinstance(positions, str) and positions in ("each", "all")):
        return [None]
    if isinstance(positions, (int, str)):
        return [positions]
    return list(positions)

"""The Gaussian-noise corruption (Meng et al. 2022, "causal tracing"): the corrupt run reads the
clean tokens with noise added to the first layer's input at chosen positions.

It needs no second prompt, which makes it easy to reach for, and that is its trap: noise several
standard deviations wide takes the model off the distribution it was trained on, so a component
can look important only because it reacts to the noise (Zhang & Nanda 2024; Heimersheim & Nanda
2024, section 3). Prefer a corruption that changes tokens (e.g. symmetric token replacement)
where one exists, and use this one as a second opinion."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch

from actpatch import hooks
from actpatch.models.model import Model
from actpatch.pairs import PairsError, PromptPairs
from actpatch.sites import Site

DEFAULT_SCALE = 3.0  # × the standard deviation of the first layer's input, as in causal tracing


def gaussian_noise(
    model: Model,
    pairs: PromptPairs,
    positions: Sequence[int | str] | str,
    *,
    scale: float = DEFAULT_SCALE,
    seed: int = 0,
) -> PromptPairs:
    """Pairs whose corrupt run is each clean prompt with Gaussian noise on its input embeddings at
    `positions` (indices, named positions like "S1", or "all"); answers and wrong answers are kept.

    The noise's standard deviation is `scale` × that of the clean runs' first-layer input (over
    every prompt, position and dimension), so it is comparable across models whatever their
    embedding scale (GPT-2 adds position embeddings there, Gemma multiplies by √d_model)."""
    if not isinstance(pairs, PromptPairs):
        raise TypeError(
            f"pairs must be PromptPairs (their clean prompts get the noise), got {type(pairs).__name__}"
        )
    if not scale > 0:
        raise PairsError(
            f"scale must be positive (a multiple of the input's standard deviation), got {scale!r}"
        )
    where = _mask(pairs, positions)
    inputs = hooks.capture(model, pairs.clean, [Site("resid_pre", 0)])[Site("resid_pre", 0)]
    std = float(inputs.double().std())
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(inputs.shape, generator=generator, dtype=torch.float32) * (scale * std)
    noise = noise * where.unsqueeze(-1)
    named = positions if isinstance(positions, str) else ",".join(map(str, positions))
    return dataclasses.replace(
        pairs,
        corrupt=pairs.clean.clone(),
        corrupt_text=pairs.clean_text,
        corrupt_noise=noise.to(inputs.dtype),
        corruption=f"gaussian_noise(positions={named}, scale={scale:g}, seed={seed})",
    )


def _mask(pairs: PromptPairs, positions: Sequence[int | str] | str) -> torch.Tensor:
    """(batch, pos) booleans: where each prompt gets noise."""
    batch, seq = pairs.clean.shape
    where = torch.zeros(batch, seq, dtype=torch.bool)
    if positions == "all":
        where[:] = True
        return where
    if isinstance(positions, (str, int)):
        positions = [positions]
    if not positions:
        raise PairsError(
            "positions is empty: name the positions to add noise at (e.g. ['S1'] or 'all')"
        )
    for p in positions:
        if isinstance(p, str):
            if p not in pairs.positions:
                raise PairsError(
                    f"no named position {p!r} in these prompts (named: {', '.join(pairs.positions) or 'none'})"
                )
            where[torch.arange(batch), pairs.positions[p]] = True
        elif isinstance(p, int) and -seq <= p < seq:
            where[:, p] = True
        else:
            raise PairsError(
                f"position {p!r} is out of range: these prompts have positions 0..{seq - 1}"
            )
    return where

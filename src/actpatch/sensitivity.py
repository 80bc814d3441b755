"""Sensitivity: the same sweep under several corruptions, side by side.

One corruption can hide components another reveals (Heimersheim & Nanda 2024), so a finding
should survive a change of corruption before it is believed."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import xarray as xr

from actpatch.engine.sweep import stacked, sweep
from actpatch.models.model import Model
from actpatch.pairs import PairsError, PromptPairs


def sweep_corruptions(
    model: Model, pairs_by_corruption: Mapping[str, PromptPairs], site: str, **options: Any
) -> xr.DataArray:
    """`sweep` once per corruption, stacked along a `corruption` dimension.

        ap.sweep_corruptions(model, {c: ap.tasks.ioi(model, 16, corruption=c) for c in ("abc", "s2")},
                             "head", positions=["END"])

    Sweeping at named positions keeps the runs comparable when corruptions move tokens."""
    if isinstance(pairs_by_corruption, PromptPairs) or not isinstance(pairs_by_corruption, Mapping):
        raise TypeError(
            "sweep_corruptions takes a dict {corruption name: PromptPairs}, got "
            f"{type(pairs_by_corruption).__name__}; for one set of pairs, call actpatch.sweep"
        )
    if not pairs_by_corruption:
        raise PairsError(
            "pairs_by_corruption is empty: give at least one {corruption name: PromptPairs}"
        )
    names = list(pairs_by_corruption)
    parts = [sweep(model, pairs_by_corruption[name], site, **options) for name in names]
    return stacked(parts, "corruption", names)

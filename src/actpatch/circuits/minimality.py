"""Minimality: does every member of a circuit earn its place?

A circuit that recovers the behaviour can still carry passengers, members whose removal costs
nothing (Heimersheim & Nanda 2024). Remove each member alone and measure what is lost."""
from __future__ import annotations

from typing import Sequence

import pandas as pd

from actpatch.circuits.components import checked, default_universe
from actpatch.circuits.evaluate import Ablation, Ablator
from actpatch.engine.plan import Direction
from actpatch.models.model import Model
from actpatch.pairs import PromptPairs
from actpatch.sites import Site


def minimality(
    model: Model,
    pairs: PromptPairs,
    circuit: Sequence[Site | str],
    *,
    threshold: float = 0.02,
    direction: Direction = "denoise",
    ablation: Ablation = None,
    components: Sequence[Site] | None = None,
    metric: str = "norm_logit_diff",
) -> pd.DataFrame:
    """One row per member: the circuit's `metric` without it, the drop its removal causes, and
    `passenger` where the drop is below `threshold` (in units of `metric`; for the normalised
    logit difference, 0.02 is 2% of the clean−corrupt gap).

    The drop is measured as the circuit is judged: for a denoised circuit, performance lost when
    the member is ablated too; for a noised one, loss no longer caused when the member is spared.
    A negative drop marks a member that works against the answer. `components` and `ablation` as
    in `evaluate_circuit`; the table's `attrs` hold the full circuit's score and the threshold.
    One forward per member."""
    members = checked(model, [Site.parse(s) if isinstance(s, str) else s for s in circuit])
    ablator = Ablator(model, pairs, components if components is not None else default_universe(model, members), ablation)
    sign = 1.0 if direction == "denoise" else -1.0
    full = ablator.score(members, direction, metric)
    rows = []
    for member in members:
        without = ablator.score([m for m in members if m != member], direction, metric)
        drop = sign * (full - without)
        rows.append({"component": str(member), "without": without, "drop": drop, "passenger": drop < threshold})
    table = pd.DataFrame(rows, columns=["component", "without", "drop", "passenger"]).set_index("component")
    table.attrs.update(ablator.provenance(direction, analysis="minimality", circuit=[str(m) for m in members],
                                          circuit_score=full, threshold=threshold, metric=metric))
    return table

"""Minimality: does every member of a circuit earn its place?

A circuit that recovers the behaviour can still carry passengers, members whose removal costs
nothing (Heimersheim & Nanda 2024). Remove each member alone and measure what is lost."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from actpatch.circuits.components import checked, default_universe
from actpatch.circuits.evaluate import Ablation, Ablator, interval_note
from actpatch.engine.plan import Direction
from actpatch.metrics import METRICS, check_metric
from actpatch.models.model import Model
from actpatch.pairs import PromptPairs
from actpatch.sites import Site
from actpatch.stats import bootstrap


@bootstrap.old_keywords("n_boot", "boot_seed")
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
    check_baseline: bool = True,
    ci: float | bootstrap.Bootstrap | None = None,
) -> pd.DataFrame:
    """One row per member: the circuit's `metric` without it, the drop its removal causes, and
    `passenger` where the drop is below `threshold` (in units of `metric`; for the normalised
    logit difference, 0.02 is 2% of the clean−corrupt gap).

    The drop is measured as the circuit is judged: for a denoised circuit, performance lost when the
    member is ablated too; for a noised one, loss no longer caused when the member is spared. A
    negative drop marks a member that works against the answer. `components` and `ablation` as in
    `evaluate_circuit`, and `check_baseline`; the table's `attrs` hold the full circuit's score and
    the threshold. One forward per member.

    `ci=0.95` asks whether each drop is distinguishable from 0 on these prompts: `drop_lo` and
    `drop_hi` bound it over resamples of the prompts (a level or an `actpatch.Bootstrap`) (the full
    circuit and the circuit without the member on the same resamples, so the drop is paired), and
    `drop_excludes_0` marks a member whose interval does not hold 0. A member with a drop over
    `threshold` whose interval holds 0 is not shown to be needed; one under it whose interval
    excludes 0 does something, if little. No extra forward: the same runs' per-prompt rows."""
    ci = bootstrap.Bootstrap.of(ci)
    check_metric(metric)
    members = checked(model, [Site.parse(s) if isinstance(s, str) else s for s in circuit])
    ablator = Ablator(
        model,
        pairs,
        components if components is not None else default_universe(model, members),
        ablation,
        check_baseline=check_baseline,
    )
    sign = 1.0 if direction == "denoise" else -1.0
    full_logits = ablator.logits(members, direction)
    full = ablator.score_of(full_logits, metric)
    rows, prompt_rows = [], [ablator.prompt_rows(full_logits)] if ci is not None else []
    for member in members:
        logits = ablator.logits([m for m in members if m != member], direction)
        without = ablator.score_of(logits, metric)
        drop = sign * (full - without)
        rows.append(
            {
                "component": str(member),
                "without": without,
                "drop": drop,
                "passenger": drop < threshold,
            }
        )
        if ci is not None:
            prompt_rows.append(ablator.prompt_rows(logits))
    table = pd.DataFrame(rows, columns=["component", "without", "drop", "passenger"]).set_index(
        "component"
    )
    table.attrs.update(
        ablator.provenance(
            direction,
            analysis="minimality",
            circuit=[str(m) for m in members],
            circuit_score=full,
            threshold=threshold,
            metric=metric,
        )
    )
    if ci is not None:
        boot = ablator.replicates(prompt_rows, ci)[
            :, METRICS.index(metric)
        ]  # (resample, 1 + member)
        table["drop_lo"], table["drop_hi"] = bootstrap.percentile(
            sign * (boot[:, :1] - boot[:, 1:]), ci
        )
        table["drop_excludes_0"] = (table["drop_lo"] > 0) | (table["drop_hi"] < 0)
        table.attrs["interval"] = interval_note(ci, len(pairs))
    return table

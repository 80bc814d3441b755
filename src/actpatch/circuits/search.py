"""Finding a circuit in one call: rank components by a sweep, grow circuits along the ranking
(the Pareto frontier), take the smallest that recovers enough of the behaviour, and remove each
member alone (minimality). `actpatch circuit` and examples/ioi_circuit.py both run this.

Not here: what a found circuit still has to survive (backup behaviour, another corruption, other
prompts): `circuits.backup`, `circuits.sensitivity`, `circuits.stability`."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import xarray as xr

from actpatch import results
from actpatch.circuits.evaluate import Ablation
from actpatch.circuits.frontier import Order, pareto_frontier, ranking, smallest_circuit
from actpatch.circuits.minimality import minimality
from actpatch.engine.spec import Direction, options_from
from actpatch.engine.sweep import sweep
from actpatch.models.model import Model
from actpatch.pairs import PromptPairs
from actpatch.sites import Site
from actpatch.stats import bootstrap


@dataclass(frozen=True)
class SearchOptions:
    """The keywords `find_circuit` takes beyond the common ones, as `SweepOptions` are for sweeps:
    pass them as keywords or as one value (`options=`)."""

    order: Order = "effect"  # rank by signed effect, most helpful first; "abs": by size
    sweep: Mapping[str, Any] = field(default_factory=dict)  # the ranking sweep's own keywords
    ranked_by: xr.DataArray | Sequence[Site | str] | None = None  # ranked instead of a sweep
    check_baseline: bool = True  # every step refuses prompts the model does not solve
    progress: bool | None = None


@dataclass(frozen=True, eq=False)
class CircuitSearch:
    """What `find_circuit` found: the circuit (None when no evaluated size recovers enough), the
    frontier it was read from, each member's removal, and the result the ranking came from."""

    circuit: list[Site] | None
    frontier: xr.DataArray  # metric × size: the top-k components kept, for each k evaluated
    minimality: pd.DataFrame | None  # one row per member; None without a circuit
    ranked_by: xr.DataArray | Sequence[Site | str]  # the sweep (or what was given) ranked
    attrs: dict = field(default_factory=dict, repr=False)  # provenance and self-checks

    @property
    def passengers(self) -> list[str]:
        """Members whose removal alone costs less than the threshold."""
        if self.minimality is None:
            return []
        return list(self.minimality.index[self.minimality["passenger"]])

    def __repr__(self) -> str:
        a = self.attrs
        sizes = f"{self.frontier.sizes['size']} sizes evaluated, {a['direction']}"
        if self.circuit is None:
            return (
                f"CircuitSearch(no circuit of up to {a['max_size']} components recovers "
                f"{a['recovery']:g}; {sizes})"
            )
        score = self.minimality.attrs["circuit_score"]
        reads = (
            f"recover {score:.3f} (≥ {a['recovery']:g})"
            if a["direction"] == "denoise"
            else f"knocked out leave {score:.3f} (≤ {1 - a['recovery']:g})"
        )
        return (
            f"CircuitSearch({len(self.circuit)} components {reads}, "
            f"{len(self.passengers)} passengers; {sizes})"
        )


def find_circuit(
    model: Model,
    pairs: PromptPairs,
    site: str = "head",
    *,
    direction: Direction = "denoise",
    recovery: float = 0.8,
    max_size: int | None = None,
    threshold: float = 0.02,
    ablation: Ablation = None,
    ci: float | bootstrap.Bootstrap | None = None,
    **options: Any,
) -> CircuitSearch:
    """The smallest circuit of `site` components (head or mlp_out) that recovers `recovery` of the
    behaviour, with the frontier it was read from and each member's removal.

    Four steps, each the library call of the same name: `sweep` every component of `site` (in
    `direction`, with the keywords in `sweep=`, e.g. `{"positions": ["END"]}`) and `ranking` the
    result (`order`); `pareto_frontier` evaluates the top-k for k = 0 .. `max_size` (default:
    the whole ranking; one forward each); `smallest_circuit` takes the first size reaching
    `recovery`; `minimality` removes each of its members alone (a passenger costs less than
    `threshold`). `ablation` sets what components outside the circuit take (default: their
    corrupt-run values); the ranking sweep's own `ablation` goes in `sweep=`. `ranked_by=` ranks
    a result you already have (an attribution is cheap), or takes a list of components in its
    order, instead of sweeping. `ci=0.95` (or an `actpatch.Bootstrap`) puts intervals on the sweep,
    a band on the frontier and one on each member's drop, each from its own runs.
    `check_baseline` (default True) applies to every step.

        found = ap.find_circuit(model, pairs, "head", recovery=0.8, max_size=40)
        found.circuit, found.frontier, found.minimality

    What a found circuit has not yet been asked (backup, other corruptions, other prompts):
    docs/circuits.md."""
    given = options_from(SearchOptions, options, "find_circuit")
    if not 0 < recovery <= 1:
        raise ValueError(f"recovery must be a share of the behaviour in (0, 1], got {recovery!r}")
    if max_size is not None and (isinstance(max_size, bool) or not isinstance(max_size, int)):
        raise ValueError(f"max_size must be a whole number of components or None, got {max_size!r}")
    if max_size is not None and max_size < 1:
        raise ValueError(f"max_size must be at least 1, got {max_size}")
    ci = bootstrap.Bootstrap.of(ci)
    checked = {"check_baseline": given.check_baseline, "ci": ci}
    ranked_by = given.ranked_by
    if ranked_by is None:
        ranked_by = sweep(
            model,
            pairs,
            site,
            direction=direction,
            ci=ci,
            **{"progress": given.progress, "check_baseline": given.check_baseline, **given.sweep},
        )
    elif given.sweep:
        raise ValueError("sweep= sets up the ranking sweep, which ranked_by= replaces: pass one")
    ranked = ranking(ranked_by, order=given.order)
    sizes = range(min(max_size or len(ranked), len(ranked)) + 1)
    frontier = pareto_frontier(
        model,
        pairs,
        ranked_by,
        direction=direction,
        ablation=ablation,
        sizes=sizes,
        order=given.order,
        progress=given.progress,
        **checked,
    )
    circuit = smallest_circuit(frontier, recovery)
    table = None
    if circuit is not None:
        table = minimality(
            model,
            pairs,
            circuit,
            threshold=threshold,
            direction=direction,
            ablation=ablation,
            **checked,
        )
    ranked_attrs = getattr(ranked_by, "attrs", {})  # a list of components has none
    steps = {ranked_attrs.get("analysis", "ranked_by"): ranked_attrs}
    steps["pareto_frontier"] = frontier.attrs
    if table is not None:
        steps["minimality"] = table.attrs
    attrs = results.provenance(
        model,
        pairs,
        analysis="find_circuit",
        site=site if given.ranked_by is None else ranked_attrs.get("site"),
        direction=direction,
        recovery=recovery,
        max_size=sizes[-1],
        threshold=threshold,
        order=given.order,
        ablation=ablation,
        source=ablation or "corrupt",
        ranked_by=ranked_attrs.get("analysis", "a list"),
        circuit=None if circuit is None else [str(s) for s in circuit],
        interval=None if ci is None else frontier.attrs.get("interval"),
        **_self_checks(steps),
    )
    return CircuitSearch(circuit, frontier, table, ranked_by, attrs)


def _self_checks(steps: dict[str, dict]) -> dict[str, Any]:
    """Every step's self-checks under its name (`"sweep: noop_patch_error"`), and the loosest
    tolerance among them, as results record theirs."""
    return {
        "self_checks": {
            f"{step}: {name}": error
            for step, made in steps.items()
            for name, error in made.get("self_checks", {}).items()
        },
        "self_check_tolerance": max(
            made.get("self_check_tolerance", 0.0) for made in steps.values()
        ),
    }

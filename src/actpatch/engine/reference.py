"""Reference engine: one patch per forward pass, in the plainest code we can write.

Every faster engine is tested against this one, so it stays slow and obvious. Like every engine
it only produces rows; `runner.run` takes the baselines, runs the self-checks and builds the result."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

from torch import Tensor
from tqdm.auto import tqdm

from actpatch import hooks
from actpatch.engine import sources
from actpatch.engine.plan import SweepPlan
from actpatch.metrics import Baseline
from actpatch.models.model import Model
from actpatch.sites import Site


class Reference:
    """The oracle engine, for `runner.run`."""

    name = "reference"
    records_target = False  # every patch runs a whole forward: nothing to resume from

    def start(self, model: Model, the_plan: SweepPlan, base: Baseline) -> ReferencePatching:
        return ReferencePatching(model, the_plan)


class ReferencePatching:
    def __init__(self, model: Model, the_plan: SweepPlan):
        self.model, self.plan = model, the_plan

    def logits(self, values: Mapping[Site, Tensor]) -> Tensor:
        """The target run, with `values` written into their sites."""
        target = self.plan.target
        with (
            hooks.add_to_input(self.model, target.noise),
            hooks.patch(self.model, values, named_positions=target.positions),
        ):
            return hooks.last_logits(self.model, target.tokens)

    def known(self, reduce: Callable[[Tensor], Any]) -> dict[int, Any]:
        return {}  # the oracle runs every patch, even those that cannot change anything

    def rows(
        self, reduce: Callable[[Tensor], Any], done: Collection[int]
    ) -> Iterator[dict[int, Any]]:
        """One row per site not in `done`, each from its own patched forward."""
        the_plan = self.plan
        cache = sources.source_values(self.model, the_plan, the_plan.sites)
        progress = the_plan.spec.progress
        for i, s in enumerate(
            tqdm(
                the_plan.sites,
                desc=f"{the_plan.direction} {the_plan.kind}",
                disable=None if progress is None else not progress,
            )
        ):
            if i not in done:
                yield {i: reduce(self.logits({s: cache[s]}))}

    def cost(self) -> dict[str, Any]:
        # One forward per patch, and the two unpatched runs of the baseline.
        return {
            "patches": len(self.plan.sites),
            "forward_equivalents": float(len(self.plan.sites) + 2),
        }

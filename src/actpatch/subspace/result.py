"""What a DAS search returns: the learned subspace, its accuracy beside every control, the flags.

`table` is one labelled array (control × metric × stat): held-out interchange-intervention accuracy
(IIA) and normalised logit difference, each with a bootstrap interval over the held-out prompts,
for the learned subspace and each control. Its attributes are the provenance. The flags are the
guards' verdicts in words; a result with none has passed every guard we run, not proved a variable.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import xarray as xr

from actpatch.bases.subspace import Subspace

# Rows of the table, in the order a reader compares them.
CONTROLS = (
    "subspace",
    "subspace_train",
    "full_component",
    "row_space",
    "null_space",
    "random_subspaces",
    "random_model",
    "unpatched",
)


@dataclass(frozen=True, eq=False)
class DASResult:
    """A learned subspace and the evidence for and against it."""

    subspace: Subspace
    table: xr.DataArray  # (control, metric, stat): value, lo, hi; NaN where a control was not run
    random_subspaces: xr.DataArray  # (draw, metric): each random subspace's held-out numbers
    projection: xr.DataArray  # (run, batch, [pos,] latent): held-out prompts' coordinates x U
    flags: tuple[str, ...]
    losses: tuple[float, ...]  # the training pairs' loss at each check, for a learning curve
    train: tuple[int, ...]  # indices of the pairs it learned from
    test: tuple[int, ...]  # indices of the held-out pairs every number in `table` is measured on

    @property
    def passed(self) -> bool:
        """True when no guard raised a flag."""
        return not self.flags

    @property
    def iia(self) -> float:
        """Held-out interchange-intervention accuracy of the learned subspace."""
        return float(self.table.sel(control="subspace", metric="iia", stat="value"))

    def __repr__(self) -> str:
        lines = [
            (
                f"DASResult({self.subspace.site}, rank {self.subspace.rank}, "
                f"{len(self.train)} train / {len(self.test)} held-out pairs)"
            )
        ]
        lines.append(f"  {'control':<18}{'IIA':>22}{'norm logit diff':>26}")
        for control in CONTROLS:
            cells = [
                self.table.sel(control=control, metric=s).values for s in ("iia", "norm_logit_diff")
            ]
            if np.isnan(cells[0][0]):
                continue
            text = "".join(f"{v:>10.2f} [{lo:>5.2f}, {hi:>5.2f}]" for v, lo, hi in cells)
            lines.append(f"  {control:<18}{text}")
        lines += [f"  flag: {flag}" for flag in self.flags] or ["  no guard raised a flag"]
        return "\n".join(lines)

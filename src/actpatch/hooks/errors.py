"""The errors a hook raises when a patch would silently do the wrong thing."""

from __future__ import annotations

from collections.abc import Sequence

from actpatch.sites import Site


class PatchNotApplied(RuntimeError):
    """A patch whose site was never reached: it would have silently changed nothing."""

    def __init__(self, sites: Sequence[Site]):
        names = ", ".join(map(str, sites))
        super().__init__(
            f"these sites were never reached in the forward pass, so nothing was patched: {names}. "
            "The model's forward does not call the module the architecture table names for them."
        )


class PatchShapeError(ValueError):
    """A patch value whose shape does not match the activation it replaces."""

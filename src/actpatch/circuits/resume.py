"""Patched runs resumed at their first patched layer: nothing before that layer can change.

A run (the clean prompt, with some patches that define it) is recorded once: each decoder
layer's call arguments, as the model itself built them (masks, position embeddings). A patched
run then resumes at its earliest patched layer (`hooks.forward`), starting from the recorded
hidden states there. For a component in layer 23 of 30 that is a quarter of a forward. Exact:
`backup(..., resume=False)` runs every forward in full and the tests compare the two."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from actpatch import hooks
from actpatch.models.model import Model
from actpatch.run import Run
from actpatch.sites import Site


class Resumed:
    """A recorded run of `tokens` under `patches`, and patched runs resumed from it."""

    def __init__(self, model: Model, tokens: Tensor, patches: Mapping[Site, Tensor], positions):
        self.model, self.patches, self.positions = model, dict(patches), positions
        self.run = Run(tokens)
        with torch.no_grad():
            self.recorded, own_logits = hooks.record(
                model, self.run, taps=[hooks.patch(model, self.patches, named_positions=positions)]
            )
        self.own_logits = (
            own_logits.float()
        )  # the recorded run's, as `hooks.last_logits` gives them

    @torch.no_grad()
    def logits(self, extra: Mapping[Site, Tensor]) -> Tensor:
        """Final-position logits (batch, vocab) of the recorded run with `extra` patched in too."""
        n_layers = self.model.dims.n_layers
        start = min(s.layer % n_layers for s in extra)
        # Patches below the start are already in the recorded hidden states; they would not fire again.
        active = {s: v for s, v in {**self.patches, **extra}.items() if s.layer % n_layers >= start}
        patch = hooks.patch(self.model, active, named_positions=self.positions)
        return hooks.forward(
            self.model, self.run, taps=[patch], layer=start, recorded=self.recorded
        )

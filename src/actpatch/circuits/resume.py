"""Patched runs resumed at their first patched layer: nothing before that layer can change.

A run (the clean prompt, with some patches that define it) is recorded once: each decoder
layer's call arguments, as the model itself built them (masks, position embeddings). A patched
run then calls the real layers from its earliest patched layer on, starting from the recorded
hidden states there, and unembeds the final position. For a component in layer 23 of 30 that is
a quarter of a forward. Exact: `backup(..., resume=False)` runs every forward in full and the
tests compare the two."""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import Tensor

from actpatch import hooks
from actpatch.models.model import Model
from actpatch.sites import Site


class Resumed:
    """A recorded run of `tokens` under `patches`, and patched runs resumed from it."""

    def __init__(self, model: Model, tokens: Tensor, patches: Mapping[Site, Tensor], positions):
        self.model, self.patches, self.positions = model, dict(patches), positions
        with (
            torch.no_grad(),
            hooks.patch(model, self.patches, named_positions=positions),
            hooks.layer_inputs(model) as calls,
        ):
            own_logits = hooks.final_logits(model, tokens)
        self.calls = list(calls)
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
        args, kwargs = self.calls[start]
        hidden = args[0] if args else kwargs["hidden_states"]
        with hooks.patch(self.model, active, named_positions=self.positions):
            for index in range(start, n_layers):
                args, kwargs = self.calls[index]
                if args:
                    output = self.model.layer(index)(hidden, *args[1:], **kwargs)
                else:
                    output = self.model.layer(index)(*args, **{**kwargs, "hidden_states": hidden})
                hidden = output[0] if isinstance(output, tuple) else output
        return self.model.unembed(hidden[:, -1])

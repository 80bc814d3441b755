"""`Run`: one side of a prompt pair as the model sees it, the input of every forward.

A leaf: it imports nothing from actpatch, so that models, hooks and engines can all name it
without importing one another. Making runs from pairs is `PromptPairs.clean_run` / `corrupt_run`."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass(frozen=True, eq=False)
class Run:
    """One side of a pair as the model sees it: token ids, plus the offset a noise corruption adds
    to the first layer's input. Every forward takes a Run, so that the noise cannot be forgotten:
    a noise corruption's corrupt tokens are its clean ones, and only `noise` tells them apart."""

    tokens: Tensor  # (batch, pos)
    noise: Tensor | None = None  # (batch, pos, d_model), added to the first decoder layer's input
    positions: dict[str, Tensor] = field(default_factory=dict)  # named position -> (batch,) indices
    name: str = "run"  # "clean" or "corrupt": for messages and provenance

    def __len__(self) -> int:
        return self.tokens.shape[0]

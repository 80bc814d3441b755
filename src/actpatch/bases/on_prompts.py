"""A dictionary read on the prompts of an analysis: how much of its site it explains there, and
where each latent fires, token by token.

Patching through a dictionary is exact whatever its quality, because the error node carries what
it misses; but when the error carries more than the latents, effects found on latents say little.
`check_reconstruction` measures that on the very prompts being analysed (one capture of each run)
and warns, with the figure; the sweep and attribution call it. `latent_activations` records what a
report shows beside a latent's effect: the prompt tokens that light it up.
"""

from __future__ import annotations

import warnings
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from actpatch import caller
from actpatch.bases.dictionary import Dictionary
from actpatch.hooks import capture
from actpatch.models.model import Model
from actpatch.pairs import PromptPairs
from actpatch.run import Run
from actpatch.sites import Site

DOMINANT_ERROR = 0.5
"""Below this fraction of variance explained the error node holds more of the site than the
latents do: its share of the variance, 1 − FVE, is the larger one."""


class PoorReconstruction(UserWarning):
    """A dictionary whose error nodes dominate on the prompts it is used with."""


# The figures each dictionary has warned about: a sweep, its attribution and both directions on the
# same prompts say it once.
_WARNED: weakref.WeakKeyDictionary[Dictionary, set[float]] = weakref.WeakKeyDictionary()


def explained_variance(
    model: Model,
    pairs: PromptPairs | Sequence[PromptPairs],
    dictionary: Dictionary,
    positions: Any = None,
) -> float:
    """The fraction of the variance of what `dictionary` writes that its reconstruction explains at
    `positions` (as a sweep takes them), over both runs of every prompt: 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖²,
    the sums over the chosen positions, x̄ the mean over every token of the prompts.

    The mean is over every token, not the chosen ones: at one position of templated prompts (the
    final " to" of every IOI prompt) the activations barely vary, and centring on their own mean
    would call any error large. Every token means every position but the first: a causal model's
    first position is an attention sink whose norm can be a hundred times the others' (SmolLM2's
    is), which dictionaries are usually trained without and which would decide the figure alone."""
    every, written, estimate = [], [], []
    for group in [pairs] if isinstance(pairs, PromptPairs) else list(pairs):
        for run in (group.clean_run, group.corrupt_run):
            tokens, x, x_hat = _written_and_reconstructed(model, run, dictionary, positions)
            every.append(tokens)
            written.append(x)
            estimate.append(x_hat)
    x, x_hat = torch.cat(written), torch.cat(estimate)
    total = ((x - torch.cat(every).mean(0)) ** 2).sum()
    return float(1 - ((x - x_hat) ** 2).sum() / total) if total > 0 else 1.0


def check_reconstruction(
    model: Model, pairs: PromptPairs | Sequence[PromptPairs], basis: Any, positions: Any = None
) -> float | None:
    """Warn (`PoorReconstruction`) when a dictionary explains less than half its site's variance on
    these prompts; return the fraction explained (None for a basis that is not a dictionary: a
    subspace explains a small part by design)."""
    if not isinstance(basis, Dictionary):
        return None
    # A dictionary for another model is refused here by name, not by a shape error in a forward.
    basis.check_fits(model)
    explained = explained_variance(model, pairs, basis, positions)
    warned = _WARNED.setdefault(basis, set())
    if explained < DOMINANT_ERROR and round(explained, 4) not in warned:
        warned.add(round(explained, 4))
        warnings.warn(
            f"{basis.name} reconstructs {basis.writes} at layer {basis.layer} poorly on these "
            f"prompts: fraction of variance explained {explained:.2f} (both runs, the swept "
            f"positions), below {DOMINANT_ERROR}, so its error nodes carry more than its latents "
            "and effects of its latents say little about the model. Sweep feature_error beside "
            "them to see how much the error carries, and check that the dictionary was made for "
            "this model, hook point and normalisation, or use a better one",
            PoorReconstruction,
            stacklevel=caller.stacklevel(),
        )
    return explained


def latent_activations(
    model: Model,
    pairs: PromptPairs | Sequence[PromptPairs],
    dictionary: Any,
    latents: Sequence[int],
) -> dict[str, Any]:
    """`latents`' activations on every token of every prompt, both runs: for a report (JSON-ready,
    so it can ride in a result's attrs as "latent_activations").

    {"dictionary": name, "latents": [i, ...], "texts": [{"run": "clean", "prompt": p,
    "tokens": [...], "activations": [[one per token] per latent]}, ...]}"""
    chosen = [int(i) for i in latents]
    texts: list[dict[str, Any]] = []
    first = 0  # the prompt number of a length group's first prompt
    for group in [pairs] if isinstance(pairs, PromptPairs) else list(pairs):
        for name, run in (("clean", group.clean_run), ("corrupt", group.corrupt_run)):
            site = Site(dictionary.reads, dictionary.layer)
            read = capture(model, run, [site])[site]  # (batch, pos, d)
            values = dictionary.encode(read)[..., chosen].cpu()  # (batch, pos, latent)
            for p, ids in enumerate(run.tokens.cpu()):
                texts.append(
                    {
                        "run": name,
                        "prompt": first + p,
                        "tokens": model.token_strings(ids),
                        "activations": [[round(float(v), 5) for v in row] for row in values[p].T],
                    }
                )
        first += len(group)
    return {"dictionary": dictionary.name, "latents": chosen, "texts": texts}


def _written_and_reconstructed(
    model: Model, run: Run, dictionary: Dictionary, positions: Any
) -> tuple[Tensor, Tensor, Tensor]:
    """(tokens, d) of what the dictionary writes at every position but the first; and (chosen, d)
    of what it writes at the chosen positions (named ones resolved prompt by prompt, by the
    capture), and its reconstruction there."""
    every = positions is None or (isinstance(positions, str) and positions in ("each", "all"))
    chosen = [] if every else [positions] if isinstance(positions, (int, str)) else list(positions)
    kinds = dict.fromkeys((dictionary.reads, dictionary.writes))
    sites = {(k, p): Site(k, dictionary.layer, pos=p) for k in kinds for p in [None, *chosen]}
    found = capture(model, run, list(sites.values()))
    width = model.dims.d_model
    start = 1 if run.tokens.shape[1] > 1 else 0  # every position but the attention sink
    tokens = found[sites[dictionary.writes, None]][:, start:].reshape(-1, width).float()
    if every:
        read = found[sites[dictionary.reads, None]][:, start:].reshape(-1, width)
        return tokens, tokens, dictionary.reconstruct(read)
    read = torch.cat([found[sites[dictionary.reads, p]] for p in chosen])  # (chosen · batch, d)
    written = torch.cat([found[sites[dictionary.writes, p]] for p in chosen]).float()
    return tokens, written, dictionary.reconstruct(read)

"""Sweep plans: turn a user's sweep arguments into the exact list of sites to patch.

Every engine starts from the same plan, so they can only differ in how they run it."""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any, Literal, Sequence, get_args

from torch import Tensor

from actpatch.models.model import Model
from actpatch.pairs import PairsError, PromptPairs
from actpatch.sites import KV_KINDS, Pos, Site, SiteError, SiteKind, default_positions, grid, parse_kind, unit_dim, validate

Direction = Literal["denoise", "noise"]
DIRECTIONS = ("denoise", "noise")
Positions = Literal["each", "all"] | Sequence[int | str] | int | str | None
# Noising sources that are not a second run: the target's own activations, zeroed, averaged over
# prompts (or over a reference set), or taken from another prompt of the batch (resampled).
Ablation = Literal["zero", "mean", "resample"]
ABLATIONS: tuple[str, ...] = get_args(Ablation)


@dataclass(frozen=True)
class SweepPlan:
    kind: SiteKind
    direction: Direction
    layers: list[int]
    units: list[int] | None  # heads, KV heads or neurons; None for residual kinds
    positions: list[Pos]  # [None] when every position is patched at once
    sites: list[Site]
    source: Tensor  # where patched values come from
    target: Tensor  # the run they are written into
    source_noise: Tensor | None = None  # added to the first layer's input of the source run (a noise corruption)
    target_noise: Tensor | None = None
    ablation: Ablation | None = None  # values are an ablation of the target's own, not the source run's
    reference: PromptPairs | None = None  # prompts whose clean-run mean is the "mean" ablation


def plan(
    model: Model,
    pairs: PromptPairs,
    site: str,
    *,
    direction: Direction,
    layers: Sequence[int] | None,
    positions: Positions,
    heads: Sequence[int] | None,
    neurons: Sequence[int] | None,
    ablation: Ablation | None = None,
    reference: PromptPairs | None = None,
) -> SweepPlan:
    """Check every argument against the model and prompts, then list the sites in result order."""
    check_model(model)
    if not isinstance(pairs, PromptPairs):
        raise TypeError(f"pairs must be PromptPairs, got {type(pairs).__name__}; build them with PromptPairs.from_strings")
    check_tokens(model, pairs)
    if reference is not None and isinstance(reference, PromptPairs):
        check_tokens(model, reference)
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    kind, named_layer = parse_kind(site)
    if named_layer is not None:
        if layers is not None:
            raise SiteError(f"{site!r} names a layer and layers= was also given; use one of them")
        layers = [named_layer]
    n_layers = model.dims.n_layers
    layers = list(range(n_layers)) if layers is None else [_in_range(l, n_layers, "layer") for l in _selection(layers, "layers")]
    units = _units(model, kind, heads, neurons)
    chosen = _positions(kind, positions, pairs)
    sites = grid(kind, layers, units, chosen)
    parallel = model.arch.is_parallel(model.hf.config)
    for s in sites[:1] + sites[-1:]:  # every site shares kind and ranges; the ends catch range errors
        validate(s, model.arch, model.dims, parallel=parallel)
    source, target = _source_and_target(pairs, direction)
    noise = _checked_noise(pairs, model)
    source_noise, target_noise = (noise, None) if direction == "noise" else (None, noise)
    _check_ablation(ablation, reference, direction, pairs, chosen)
    return SweepPlan(kind, direction, layers, units, chosen, sites, source, target, source_noise, target_noise, ablation, reference)


def _source_and_target(pairs: PromptPairs, direction: Direction) -> tuple[Tensor, Tensor]:
    # Denoising writes clean values into the corrupt run; noising is the reverse.
    # Nothing below this line needs to know which direction it is running.
    return (pairs.clean, pairs.corrupt) if direction == "denoise" else (pairs.corrupt, pairs.clean)


def _checked_noise(pairs: PromptPairs, model: Model) -> Tensor | None:
    noise = pairs.corrupt_noise
    if noise is not None and noise.shape[-1] != model.dims.d_model:
        raise ValueError(f"these pairs' embedding noise has width {noise.shape[-1]}, but {model.name} has d_model "
                         f"{model.dims.d_model}: make the noise with this model (actpatch.noise.gaussian_noise)")
    return noise


def _check_ablation(ablation, reference, direction: Direction, pairs: PromptPairs, chosen: list[Pos]) -> None:
    if ablation is None:
        if reference is not None:
            raise ValueError("reference= is only used by ablation='mean'; drop it or set ablation='mean'")
        return
    if ablation not in ABLATIONS:
        raise ValueError(f"ablation must be one of {ABLATIONS} (or None to patch from the other run), got {ablation!r}")
    if direction != "noise":
        raise ValueError(f"ablation={ablation!r} knocks a site out of the clean run, which is noising: "
                         "pass direction='noise' (denoising patches clean values into the corrupt run)")
    if ablation == "resample" and len(pairs) < 2:
        raise ValueError("ablation='resample' takes each prompt's value from another prompt: it needs at least 2 prompts")
    if reference is not None:
        if ablation != "mean":
            raise ValueError(f"reference= sets the prompts averaged by ablation='mean'; ablation={ablation!r} does not use it")
        if not isinstance(reference, PromptPairs):
            raise TypeError(f"reference must be PromptPairs (their clean prompts are averaged), got {type(reference).__name__}")
        if reference.seq_len != pairs.seq_len and any(not isinstance(p, str) for p in chosen):
            raise ValueError(f"reference prompts have {reference.seq_len} tokens and these have {pairs.seq_len}: a mean at "
                             "position indices needs equal lengths; sweep named positions present in both, or use same-length prompts")
        if missing := [p for p in chosen if isinstance(p, str) and p not in reference.positions]:
            raise ValueError(f"reference prompts lack the named positions {missing}; name them there too")


def check_model(model: Any) -> None:
    """Raise `TypeError` unless `model` is an actpatch `Model` (a bare transformers model lacks the
    architecture table entry and sizes every sweep needs)."""
    if not isinstance(model, Model):
        raise TypeError(f"model must be an actpatch Model, got {type(model).__name__}; load one with actpatch.load_model(...) "
                        "or wrap a transformers model you loaded yourself: actpatch.Model.from_hf(hf_model, tokenizer)")


def check_tokens(model: Model, pairs: PromptPairs) -> None:
    """Raise `PairsError` when a token id is outside the model's vocabulary or the prompts are longer
    than its positions: the embedding would fail deep inside torch, or positions past the trained
    range would give numbers that look fine and mean nothing."""
    vocab = model.dims.vocab
    for name in ("clean", "corrupt", "answers", "wrong"):
        ids = getattr(pairs, name)
        outside = (ids < 0) | (ids >= vocab)
        if bool(outside.any()):
            where = [int(i) for i in outside.nonzero()[0]]
            at = f"prompt {where[0]}" + (f", position {where[1]}" if len(where) > 1 else "")
            raise PairsError(
                f"{name} token id {int(ids[tuple(where)])} ({at}) is outside {model.name}'s vocabulary of {vocab} "
                f"(ids 0..{vocab - 1}): the ids come from another tokenizer; build the pairs with this model's "
                "(PromptPairs.from_strings(model, ...))"
            )
    limit = getattr(model.hf.config, "max_position_embeddings", None)
    if isinstance(limit, int) and pairs.seq_len > limit:
        raise PairsError(f"prompts have {pairs.seq_len} tokens but {model.name} has {limit} positions "
                         "(config.max_position_embeddings): shorten the prompts")


def _selection(values: Any, name: str) -> list:
    """`layers=`, `heads=` or `neurons=` as a list: one index, or a sequence of them."""
    if _integer(values) is not None:
        return [values]
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise SiteError(f"{name}= takes an index or a list of indices, got {type(values).__name__} {values!r}")
    chosen = list(values)
    if not chosen:
        raise SiteError(f"{name}= is empty: pass at least one index, or leave it out for all of them")
    return chosen


def _integer(value: Any) -> int | None:
    """`value` as an int when it is an integer (numpy and 0-d torch integers too), else None."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _in_range(index: int, size: int, what: str, owner: str = "this model has") -> int:
    number = _integer(index)
    if number is None:
        raise SiteError(f"{what} {index!r} is not an integer index: {owner} {what}s 0..{size - 1}")
    if not -size <= number < size:
        raise SiteError(f"{what} {index!r} is out of range: {owner} {what}s 0..{size - 1}")
    return number % size


def _units(model: Model, kind: str, heads: Sequence[int] | None, neurons: Sequence[int] | None) -> list[int] | None:
    unit = unit_dim(kind)
    if heads is not None and unit not in ("head", "kv_head"):
        raise SiteError(f"heads= was given, but {kind} is not split by attention head; drop heads= or use a head site")
    if neurons is not None and unit != "neuron":
        raise SiteError(f"neurons= was given, but {kind} is not a neuron site")
    if unit in ("head", "kv_head"):
        n = model.dims.n_kv_heads if kind in KV_KINDS else model.dims.n_heads
        what = "KV head" if unit == "kv_head" else "head"
        return list(range(n)) if heads is None else [_in_range(h, n, what) for h in _selection(heads, "heads")]
    if unit == "neuron":
        if neurons is None:
            raise SiteError(
                f"a neuron sweep needs neurons=[...]: all {model.dims.d_mlp} neurons × {model.dims.n_layers} layers "
                "is rarely what you want one forward each"
            )
        return [_in_range(n, model.dims.d_mlp, "neuron") for n in _selection(neurons, "neurons")]
    return None


def _positions(kind: str, positions: Positions, pairs: PromptPairs) -> list[Pos]:
    if positions is None:
        positions = default_positions(kind)
    if positions == "each":
        return list(range(pairs.seq_len))
    if positions == "all":
        return [None]
    if isinstance(positions, (int, str)):
        positions = [positions]
    chosen: list[Pos] = []
    for p in positions:
        if isinstance(p, str):
            if p not in pairs.positions:
                known = ", ".join(pairs.positions) or "none"
                raise SiteError(f"no named position {p!r} in these prompts (named positions: {known})")
            chosen.append(p)
        else:
            chosen.append(_in_range(p, pairs.seq_len, "position", "these prompts have"))
    if not chosen:
        raise SiteError("positions= is empty: pass 'each', 'all', or at least one position")
    return chosen

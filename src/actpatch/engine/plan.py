"""Sweep plans: a `SweepSpec` checked against the model and prompts, and turned into the exact
list of sites to patch and the two runs (source, target).

Every engine starts from the same plan, so they can only differ in how they run it."""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from actpatch.engine.spec import (
    ABLATIONS,
    DIRECTIONS,
    Ablation,
    Direction,
    Positions,
    SweepSpec,
    check_engine_options,
)
from actpatch.models.model import Model, check_model  # check_model re-exported: it lived here
from actpatch.pairs import PairsError, PromptPairs
from actpatch.run import Run
from actpatch.sites import (
    FEATURE_KINDS,
    KV_KINDS,
    Pos,
    Site,
    SiteError,
    SiteKind,
    default_positions,
    grid,
    parse_kind,
    unit_dim,
    validate,
)


@dataclass(frozen=True, eq=False)
class SweepPlan:
    """A checked spec turned into what engines run: the sites in result order and the two runs."""

    spec: SweepSpec
    pairs: PromptPairs  # the prompts the plan was checked against
    kind: SiteKind
    layers: list[int]
    units: list[int] | None  # heads, KV heads or neurons; None for residual kinds
    positions: list[Pos]  # [None] when every position is patched at once
    sites: list[Site]
    source: Run  # where patched values come from (an ablation replaces its values)
    target: Run  # the run they are written into
    # Activations already captured in the baseline's forwards, keyed by ("source" | "target", site):
    # `engine.sources` reads them instead of running the model again (`sources.recorded`).
    captured: Mapping[tuple[str, Site], Any] = dataclasses.field(default_factory=dict, repr=False)
    # The target's layer calls and cache, recorded by the baseline's target forward for an engine
    # that resumes copies from them (`engine.recording`); None: the engine records its own.
    recorded_target: Any = dataclasses.field(default=None, repr=False, compare=False)

    @property
    def direction(self) -> Direction:
        return self.spec.direction

    @property
    def ablation(self) -> Ablation | None:
        return self.spec.ablation

    @property
    def mean_over(self) -> PromptPairs | None:
        return self.spec.mean_over

    @property
    def source_name(self) -> str:
        """What the patched values are, for provenance: the source run's name or the ablation."""
        return self.spec.ablation or self.source.name

    def narrowed(self, sites: Sequence[Site]) -> SweepPlan:
        """The same plan patching only `sites` (of the same kind)."""
        return dataclasses.replace(self, sites=list(sites))


def plan(model: Model, pairs: PromptPairs, spec: SweepSpec) -> SweepPlan:
    """Check every argument of `spec` against the model and prompts, then list the sites in result order."""
    check_model(model)
    if not isinstance(pairs, PromptPairs):
        raise TypeError(
            f"pairs must be PromptPairs, got {type(pairs).__name__}; build them with PromptPairs.from_strings"
        )
    check_tokens(model, pairs)
    if isinstance(spec.mean_over, PromptPairs):
        check_tokens(model, spec.mean_over)
    if spec.direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {spec.direction!r}")
    check_engine_options(spec)
    kind, named_layer = parse_kind(spec.site)
    layers = spec.layers
    if named_layer is not None:
        if layers is not None:
            raise SiteError(
                f"{spec.site!r} names a layer and layers= was also given; use one of them"
            )
        layers = [named_layer]
    n_layers = model.dims.n_layers
    basis = _basis(kind, spec, model)
    if basis is not None:
        layers = _basis_layers(basis, layers, n_layers)
    layers = (
        list(range(n_layers))
        if layers is None
        else [_in_range(l, n_layers, "layer") for l in _selection(layers, "layers")]
    )
    units = _units(
        model, kind, spec.heads, spec.neurons, len(layers), latents=spec.latents, basis=basis
    )
    chosen = _positions(kind, spec.positions, pairs)
    sites = grid(kind, layers, units, chosen, basis=basis)
    parallel = model.arch.is_parallel(model.hf.config)
    for s in (
        sites[:1] + sites[-1:]
    ):  # every site shares kind and ranges; the ends catch range errors
        validate(s, model.arch, model.dims, parallel=parallel)
    _checked_noise(pairs, model)
    source, target = source_and_target(pairs, spec.direction)
    _check_ablation(spec.ablation, spec.mean_over, spec.direction, pairs, chosen)
    return SweepPlan(spec, pairs, kind, layers, units, chosen, sites, source, target)


def source_and_target(pairs: PromptPairs, direction: Direction) -> tuple[Run, Run]:
    """(source, target) runs: where patched values come from, and the run they are written into."""
    # Denoising writes clean values into the corrupt run; noising is the reverse.
    # Nothing below this line needs to know which direction it is running.
    return (
        (pairs.clean_run, pairs.corrupt_run)
        if direction == "denoise"
        else (pairs.corrupt_run, pairs.clean_run)
    )


def _checked_noise(pairs: PromptPairs, model: Model) -> None:
    noise = pairs.corrupt_noise
    if noise is not None and noise.shape[-1] != model.dims.d_model:
        raise ValueError(
            f"these pairs' embedding noise has width {noise.shape[-1]}, but {model.name} has d_model "
            f"{model.dims.d_model}: make the noise with this model (actpatch.noise.gaussian_noise)"
        )


def _check_ablation(
    ablation, mean_over, direction: Direction, pairs: PromptPairs, chosen: list[Pos]
) -> None:
    if ablation is None:
        if mean_over is not None:
            raise ValueError(
                "mean_over= is only used by ablation='mean'; drop it or set ablation='mean'"
            )
        return
    if ablation not in ABLATIONS:
        raise ValueError(
            f"ablation must be one of {ABLATIONS} (or None to patch from the other run), got {ablation!r}"
        )
    if direction != "noise":
        raise ValueError(
            f"ablation={ablation!r} knocks a site out of the clean run, which is noising: "
            "pass direction='noise' (denoising patches clean values into the corrupt run)"
        )
    if ablation == "resample" and len(pairs) < 2:
        raise ValueError(
            "ablation='resample' takes each prompt's value from another prompt: it needs at least 2 prompts"
        )
    if mean_over is not None:
        if ablation != "mean":
            raise ValueError(
                f"mean_over= sets the prompts averaged by ablation='mean'; ablation={ablation!r} does not use it"
            )
        if not isinstance(mean_over, PromptPairs):
            raise TypeError(
                f"mean_over must be PromptPairs (their clean prompts are averaged), got {type(mean_over).__name__}"
            )
        if mean_over.seq_len != pairs.seq_len and any(not isinstance(p, str) for p in chosen):
            raise ValueError(
                f"mean_over prompts have {mean_over.seq_len} tokens and these have {pairs.seq_len}: a mean at "
                "position indices needs equal lengths; sweep named positions present in both, or use same-length prompts"
            )
        if missing := [p for p in chosen if isinstance(p, str) and p not in mean_over.positions]:
            raise ValueError(
                f"mean_over prompts lack the named positions {missing}; name them there too"
            )


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
        raise PairsError(
            f"prompts have {pairs.seq_len} tokens but {model.name} has {limit} positions "
            "(config.max_position_embeddings): shorten the prompts"
        )


def _selection(values: Any, name: str) -> list:
    """`layers=`, `heads=` or `neurons=` as a list: one index, or a sequence of them."""
    if _integer(values) is not None:
        return [values]
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise SiteError(
            f"{name}= takes an index or a list of indices, got {type(values).__name__} {values!r}"
        )
    chosen = list(values)
    if not chosen:
        raise SiteError(
            f"{name}= is empty: pass at least one index, or leave it out for all of them"
        )
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


def _basis(kind: str, spec: SweepSpec, model: Model) -> Any:
    """The dictionary a feature sweep patches in (None for other kinds), checked to fit `model`."""
    from actpatch.bases import Basis  # bases build on sites and models, not on engines

    if kind not in FEATURE_KINDS:
        if spec.dictionary is not None or spec.latents is not None:
            raise SiteError(
                "dictionary= and latents= belong to feature sweeps ('feature', "
                f"'feature_error'), not {kind}"
            )
        return None
    if not isinstance(spec.dictionary, Basis):
        raise SiteError(
            f"a {kind} sweep needs dictionary= (load_dictionary(path, model)), "
            f"got {type(spec.dictionary).__name__}"
        )
    check = getattr(spec.dictionary, "check_fits", None)
    if callable(check):
        check(model)
    return spec.dictionary


def _basis_layers(basis: Any, layers: Any, n_layers: int) -> list[int]:
    """A dictionary sits at one layer: layers= may name it, nothing else."""
    chosen = (
        None
        if layers is None
        else [_in_range(l, n_layers, "layer") for l in _selection(layers, "layers")]
    )
    if chosen is not None and chosen != [basis.layer]:
        raise SiteError(
            f"{basis.name} sits at layer {basis.layer}; drop layers= "
            f"(or pass layers=[{basis.layer}])"
        )
    return [basis.layer]


def _units(
    model: Model,
    kind: str,
    heads: Sequence[int] | None,
    neurons: Sequence[int] | None,
    n_layers: int,
    *,
    latents: Any = None,
    basis: Any = None,
) -> list[int] | None:
    unit = unit_dim(kind)
    if unit == "latent":
        if heads is not None or neurons is not None:
            raise SiteError("a feature sweep selects latents=, not heads= or neurons=")
        if latents is None or isinstance(latents, str):
            raise SiteError(
                "a feature sweep needs latents=[...] or latents='active' (the latents non-zero in "
                f"either run); all {basis.n_latents} latents × every position is rarely wanted"
                if latents is None
                else f"latents={latents!r}: pass 'active' or latent indices"
            )
        owner = f"{basis.name} has"
        chosen = _selection(latents, "latents")
        return [_in_range(i, basis.n_latents, "latent", owner) for i in chosen]
    if kind == "feature_error" and latents is not None:
        raise SiteError(
            "latents= selects latents of a 'feature' sweep; the error node "
            "('feature_error') has none"
        )
    if heads is not None and unit not in ("head", "kv_head"):
        raise SiteError(
            f"heads= was given, but {kind} is not split by attention head; drop heads= or use a head site"
        )
    if neurons is not None and unit != "neuron":
        raise SiteError(f"neurons= was given, but {kind} is not a neuron site")
    if unit in ("head", "kv_head"):
        n = model.dims.n_kv_heads if kind in KV_KINDS else model.dims.n_heads
        what = "KV head" if unit == "kv_head" else "head"
        return (
            list(range(n))
            if heads is None
            else [_in_range(h, n, what) for h in _selection(heads, "heads")]
        )
    if unit == "neuron":
        if neurons is None:
            raise SiteError(
                f"a neuron sweep needs neurons=[...]: all {model.dims.d_mlp} neurons × {n_layers} "
                f"layer{'s' if n_layers != 1 else ''} is {model.dims.d_mlp * n_layers} forwards, rarely what you want"
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
                raise SiteError(
                    f"no named position {p!r} in these prompts (named positions: {known})"
                )
            chosen.append(p)
        else:
            chosen.append(_in_range(p, pairs.seq_len, "position", "these prompts have"))
    if not chosen:
        raise SiteError("positions= is empty: pass 'each', 'all', or at least one position")
    return chosen

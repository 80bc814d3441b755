"""Feature circuits' nodes: dictionary latents and error nodes, scored and chosen.

A node is a latent of a dictionary at a position (`Site("feature", layer, latent=i, basis=d,
pos=p)`), or at every position at once (`pos=None`, the latent summed over positions), and one
error node per dictionary and position (`Site("feature_error", layer, basis=d, pos=p)`), as
Sparse Feature Circuits has them (Marks et al. 2024). `feature_scores` estimates every node with
`attribute` (one forward and backward per dictionary and kind); `FeatureScores.from_results`
reads feature results made any other way (exact sweeps too). `top_features` chooses a circuit by
count, share or threshold, with the error nodes kept or ranked like latents.
`feature_circuit_stability` re-chooses it on resampled prompts (no forward)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd
import xarray as xr

from actpatch import results
from actpatch.circuits.stability import jaccard
from actpatch.engine.attribution import attribute
from actpatch.engine.spec import Direction, Positions
from actpatch.models.model import Model
from actpatch.pairs import PromptPairs
from actpatch.sites import FEATURE_KINDS, Site, SiteError
from actpatch.stats import bootstrap

Errors = Literal["kept", "ranked"]
# kept: every error node is in every circuit and only latents are ranked (as Marks et al. keep
# them); ranked: error nodes compete with latents and are patched like any node outside the circuit.
ERRORS: tuple[str, ...] = ("kept", "ranked")


@dataclass(frozen=True)
class FeatureScores:
    """Every scored node and its effect on the normalised logit difference (`results.effects`:
    how far patching it alone moves the target run towards the source), with each prompt's share
    where the results kept prompts (`changes`, (node, prompt) changes of the logit difference;
    `gaps`, (prompt,) clean − corrupt logit differences)."""

    nodes: tuple[Site, ...]
    effects: np.ndarray
    dictionaries: tuple[Any, ...]
    direction: str
    method: str
    changes: np.ndarray | None = None
    gaps: np.ndarray | None = None

    @classmethod
    def from_results(
        cls, found: Sequence[xr.DataArray], dictionaries: Sequence[Any]
    ) -> FeatureScores:
        """Nodes and effects read from `feature` and `feature_error` results (attribution or exact
        sweeps, averaged or `per_prompt=True`) of one direction, over `dictionaries` (the ones the
        results name; more may be given, whose nodes are then in no circuit but kept errors)."""
        by_name = _named(dictionaries)
        if not found:
            raise ValueError(
                "no results to score nodes with: pass attribute(..., 'feature', dictionary=d) and "
                "attribute(..., 'feature_error', dictionary=d) results, or use feature_scores()"
            )
        nodes: list[Site] = []
        effects, changes, gaps, directions, methods = [], [], [], set(), set()
        for result in found:
            read = _read(result, by_name)
            nodes += read.nodes
            effects.append(read.effects)
            changes.append(read.changes)
            gaps.append(read.gaps)
            directions.add(read.direction)
            methods.add(read.method)
        if len(directions) > 1:
            raise ValueError(
                "these results patch in different directions: score a circuit with results of one"
            )
        if len({(s.kind, s.basis.name, s.layer, s.latent, s.pos) for s in nodes}) < len(nodes):
            raise ValueError(
                "two results score the same node: pass each dictionary's latents and error once"
            )
        per_prompt = all(c is not None for c in changes)
        if per_prompt and any(not np.allclose(g, gaps[0]) for g in gaps):
            raise ValueError(
                "these results were made on different prompts (their baselines differ): score "
                "every dictionary on the same pairs"
            )
        effect = np.concatenate(effects)
        keep = ~np.isnan(effect)
        return cls(
            nodes=tuple(s for s, k in zip(nodes, keep) if k),
            effects=effect[keep],
            dictionaries=tuple(by_name.values()),
            direction=directions.pop(),
            method="+".join(sorted(methods)),
            changes=np.concatenate(changes)[keep] if per_prompt else None,
            gaps=gaps[0] if per_prompt else None,
        )

    def ranking(self, errors: Errors = "ranked", *, absolute: bool = True) -> list[Site]:
        """Nodes strongest first: by |effect| (`absolute`, nodes that matter either way) or by
        effect (nodes that help the source run's answer); error nodes only with `errors="ranked"`.
        Ties keep the results' order."""
        return [self.nodes[i] for i in self._order(self.effects, errors, absolute)]

    def resampled(self, resamples: int, seed: int) -> np.ndarray:
        """(resamples, node) effects on resamples of the prompts (with replacement, drawn as
        bootstrap intervals draw them): a ratio of means, as the averaged results compute them."""
        if self.changes is None:
            raise bootstrap.NotPerPrompt(
                "resampling nodes needs each prompt's estimate: score them with per_prompt=True "
                "(feature_scores does)"
            )
        n = len(self.gaps)  # resample_counts reads a block's prompt count and length groups only
        prompts = bootstrap.Block(None, np.zeros((n, 1, 0)), self.gaps, self.gaps, (n,))
        counts = bootstrap.resample_counts(prompts, resamples, bootstrap.rngs(seed, 1)[0])
        return (counts @ self.changes.T) / (counts @ self.gaps)[:, None]

    def _order(self, effects: np.ndarray, errors: Errors, absolute: bool) -> np.ndarray:
        if errors not in ERRORS:
            raise ValueError(f"errors must be one of {ERRORS}, got {errors!r}")
        allowed = np.array([errors == "ranked" or s.kind == "feature" for s in self.nodes])
        strength = np.abs(effects) if absolute else effects
        order = np.argsort(-strength, kind="stable")
        return order[allowed[order]]


def feature_scores(
    model: Model,
    pairs: PromptPairs,
    dictionaries: Sequence[Any],
    *,
    direction: Direction = "denoise",
    method: str = "atp",
    positions: Positions = "each",
    latents: Sequence[int] | str = "active",
    steps: int = 5,
) -> FeatureScores:
    """Every latent and error node of every dictionary estimated by `attribute` (AtP, or
    `method="ig"`), kept per prompt so that stability and intervals can resample them.

    `positions="each"` scores a node per position; `"all"` one per latent summed over positions
    (and one error node per dictionary); a list scores those positions only (the others' nodes
    are then in no circuit). `latents="active"`: the latents non-zero in either run there (a
    latent zero in both changes nothing when patched alone). Two `attribute` calls per dictionary;
    `verify(..., dictionary=)` checks estimates exactly."""
    found = []
    for basis in _named(dictionaries).values():
        common = dict(
            direction=direction, method=method, steps=steps, positions=positions, per_prompt=True
        )
        found.append(
            attribute(model, pairs, "feature", dictionary=basis, latents=latents, **common)
        )
        found.append(attribute(model, pairs, "feature_error", dictionary=basis, **common))
    return FeatureScores.from_results(found, dictionaries)


def top_features(
    scores: FeatureScores,
    n: int | None = None,
    *,
    percent: float | None = None,
    threshold: float | None = None,
    errors: Errors = "kept",
    absolute: bool = True,
) -> list[Site]:
    """A feature circuit: the `n` strongest nodes, `percent` % of them (⌊percent/100 · nodes⌋, as
    MIB counts edges), or every node whose (absolute) effect reaches `threshold` (a share of the
    clean − corrupt gap). With `errors="kept"` only latents are ranked and every error node of
    every dictionary is added at every position: such a circuit is faithful by construction as far
    as the dictionaries reconstruct poorly, which its faithfulness curve shows."""
    given = [
        name
        for name, v in (("n", n), ("percent", percent), ("threshold", threshold))
        if v is not None
    ]
    if len(given) != 1:
        raise ValueError(f"give one of n, percent or threshold, got {given or 'none'}")
    order = scores._order(scores.effects, errors, absolute)
    if threshold is not None:
        strength = np.abs(scores.effects) if absolute else scores.effects
        chosen = [i for i in order if strength[i] >= threshold]
    else:
        chosen = list(order[: count_of(len(order), n, percent)])
    circuit = [scores.nodes[i] for i in chosen]
    return circuit + (all_errors(scores.dictionaries) if errors == "kept" else [])


def count_of(total: int, n: int | None, percent: float | None) -> int:
    """How many of `total` ranked nodes a circuit keeps: `n`, or ⌊percent/100 · total⌋."""
    if percent is not None:
        if not 0 < percent <= 100:
            raise ValueError(f"percent must lie in (0, 100], got {percent!r}")
        return math.floor(percent / 100 * total + 1e-9)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 0:
        raise ValueError(f"n must be a whole number of nodes, 0 or more, got {n!r}")
    return min(int(n), total)


def all_errors(dictionaries: Sequence[Any]) -> list[Site]:
    """Every error node of every dictionary, at every position."""
    return [Site("feature_error", d.layer, basis=d) for d in dictionaries]


def feature_circuit_stability(
    scores: FeatureScores, *, resamples: int = 100, seed: int = 0, **rule: Any
) -> pd.DataFrame:
    """One row per node ever chosen: how often (`inclusion`, a share of `resamples` draws of the
    prompts) `top_features(scores, **rule)` (`n=`, `percent=` or `threshold=`, and `errors=`,
    `absolute=`) chooses it when the nodes are scored on the resample, and whether it is in the
    circuit chosen on all prompts (`in_circuit`); `attrs` hold that circuit's size and the mean
    Jaccard overlap of the resampled circuits with it (`mean_jaccard`).

    The node circuit's `circuit_stability` asks the same of components. No forward: each resample
    re-weights the per-prompt estimates `feature_scores` keeps. Kept error nodes, in every
    circuit, are left out of the table and of the overlap."""
    bootstrap.check_options(0.5, resamples)
    errors = rule.get("errors", "kept")

    def chosen(effects: np.ndarray) -> frozenset[str]:
        again = FeatureScores(scores.nodes, effects, scores.dictionaries, scores.direction, "")
        return frozenset(str(s) for s in top_features(again, **rule) if _ranked(s, errors))

    resampled = scores.resampled(resamples, seed)
    full = chosen(scores.effects)
    found = [chosen(row) for row in resampled]
    inclusion = Counter(node for f in found for node in f)
    names = sorted(set(inclusion) | full, key=lambda node: (-inclusion[node], node))
    table = pd.DataFrame(
        {
            "node": names,
            "inclusion": [inclusion[node] / resamples for node in names],
            "in_circuit": [node in full for node in names],
        }
    )
    table.attrs.update(
        {
            "circuit_size": len(full),
            "mean_jaccard": float(np.mean([jaccard(c, full) for c in found])),
            "resamples": resamples,
            "seed": seed,
            "errors": errors,
            "method": scores.method,
            "direction": scores.direction,
        }
    )
    return table


def _ranked(site: Site, errors: Errors) -> bool:
    return errors == "ranked" or site.kind == "feature"


def _named(dictionaries: Sequence[Any]) -> dict[str, Any]:
    if not dictionaries:
        raise ValueError(
            "feature circuits need at least one dictionary (actpatch.load_dictionary(path, model))"
        )
    by_name: dict[str, Any] = {}
    for d in dictionaries:
        if getattr(d, "name", None) in by_name:
            raise ValueError(
                f"two dictionaries are named {d.name!r}: results name their dictionary, so give "
                "each a different name"
            )
        by_name[d.name] = d
    return by_name


@dataclass
class _Read:
    nodes: list[Site]
    effects: np.ndarray
    changes: np.ndarray | None
    gaps: np.ndarray | None
    direction: str
    method: str


def _read(result: xr.DataArray, by_name: dict[str, Any]) -> _Read:
    """One feature result's nodes in `results.sites` order, their effects and per-prompt changes."""
    kind = result.attrs.get("site") if isinstance(result, xr.DataArray) else None
    if kind not in FEATURE_KINDS:
        raise SiteError(
            f"feature circuits rank 'feature' and 'feature_error' results (attribute or sweep with "
            f"dictionary=), not {kind or type(result).__name__!r}"
        )
    name = result.attrs["dictionary"]["name"]
    if name not in by_name:
        raise ValueError(
            f"a result is over the dictionary {name}, which is not among the dictionaries given "
            f"({', '.join(by_name)}): pass it too"
        )
    if "direction" in result.dims or "corruption" in result.dims:
        extra = "direction" if "direction" in result.dims else "corruption"
        raise ValueError(
            f"this result has a {extra!r} dimension: pick one, e.g. result.sel({extra}=...)"
        )
    if "stat" in result.dims:
        result = result.sel(stat="value", drop=True)
    direction = result.attrs.get("direction")
    if direction not in ("denoise", "noise"):
        raise ValueError(
            "a result does not say its direction (attrs['direction']); select one direction first"
        )
    cells = [d for d in ("layer", "latent", "pos") if d in result.dims]
    one = result.isel(batch=0, drop=True) if "batch" in result.dims else result
    nodes = results.sites(one, basis=by_name[name])
    method = result.attrs.get("estimate", {"method": "exact"})["method"]
    if "batch" not in result.dims:
        norm = result.sel(metric="norm_logit_diff").transpose(*cells).values.reshape(-1)
        return _Read(
            nodes,
            results.effects(result.attrs, norm, "norm_logit_diff"),
            None,
            None,
            direction,
            method,
        )
    baselines = result.attrs["per_prompt_baseline_logit_diff"]
    clean, corrupt = np.asarray(baselines["clean"], float), np.asarray(baselines["corrupt"], float)
    diff = result.sel(metric="logit_diff").transpose(*cells, "batch").values.reshape(-1, len(clean))
    change = diff - corrupt if direction == "denoise" else clean - diff
    gaps = clean - corrupt
    return _Read(nodes, change.mean(1) / gaps.mean(), change, gaps, direction, method)

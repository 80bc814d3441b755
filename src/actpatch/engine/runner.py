"""The spine of every sweep: spec → plan → baselines → self-checks → an engine's rows → result.

An engine only produces rows (one per site, in any order, a chunk at a time) and says what the
work cost; everything a result reports — baselines, self-checks, metrics, layout, provenance —
is done here, once, so results of every engine read alike. A checkpoint wraps any engine: each
chunk of rows is on disk before the next one is asked for.

A new analysis is written as an engine: `start(model, plan, baseline)` returns an object with
`logits(values)` (one patched target run: the self-checks go through it), `known(reduce)` (rows it
knows without running, e.g. patches that change nothing; `{}` will do), `rows(reduce, done)` (yield
`{site index: reduce(final-position logits)}` for every site not in `done`) and `cost()`."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any, Protocol

import torch
import xarray as xr
from torch import Tensor

from actpatch import hooks, metrics, results
from actpatch.engine import checks, collect, sources
from actpatch.engine.checkpoint import Checkpoint, fingerprint
from actpatch.engine.plan import SweepPlan, plan
from actpatch.engine.spec import SweepSpec
from actpatch.models.model import Model
from actpatch.pairs import PromptPairs
from actpatch.sites import Site

log = logging.getLogger(__name__)


class Patching(Protocol):
    def logits(self, values: Mapping[Site, Tensor]) -> Tensor: ...
    def known(self, reduce: Callable[[Tensor], Any]) -> dict[int, Any]: ...
    def rows(
        self, reduce: Callable[[Tensor], Any], done: Collection[int]
    ) -> Iterator[dict[int, Any]]: ...
    def cost(self) -> dict[str, Any]: ...


class Engine(Protocol):
    name: str
    records_target: (
        bool  # whether the baseline's target forward also records what copies resume from
    )

    def start(self, model: Model, the_plan: SweepPlan, base: metrics.Baseline) -> Patching: ...


def run(
    model: Model,
    pairs: PromptPairs,
    spec: SweepSpec,
    engine: Engine,
    *,
    checkpoint: Path | None = None,
) -> xr.DataArray:
    """One direction of one sweep on one batch of prompts, by `engine`: a labelled result."""
    the_plan = plan(model, pairs, spec)
    # A sweep only runs forwards: without no_grad, a model whose parameters require grad (one being
    # trained, or built in memory) would record a graph per forward and hand rows tensors that
    # numpy refuses. Pattern patches run under our eager attention, so the baselines they are
    # measured against must too: in bfloat16, eager and sdpa attention differ by more than the
    # self-checks allow.
    with (
        torch.no_grad(),
        hooks.eager_attention(model) if the_plan.kind == "pattern" else contextlib.nullcontext(),
    ):
        # The baseline's forwards also capture every value the patches and self-checks read.
        the_plan, clean_logits, corrupt_logits = sources.recorded(
            model, the_plan, record_target=engine.records_target
        )
        base = collect.checked(
            model, pairs, clean_logits, corrupt_logits, check=spec.check_baseline
        )
        patching = engine.start(model, the_plan, base)
        self_checks = checks.run(model, the_plan, base, patching.logits)
        store = None
        if checkpoint is not None:
            holds = "metrics per prompt" if spec.per_prompt else "metrics"
            store = Checkpoint.open(checkpoint, fingerprint(model, pairs, the_plan, rows=holds))
        reduce = functools.partial(collect.row, base=base, per_prompt=spec.per_prompt)
        rows = patching.known(reduce)  # patches that cannot change anything: not worth a file
        restored = {
            i: row
            for i, row in (store.load() if store else {}).items()
            if 0 <= i < len(the_plan.sites) and i not in rows
        }
        rows.update(restored)
        for chunk in patching.rows(reduce, set(rows)):
            rows.update(chunk)
            if store is not None:
                store.append(chunk)
        result = assemble(
            model,
            pairs,
            the_plan,
            [rows[i] for i in range(len(the_plan.sites))],
            base,
            self_checks,
            engine=engine.name,
        )
    result.attrs["cost"] = {**patching.cost(), "patches_from_checkpoint": len(restored)}
    return result


def assemble(
    model: Model,
    pairs: PromptPairs,
    the_plan: SweepPlan,
    rows: list[dict[str, Any]],
    base: metrics.Baseline,
    self_checks: dict[str, float],
    *,
    engine: str,
) -> xr.DataArray:
    """Lay `rows` (in `the_plan.sites` order) out as a labelled result with its provenance."""
    spec = the_plan.spec
    # Per-prompt rows carry per-prompt baselines too: a resampled set of prompts (a bootstrap) needs
    # its own clean and corrupt means to normalise the logit difference as the sweep does.
    per_prompt_baselines = (
        {
            "per_prompt_baseline_logit_diff": {
                "clean": base.clean_logit_diff.tolist(),
                "corrupt": base.corrupt_logit_diff.tolist(),
            }
        }
        if spec.per_prompt
        else {}
    )
    return results.assemble(
        rows,
        the_plan.sites,
        layers=the_plan.layers,
        units=the_plan.units,
        positions=the_plan.positions,
        pos_tokens=_pos_tokens(model, pairs, the_plan.positions),
        n_prompts=len(pairs) if spec.per_prompt else None,
        provenance=results.provenance(
            model,
            pairs,
            analysis="sweep",
            site=the_plan.kind,
            direction=the_plan.direction,
            positions=_positions_label(spec.positions, the_plan.positions),
            engine=engine,
            attention=model.hf.config._attn_implementation,  # "actpatch_eager" for pattern sweeps
            source=the_plan.source_name,
            baseline_clean={
                **metrics.averaged(base.clean_logits, base),
                "answer_rank": float(
                    metrics.answer_rank(base.clean_logits, base.answers).double().median()
                ),
            },
            baseline_corrupt=metrics.averaged(base.corrupt_logits, base),
            self_checks=self_checks,
            self_check_tolerance=checks.tolerance(next(model.hf.parameters()).dtype),
            **per_prompt_baselines,
            **_basis_provenance(spec.dictionary),
        ),
    )


def _basis_provenance(basis: Any) -> dict[str, Any]:
    """Which dictionary a feature sweep patched in: name, where it reads and writes, its file."""
    return {} if basis is None else {"dictionary": dictionary_note(basis)}


def dictionary_note(basis: Any) -> dict[str, Any]:
    """What a result records of a dictionary (feature sweeps, feature circuits)."""
    return {
        "name": basis.name,
        "layer": basis.layer,
        "reads": basis.reads,
        "writes": basis.writes,
        "n_latents": basis.n_latents,
        "source": getattr(basis, "source", ""),
    }


def _positions_label(asked: Any, chosen: list) -> str:
    """What `positions=` selected, as provenance: "each", "all", or the list ("S2,END")."""
    if chosen == [None]:
        return "all"
    if asked is None or asked == "each":
        return "each"
    return ",".join(str(p) for p in chosen)


def _pos_tokens(model: Model, pairs: PromptPairs, positions) -> dict[str, list]:
    """Labels for each swept position: the first prompt's clean and corrupt token there, the
    position's name where every prompt has that name at that index (`pos_name`), and the index
    where a named position sits at the same index in every prompt (`pos_index`, else -1)."""
    if positions == [None]:
        return {}

    def at(ids, p):
        index = int(pairs.positions[p][0]) if isinstance(p, str) else p
        return model.token_strings(ids[0, index : index + 1])[0]

    def name(p) -> str:
        if isinstance(p, str):
            return p
        return "/".join(n for n, where in pairs.positions.items() if bool((where == p).all()))

    def index(p) -> int:
        if not isinstance(p, str):
            return p
        where = pairs.positions[p]
        return int(where[0]) if bool((where == where[0]).all()) else -1

    return {
        "clean_token": [at(pairs.clean, p) for p in positions],
        "corrupt_token": [at(pairs.corrupt, p) for p in positions],
        "pos_name": [name(p) for p in positions],
        "pos_index": [index(p) for p in positions],
    }

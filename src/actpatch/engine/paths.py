"""Path patching: a sender's patch reaches the model only through chosen receivers.

A sender is a head (`Site("head", l, h)`, its z) or an MLP (`Site("mlp_out", l)`), optionally at
one position. A receiver is what reads the residual stream: a head's query, key or value input
(`Site("q", l, h)`; `k` and `v` by KV head), an MLP's input (`Site("mlp_out", l)`: an MLP acts on
each position alone, so writing what it computes from the patched input is writing its input),
or the final residual stream read by the unembedding (`"logits"`).

The algorithm (Wang et al. 2022; Goldowsky-Dill et al. 2023):
1. run the target with the senders at their source values and every other head and MLP frozen at
   its target-run value, and record the receivers' inputs;
2. run the target again with only those receiver inputs patched (when the logits are a receiver,
   run 1's own logits are the answer: the final residual stream *is* their input).
Receivers that read one another (a layer-9 query and a layer-10 query, say) are recorded in
order, one run per stage of the forward (attention of layer l, then its MLP): a receiver already
recorded runs on its patched inputs while later ones are recorded, its other inputs held at their
target values. So the paths patched are exactly those that leave a sender and enter the model only
through receivers; where no receiver reads another (receivers in one layer, or the logits alone)
this is the two-run algorithm above, and with every receiver downstream it is the plain patch of
the sender's output. Components upstream of every sender are never touched: they run as in the
target. Not here: choosing senders and receivers (see `circuits`), and approximations (AtP).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

import torch
import xarray as xr
from torch import Tensor
from tqdm.auto import tqdm

from actpatch import hooks, metrics, results
from actpatch.engine import checks, collect, runner, sources
from actpatch.engine.plan import check_model, plan, source_and_target
from actpatch.engine.spec import DIRECTIONS, Direction, Positions, SweepSpec
from actpatch.models.model import Model
from actpatch.pairs import PromptPairs
from actpatch.run import Run
from actpatch.sites import KV_KINDS, Site, SiteError, validate

log = logging.getLogger(__name__)

Receiver = Site | Literal["logits"]
SENDER_KINDS = ("head", "mlp_out")
RECEIVER_KINDS = ("q", "k", "v", "mlp_out")


def patch_paths(
    model: Model,
    pairs: PromptPairs,
    sender: Site | Sequence[Site],
    receivers: Sequence[Receiver],
    *,
    direction: Direction = "denoise",
    check_baseline: bool = True,
) -> xr.DataArray:
    """Every metric after patching `sender` (source values) along its paths to `receivers` only.

    `direction="denoise"` writes the clean run's sender into the corrupt run; `"noise"` the reverse.
    Several senders are patched together. `check_baseline` as in `sweep`. `ap.all_receivers(model,
    sender)` lists every receiver downstream: with all of them this equals patching the sender's
    output outright; `["logits"]` alone is its direct effect. The result is a `metric` vector with
    the senders and receivers in its attributes.

        ap.patch_paths(model, pairs, ap.Site("head", 7, 3), [ap.Site("q", 9, h) for h in range(9)])
    """
    senders = [sender] if isinstance(sender, Site) else list(sender)
    check_model(model)
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be one of {DIRECTIONS}, got {direction!r}")
    source_run, target_run = source_and_target(pairs, direction)
    paths = Paths(model, senders, receivers)
    if unreached := [r for r in paths.receivers if not paths.reached(r)]:
        raise SiteError(
            f"{', '.join(map(str, unreached))} read(s) the residual stream before any sender writes to it, so no path "
            "reaches them; choose receivers in later layers (or the MLP of a sender head's own layer)."
        )
    source = sources.captured(model, source_run, [_whole(s) for s in senders])
    sender_values = {s: source[_whole(s)] for s in senders}
    base = collect.baseline(model, pairs, check=check_baseline)
    with torch.no_grad():
        target = Target(model, target_run, pairs.positions, paths.needed_target_sites())
        logits = target.logits(sender_values, paths)
        self_checks = _noop_check(model, target, senders[0], paths, base, direction)
    values = metrics.averaged(logits, base)
    result = results.Result(
        [values[m] for m in metrics.METRICS],
        dims=["metric"],
        coords={"metric": list(metrics.METRICS)},
        name="path_patching_effect",
    )
    result.attrs.update(
        results.provenance(
            model,
            pairs,
            analysis="patch_paths",
            direction=direction,
            engine="paths",
            source=source_run.name,
            senders=[str(s) for s in senders],
            receivers=[str(r) for r in paths.receivers],
            baseline_clean=metrics.averaged(base.clean_logits, base),
            baseline_corrupt=metrics.averaged(base.corrupt_logits, base),
            self_checks=self_checks,
            self_check_tolerance=checks.tolerance(next(model.hf.parameters()).dtype),
        )
    )
    return result


def sweep_paths(
    model: Model,
    pairs: PromptPairs,
    receivers: Sequence[Receiver],
    *,
    site: Literal["head", "mlp_out"] = "head",
    direction: Direction = "denoise",
    layers: Sequence[int] | None = None,
    heads: Sequence[int] | None = None,
    positions: Positions = "all",
    progress: bool | None = None,
    check_baseline: bool = True,
) -> xr.DataArray:
    """`patch_paths` for every sender of a sweep grid, one at a time: a labelled `metric × layer ×
    [head] × [pos]` result, laid out like `ap.sweep`'s.

    Receivers a sender cannot reach are dropped for that sender (they would read their target
    value anyway); a sender that reaches none of them has no path and gets NaN. The target run's
    frozen values are captured once for the whole grid."""
    if site not in SENDER_KINDS:
        raise SiteError(f"path patching sends from {SENDER_KINDS}, got {site!r}")
    the_plan = plan(
        model,
        pairs,
        SweepSpec(
            site, direction, layers=layers, positions=positions, heads=heads, progress=progress
        ),
    )
    every = Paths(model, [], receivers, require_receivers=False)
    source = sources.captured(
        model, the_plan.source, sorted({_whole(s) for s in the_plan.sites}, key=_order)
    )
    base = collect.baseline(model, pairs, check=check_baseline)
    rows = []
    self_checks: dict[str, float] = {}
    with torch.no_grad():
        target = Target(model, the_plan.target, pairs.positions, every.needed_target_sites())
        for s in tqdm(
            the_plan.sites,
            desc=f"paths from {site}",
            disable=None if progress is None else not progress,
        ):
            paths = Paths(
                model,
                [s],
                [r for r in every.receivers if _reads_after(model, r, s)],
                require_receivers=False,
            )
            if not paths.receivers:
                rows.append(dict.fromkeys(metrics.METRICS, float("nan")))
                continue
            if not self_checks:
                self_checks = _noop_check(model, target, s, paths, base, direction)
            rows.append(metrics.averaged(target.logits({s: source[_whole(s)]}, paths), base))
    result = runner.assemble(model, pairs, the_plan, rows, base, self_checks, engine="paths")
    result.attrs["analysis"] = "sweep_paths"
    result.name = "path_patching_effect"
    result.attrs["receivers"] = [str(r) for r in every.receivers]
    return result


def all_receivers(model: Model, sender: Site | Sequence[Site]) -> list[Receiver]:
    """Every receiver downstream of the earliest sender: the q, k and v of every later head, every
    MLP that reads after it (a head's own layer's MLP included, unless attention and MLP run in
    parallel), and the logits. Path patching to all of them is patching the sender outright."""
    listed = [sender] if isinstance(sender, Site) else list(sender)
    senders = Paths(
        model, listed, [], require_receivers=False
    ).senders  # checked, as path patches do
    dims = model.dims
    candidates: list[Receiver] = []
    for layer in range(dims.n_layers):
        candidates += [Site("q", layer, head=h) for h in range(dims.n_heads)]
        candidates += [
            Site(kind, layer, head=g) for kind in KV_KINDS for g in range(dims.n_kv_heads)
        ]
        candidates.append(Site("mlp_out", layer))
    candidates.append("logits")
    return [r for r in candidates if any(_reads_after(model, r, s) for s in senders)]


# --- runs ---------------------------------------------------------------------------------------


@contextmanager
def forward_inputs(model: Model, run: Run) -> Iterator[Tensor]:
    """The block's forwards get `run`'s input noise; yields its tokens. Enter it before any patch."""
    with hooks.add_to_input(model, run.noise):
        yield run.tokens


def _noop_check(
    model: Model, target: Target, sender: Site, paths: Paths, base: metrics.Baseline, direction: str
) -> dict:
    """The no-op path patch: the sender at its own target value, sent along the paths, must give the target run."""
    own = sources.captured(model, target.run, [_whole(sender)])[_whole(sender)]
    return {
        "noop_patch_error": checks.same_run_error(
            model, target.logits({sender: own}, paths), base, direction
        )
    }


# --- the plan of one path patch ------------------------------------------------------------------


def _whole(site: Site) -> Site:
    """The same site at every position."""
    return Site(site.kind, site.layer, site.head, site.neuron)


def _order(site: Site) -> tuple:
    return (site.layer, site.kind, site.head if site.head is not None else -1)


def write_stage(model: Model, component: Site) -> int:
    """When a component writes to the residual stream, in stages of the forward: attention of layer
    l is stage 2l, its MLP 2l + 1 (2l where attention and MLP run in parallel on resid_pre)."""
    if component.kind == "head":
        return 2 * component.layer
    return 2 * component.layer + (0 if model.arch.is_parallel(model.hf.config) else 1)


def read_stage(model: Model, reader: Receiver) -> int:
    """When a receiver (or the component it belongs to) reads the residual stream: a head and its
    q, k, v at its attention's stage, an MLP at its own, the logits after the last layer."""
    if reader == "logits":
        return 2 * model.dims.n_layers
    if reader.kind == "mlp_out":
        return write_stage(model, reader)
    return 2 * reader.layer


def _reads_after(model: Model, receiver: Receiver, sender: Site) -> bool:
    return read_stage(model, receiver) > write_stage(model, sender)


@dataclass
class Paths:
    """Senders and receivers of one path patch, checked; which components each run freezes,
    patches or records follows from them."""

    model: Model
    senders: list[Site]
    receivers: list[Receiver]
    require_receivers: bool = True
    # full-position receiver input site -> the positions it receives at (None: all)
    inputs: dict[Site, list] = field(init=False)
    stages: list[int] = field(init=False)

    def __post_init__(self) -> None:
        model = self.model
        parallel = model.arch.is_parallel(model.hf.config)
        for s in self.senders:
            if not isinstance(s, Site) or s.kind not in SENDER_KINDS:
                raise SiteError(
                    f"a sender is a head (Site('head', layer, head=h)) or an MLP (Site('mlp_out', layer)); got {s!r}"
                )
            validate(s, model.arch, model.dims, parallel=parallel)
        checked: list[Receiver] = []
        for r in self.receivers:
            if r != "logits" and (not isinstance(r, Site) or r.kind not in RECEIVER_KINDS):
                raise SiteError(
                    f"a receiver is a head's input (Site('q'|'k'|'v', layer, head=h); k and v by KV head), an MLP "
                    f"(Site('mlp_out', layer)), or 'logits'; got {r!r}"
                )
            if r != "logits":
                validate(r, model.arch, model.dims, parallel=parallel)
                r = Site(r.kind, r.layer % model.dims.n_layers, r.head, None, r.pos)
            if r not in checked:
                checked.append(r)
        self.receivers = checked
        if not self.receivers and self.require_receivers:
            raise SiteError(
                "no receivers given: pass e.g. ['logits'] or ap.all_receivers(model, sender)"
            )
        self.senders = [
            Site(s.kind, s.layer % model.dims.n_layers, s.head, None, s.pos) for s in self.senders
        ]
        self.inputs = {}
        for r in self.receivers:
            if r != "logits":
                self.inputs.setdefault(_whole(r), []).append(r.pos)
        self.stages = sorted({read_stage(model, r) for r in self.receivers})
        clash = {_whole(s) for s in self.senders} & self.receiving_components()
        if clash:
            raise SiteError(
                f"{', '.join(map(str, clash))} would be both a sender and a receiver: a sender's value is fixed"
            )

    def reached(self, receiver: Receiver) -> bool:
        return any(_reads_after(self.model, receiver, s) for s in self.senders)

    def receiving_components(self) -> set[Site]:
        """Heads (as `head` sites) and MLPs (as `mlp_out` sites) with at least one input receiving."""
        group = self.model.dims.n_heads // self.model.dims.n_kv_heads
        found: set[Site] = set()
        for r in self.inputs:
            if r.kind == "mlp_out":
                found.add(r)
            elif r.kind == "q":
                found.add(Site("head", r.layer, head=r.head))
            else:
                found.update(
                    Site("head", r.layer, head=h)
                    for h in range(r.head * group, (r.head + 1) * group)
                )
        return found

    def needed_target_sites(self) -> list[Site]:
        """Target-run values the runs may freeze to: every head's z and MLP's output, and the q, k and
        v of every receiving head."""
        dims = self.model.dims
        sites = [Site("head", l, head=h) for l in range(dims.n_layers) for h in range(dims.n_heads)]
        sites += [Site("mlp_out", l) for l in range(dims.n_layers)]
        sites += [
            s for c in self.receiving_components() if c.kind == "head" for s in self._head_inputs(c)
        ]
        return list(dict.fromkeys(sites))

    def _head_inputs(self, head: Site) -> list[Site]:
        group = self.model.dims.n_heads // self.model.dims.n_kv_heads
        return [
            Site("q", head.layer, head=head.head),
            Site("k", head.layer, head=head.head // group),
            Site("v", head.layer, head=head.head // group),
        ]


class Target:
    """The target run's frozen values, captured once, and the runs of path patches on it."""

    def __init__(
        self,
        model: Model,
        run: Run,
        positions,
        sites: Sequence[Site],
        base: Mapping[Site, Tensor] | None = None,
    ):
        """`base`: whole-position patches that define the target run itself (e.g. a component
        knocked out); they apply in every run, its captured values included."""
        self.model, self.run, self.positions = model, run, positions
        self.base = dict(base or {})
        with (
            forward_inputs(model, run) as tokens,
            hooks.patch(model, self.base, named_positions=positions),
        ):
            self.values = hooks.capture(model, tokens, list(sites), named_positions=positions)

    def logits(self, sender_values: Mapping[Site, Tensor], paths: Paths) -> Tensor:
        """Final-position logits of the path patch. `sender_values[s]` is the source run's value of
        `s` at every position; it is written at `s.pos` only."""
        senders = {}
        for s, value in sender_values.items():
            whole = _whole(s)
            senders[whole] = compose(
                senders.get(whole, self.values[whole]), value, s.pos, self.positions
            )
        earliest = min(write_stage(self.model, s) for s in senders)
        receiving = paths.receiving_components()
        recorded: dict[Site, Tensor] = {}
        final = None
        for stage in paths.stages:
            patches = self._frozen(senders, earliest, receiving, paths, recorded, before=stage)
            recording = [r for r in paths.inputs if read_stage(self.model, r) == stage]
            patches = {
                s: v for s, v in patches.items() if s not in recording
            }  # recorded MLPs run live
            with (
                forward_inputs(self.model, self.run) as tokens,
                hooks.patch(self.model, {**patches, **self.base}, named_positions=self.positions),
            ):
                if stage == 2 * self.model.dims.n_layers:
                    final = hooks.last_logits(self.model, tokens)
                else:
                    recorded.update(
                        hooks.capture(self.model, tokens, recording, named_positions=self.positions)
                    )
        if final is not None:
            return final
        patches = {s: self._received(s, paths, recorded) for s in paths.inputs}
        with (
            forward_inputs(self.model, self.run) as tokens,
            hooks.patch(self.model, {**patches, **self.base}, named_positions=self.positions),
        ):
            return hooks.last_logits(self.model, tokens)

    def _frozen(
        self, senders, earliest, receiving, paths: Paths, recorded, *, before: int
    ) -> dict[Site, Tensor]:
        """Patches of a recording run: senders at source; receiving components that read before
        stage `before` on their recorded inputs (other inputs at target); every other component
        downstream of the earliest sender frozen at its target value."""
        model = self.model
        patches: dict[Site, Tensor] = {}
        for layer in range(model.dims.n_layers):
            for component in [Site("head", layer, head=h) for h in range(model.dims.n_heads)] + [
                Site("mlp_out", layer)
            ]:
                if component in senders:
                    patches[component] = senders[component]
                    continue
                if read_stage(model, component) <= earliest:
                    continue  # upstream of every sender: it runs as in the target
                if component in receiving and read_stage(model, component) < before:
                    if component.kind == "mlp_out":
                        patches[component] = self._received(component, paths, recorded)
                    else:
                        for s in paths._head_inputs(component):
                            patches[s] = (
                                self._received(s, paths, recorded)
                                if s in paths.inputs
                                else self.values[s]
                            )
                    continue
                patches[component] = self.values[component]
        return patches

    def _received(self, site: Site, paths: Paths, recorded: dict[Site, Tensor]) -> Tensor:
        """A receiver input's patched value: recorded at its receiving positions, target elsewhere."""
        value = self.values.get(site, None)
        for pos in paths.inputs[site]:
            value = compose(value, recorded[site], pos, self.positions)
        return value


def compose(base: Tensor | None, new: Tensor, pos, positions) -> Tensor:
    """`base` with `new` written at `pos` (an index, a named position resolved per prompt, or None
    for all); both (batch, pos, ...)."""
    if pos is None:
        return new
    if base is None:
        raise ValueError("a value at some positions needs the target's value for the others")
    out = base.clone()
    if isinstance(pos, str):
        rows = torch.arange(out.shape[0])
        index = torch.as_tensor(positions[pos]).long()
        out[rows, index] = new[rows, index]
    else:
        out[:, pos] = new[:, pos]
    return out

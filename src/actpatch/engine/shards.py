"""Sharded sweeps on Ray: a sweep's sites cut into shards, each patched by the batched engine on a
worker that holds its own copy of the model, and the rows laid out as one result.

The result is the single-process result (same dims, coordinates and provenance; numbers within
float32 rounding of a differently batched forward), because every shard runs the same plan,
narrowed to its sites, through the batched engine, and `Workers` is just another engine of
`runner.run`: the driver takes the baselines, runs the self-checks and lays the rows out. Only `engine` and `attrs["cost"]` (which adds `shards` and `workers`) say that it
was sharded. Ray does the scheduling: a worker that dies is restarted and its shard retried, while
the rows of finished shards are already with the driver (and in the `checkpoint` folder, if one was
given), so they are never recomputed.

Workers are Ray actors that load the model once and run shard after shard. The model object does
not travel: a worker loads its copy from a `ModelSpec` (where the model was loaded from, and its
dtype), and must end up with the same weights, which is checked before any shard runs.

Not this module's job: computing patches (`engine/batched.py`), or starting a cluster (`ray start`,
docs/scale.md)."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
from collections.abc import Callable, Collection, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from actpatch import hooks, metrics
from actpatch.engine import batched, collect
from actpatch.engine.plan import SweepPlan
from actpatch.models import cache
from actpatch.models.load import load_model
from actpatch.models.model import Model, weights_fingerprint
from actpatch.sites import Site

log = logging.getLogger(__name__)

ENGINE = "batched, sharded on Ray"  # the result's attrs["engine"]
RETRIES = 3  # restarts of a worker that died, each retrying the shard it was running, before the sweep fails


class UnshippableModel(ValueError):
    """Ray workers cannot load their own copy of this model: it was built or changed in memory."""


class ShardFailed(RuntimeError):
    """A shard's worker died more often than Ray was allowed to restart it."""


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """What a worker needs to load its own copy of a model; picklable, unlike the model."""

    source: (
        str | None
    )  # a folder, .gguf file or hub id that `load_model` reads; None for the embedded default
    dtype: str  # "float32", "bfloat16", ...

    @classmethod
    def of(cls, model: Model) -> ModelSpec:
        """Where `model` was loaded from, read from its provenance; `UnshippableModel` when it has none."""
        provenance = model.provenance
        if (
            "device_map" in provenance
            or len(set(getattr(model.hf, "hf_device_map", {}).values())) > 1
        ):
            raise UnshippableModel(
                f"{model.name} is split over several devices (device_map), and each Ray worker holds a whole copy of "
                "the model: load it on one device per worker (ap.load_model(..., device=...)), or sweep without shards="
            )
        dtype = str(next(model.hf.parameters()).dtype).removeprefix("torch.")
        if provenance.get("model") == cache.DEFAULT_NAME and provenance.get("checkpoint"):
            return cls(None, dtype)
        source = provenance.get("source")
        if not source:
            raise UnshippableModel(
                f"{model.name} was built in memory (Model.from_hf), so Ray workers have nothing to load their own copy "
                "from. Save it and load it from the folder: model.hf.save_pretrained(folder) (and "
                "model.tokenizer.save_pretrained(folder) if it has one), then model = ap.load_model(folder)"
            )
        path = Path(source).expanduser()
        # A relative path means nothing in a worker's working directory; a hub id is not a local path.
        return cls(str(path.resolve()) if path.exists() else source, dtype)

    def load(self, device: str) -> Model:
        return load_model(self.source, dtype=self.dtype, device=device)


def check_shards(shards: Any) -> int:
    """`shards` as a positive int, or `ValueError` saying what it means."""
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise ValueError(
            f"shards must be a whole number of at least 1 (how many pieces the sites are cut into, "
            f"each patched on a Ray worker), got {shards!r}"
        )
    return shards


class Workers:
    """Ray actors that each hold a copy of `model`, for the length of one `with` block.

    The first `sweep` (once its arguments and baseline are found good) connects to Ray
    (`ray_address`, or `$RAY_ADDRESS`, or a local Ray started here with one CPU per shard up to the
    machine's count), starts min(shards, workers the cluster has room for) actors, one GPU each
    where the cluster has GPUs and one CPU each otherwise, and checks that each loaded the same
    weights as `model`; later sweeps reuse them. Leaving the block kills the actors and shuts down a
    Ray started here (call `ray.init()` yourself first to keep a local Ray up across sweeps).
    It is an engine of `runner.run` (`start`)."""

    def __init__(self, model: Model, *, shards: int, ray_address: str | None = None):
        self.shards = check_shards(shards)
        self.spec = ModelSpec.of(model)
        self.ray_address = ray_address
        self.ray = _import_ray()
        self.actors: list[Any] = []
        self._started_ray = False
        self._weights = weights_fingerprint(model)

    def __enter__(self) -> Workers:
        return self

    def __exit__(self, *exc: Any) -> None:
        for actor in self.actors:
            self.ray.kill(actor)
        self.actors = []
        if self._started_ray:
            self.ray.shutdown()
            self._started_ray = False

    def _start(self) -> None:
        ray = self.ray
        self._started_ray = _connect(ray, self.ray_address, self.shards)
        try:
            resources = ray.cluster_resources()
            gpus = int(resources.get("GPU", 0))
            count = max(1, min(self.shards, gpus or int(resources.get("CPU", 1))))
            actor = ray.remote(
                num_cpus=1,
                num_gpus=1 if gpus else 0,
                max_restarts=RETRIES,
                max_task_retries=RETRIES,
            )(_ShardWorker)
            self.actors = [actor.remote(self.spec) for _ in range(count)]
            log.info(
                "%d Ray workers (%s each) load %s",
                count,
                "one GPU" if gpus else "one CPU",
                self.spec.source or "the default model",
            )
            loaded = ray.get([a.weights.remote() for a in self.actors])
        except BaseException:
            self.__exit__(None, None, None)
            raise
        if any(w != self._weights for w in loaded):
            self.__exit__(None, None, None)
            raise UnshippableModel(
                f"the workers loaded {self.spec.source or 'the default model'} in {self.spec.dtype} and got other weights "
                "than the model passed to sweep: it was changed after loading, or the files changed since. Save the model "
                "you mean (model.hf.save_pretrained(folder)) and load it from there"
            )

    name = ENGINE
    records_target = True  # for the self-checks on the driver, which run through the batched engine

    def start(self, model: Model, the_plan: SweepPlan, base: metrics.Baseline) -> ShardPatching:
        """An `Engine` for `runner.run`: its rows are patched shard by shard on the workers.

        The runner has checked the plan and the baseline by now, so a bad argument or an unsolved
        task is refused before any worker starts. Self-checks run here on the driver's model, through
        the batched engine each worker runs; the workers were checked to hold the same weights."""
        if not self.actors:
            self._start()
        return ShardPatching(self, model, the_plan, base)

    def run_shards(
        self, the_plan: SweepPlan, pieces: list[list[int]]
    ) -> Iterator[tuple[int, list[Any], dict[str, Any]]]:
        """(shard number, rows, cost) of each shard, in the order they finish.

        Each free worker gets the next shard; the plan goes to the object store once, without the
        driver's captured values and recorded target: a worker records its own, on its own device."""
        ray = self.ray
        plan_ref = ray.put(dataclasses.replace(the_plan, captured={}, recorded_target=None))
        waiting = list(enumerate(pieces))
        idle = list(self.actors)
        running: dict[Any, tuple[Any, int]] = {}
        while waiting or running:
            while waiting and idle:
                actor, (number, indices) = idle.pop(), waiting.pop(0)
                running[actor.run.remote(number, plan_ref, indices)] = (actor, number)
            [done], _ = ray.wait(list(running), num_returns=1)
            actor, number = running.pop(done)
            try:
                outcome = ray.get(done)
            except ray.exceptions.RayActorError as error:
                first = the_plan.sites[pieces[number][0]]
                raise ShardFailed(
                    f"shard {number} of {len(pieces)} ({len(pieces[number])} {the_plan.direction} patches from {first}) was "
                    f"lost: its worker died again after Ray had restarted it {RETRIES} times ({type(error).__name__}). Out of "
                    "memory is the usual cause: use more shards, a smaller chunk=, or workers with more memory. Finished "
                    "shards are kept with checkpoint=: the same sweep run again then patches only the rest"
                ) from error
            idle.append(actor)
            yield outcome


class ShardPatching:
    """One plan's rows from the workers; single patches (the self-checks) on the driver."""

    def __init__(self, workers: Workers, model: Model, the_plan: SweepPlan, base: metrics.Baseline):
        self.workers, self.plan = workers, the_plan
        self.local = batched.BatchedPatching(model, the_plan, base)
        self.costs: list[dict[str, Any]] = []
        self.pieces: list[list[int]] = []

    def logits(self, values: Mapping[Site, Tensor]) -> Tensor:
        return self.local.logits(values)

    def known(self, reduce: Callable[[Tensor], Any]) -> dict[int, Any]:
        return {}  # each worker skips its own no-op patches

    def rows(
        self, reduce: Callable[[Tensor], Any], done: Collection[int]
    ) -> Iterator[dict[int, Any]]:
        """Rows of every site not in `done`, a shard at a time as shards finish. Workers reduce
        logits against their own baseline, so that their no-op patches stay exact."""
        if not (pending := [i for i in range(len(self.plan.sites)) if i not in done]):
            return
        self.pieces = split(pending, self.plan, self.workers.shards)
        progress = self.plan.spec.progress
        bar = tqdm(
            total=len(self.plan.sites),
            initial=len(self.plan.sites) - len(pending),
            desc=f"{self.plan.direction} {self.plan.kind}, {len(self.pieces)} shards",
            disable=None if progress is None else not progress,
        )
        for number, shard_rows, shard_cost in self.workers.run_shards(self.plan, self.pieces):
            self.costs.append(shard_cost)
            yield dict(zip(self.pieces[number], shard_rows))
            bar.update(len(self.pieces[number]))
        bar.close()

    def cost(self) -> dict[str, Any]:
        local = self.local.cost()
        return {
            "patches": len(self.plan.sites),
            "noop_patches_skipped": sum(c["noop_patches_skipped"] for c in self.costs),
            "chunk": min((c["chunk"] for c in self.costs), default=local["chunk"]),
            # Every shard records the target itself, and the driver ran the self-checks: this is the whole work.
            "forward_equivalents": round(
                local["forward_equivalents"] + sum(c["forward_equivalents"] for c in self.costs), 3
            ),
            "work_floor": round(sum(c.get("work_floor", 0) for c in self.costs), 3),
            "shards": len(self.pieces),
            "workers": len(self.workers.actors),
            # Where the shards ran ("cuda:0" with one GPU per worker, "cpu" otherwise): the GPU check reads it.
            "worker_devices": sorted({c["device"] for c in self.costs if "device" in c}),
        }


def split(indices: list[int], the_plan: SweepPlan, shards: int) -> list[list[int]]:
    """`indices` (into `the_plan.sites`) cut into at most `shards` pieces of near-equal size.

    Cut in the batched engine's own order, by the first position a patch can change and then by
    layer: each worker records the target run once per such position it meets, so a shard that
    holds few positions records little."""

    def entry(
        index: int,
    ) -> tuple[int, int]:  # the plan's positions and layers are already non-negative
        s = the_plan.sites[index]
        if s.pos is None or s.kind == "pattern":
            return 0, s.layer
        if isinstance(s.pos, str):
            return int(the_plan.target.positions[s.pos].min()), s.layer
        return s.pos, s.layer

    ordered = sorted(indices, key=entry)
    count = min(shards, len(ordered))
    size, extra = divmod(len(ordered), count)
    pieces, start = [], 0
    for number in range(count):
        end = start + size + (number < extra)
        pieces.append(sorted(ordered[start:end]))
        start = end
    return pieces


class _ShardWorker:
    """A Ray actor's state: one copy of the model, loaded on first use (again after a restart)."""

    def __init__(self, spec: ModelSpec):
        self.spec = spec
        self.model: Model | None = None

    def weights(self) -> str:
        return weights_fingerprint(self._model())

    def run(
        self, number: int, the_plan: SweepPlan, indices: list[int]
    ) -> tuple[int, list[Any], dict[str, Any]]:
        model = self._model()
        shard_plan = the_plan.narrowed([the_plan.sites[i] for i in indices])
        shard_plan = dataclasses.replace(shard_plan, spec=shard_plan.spec.replace(progress=False))
        per_prompt = shard_plan.spec.per_prompt
        with (
            torch.no_grad(),
            (
                hooks.eager_attention(model)
                if shard_plan.kind == "pattern"
                else contextlib.nullcontext()
            ),
        ):
            # This worker's own baseline: a no-op patch must give its own target logits exactly.
            base = collect.baseline(model, shard_plan.pairs, check=False)
            patching = batched.BatchedPatching(model, shard_plan, base)
            reduce = lambda logits: collect.row(logits, base, per_prompt=per_prompt)
            rows = patching.known(reduce)
            for chunk in patching.rows(reduce, set(rows)):
                rows.update(chunk)
        return (
            number,
            [rows[i] for i in range(len(indices))],
            {**patching.cost(), "device": str(model.device)},
        )

    def _model(self) -> Model:
        if self.model is None:
            import ray

            self.model = self.spec.load("cuda" if ray.get_gpu_ids() else "cpu")
        return self.model


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ImportError(
            "sharded sweeps (shards=) run on Ray, which is not installed: pip install 'actpatch[ray]' "
            "(or pip install 'ray>=2.9') on every machine that runs a worker"
        ) from None
    return ray


def _connect(ray: Any, address: str | None, shards: int) -> bool:
    """Connect to Ray; whether a Ray was started here (and so is shut down after the sweep)."""
    if ray.is_initialized():
        if address is not None:
            log.warning(
                "Ray is already running in this process; sweeping on it, not on %s", address
            )
        return False
    if address is None and not os.environ.get("RAY_ADDRESS"):
        cpus = min(shards, os.cpu_count() or 1)
        log.info("starting a local Ray with %d CPUs", cpus)
        ray.init(num_cpus=cpus, include_dashboard=False, logging_level=logging.WARNING)
    else:
        ray.init(address=address, logging_level=logging.WARNING)
    return True

"""Experiment files: one analysis written down in TOML, checked whole before anything runs.

    [model]                       # optional; without it, the embedded SmolLM2
    name = "path/to/checkpoint"   # a checkpoint folder, a .gguf file, or a hub id
    [task]
    name = "ioi"                  # ioi, ioi_groups, factual, greater_than, induction, "file:pairs.jsonl"
    n = 16
    corruption = "s2"
    [sweep]
    site = "resid_pre"
    direction = "both"            # denoise, noise, or both
    [output]
    folder = "ioi-s2"

A typo must not silently fall back to a default, so every section refuses unknown keys, every
value is type-checked (no "8" for 8) and every choice is checked against its allowed values;
`ExperimentError` names the key, what is wrong and what is allowed. `[attribute]` and `[circuit]`
hold the settings of those analyses. A `file:` task's path is read relative to the experiment
file; `[output] folder` relative to the working directory.

`read(path)` gives a file's raw table (the command line merges its flags into it), `validate(data)`
the checked `Experiment`, `load(path)` both; `make_pairs(model, task)` builds a task's prompt pairs.
Running the analyses is the command line's job (`actpatch.cli`)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import tomllib
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)

from actpatch.sites import FEATURE_KINDS, parse_kind

if (
    TYPE_CHECKING
):  # checking a file must not wait for torch: the tasks are imported when pairs are made
    from actpatch.models.model import Model
    from actpatch.pairs import PromptPairs

TASKS = ("ioi", "ioi_groups", "factual", "greater_than", "induction")
FILE_TASK = "file:"  # followed by the path of a .jsonl or .csv file of prompt pairs
NOISE = "noise"  # the Gaussian-noise corruption, on top of any task's clean prompts
EMBEDDED = "embedded"  # sweep.dictionary: the embedded model's own dictionary (actpatch.embedded_dictionary)
DEFAULT_PROMPTS = 8


# Each task's own corruption schemes (its default first); "noise" is allowed for every task.
# IOI's repeat the keys of actpatch.corrupt.IOI_CORRUPTIONS, written out because that module imports
# torch and a file must be checked at once; tests/test_experiment.py holds the two equal.
CORRUPTIONS: dict[str, tuple[str, ...]] = {
    "ioi": ("abc", "s2", "s1", "io_s_swap", "random"),
    "ioi_groups": ("abc", "s2", "s1", "io_s_swap", "random"),
    "factual": ("str",),
    "greater_than": ("01",),
    "induction": ("induction_prev_answer",),
}
Dtype = Literal["float32", "bfloat16", "float16", "float64"]
Ablation = Literal["zero", "mean", "resample"]


class ExperimentError(ValueError):
    """An experiment file (or the flags merged into it) that cannot be run; the message says why."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class ModelSection(_Section):
    """[model]: which model, in which dtype, on which device."""

    name: str | None = None  # None: the embedded SmolLM2-135M-Instruct
    dtype: Dtype = "float32"
    device: str = "cpu"


class TaskSection(_Section):
    """[task]: the prompt pairs. Keys that only one task reads are refused for the others."""

    name: str
    n: PositiveInt | None = None  # prompt pairs; default 8 (a file: task uses every row)
    seed: int = 0
    corruption: str | None = None  # default: the task's own first scheme
    order: Literal["mixed", "abba", "baba"] | None = None  # ioi: abba; ioi_groups: mixed
    templates: Literal["classic", "all"] | None = (
        None  # ioi: classic (one template); ioi_groups: all
    )
    relations: list[str] | None = None  # factual
    length: PositiveInt | None = None  # induction
    repeat: PositiveInt | None = None  # induction
    noise_positions: Any = (
        None  # corruption = "noise": "all" or a list of indices and named positions
    )
    noise_scale: float | None = Field(
        default=None, gt=0
    )  # corruption = "noise": × the input's standard deviation

    @field_validator("name")
    @classmethod
    def _known_task(cls, name: str) -> str:
        if name not in TASKS and not (name.startswith(FILE_TASK) and len(name) > len(FILE_TASK)):
            raise ValueError(
                f"unknown task {name!r}; allowed: {', '.join(TASKS)}, or file:PATH (a .jsonl or .csv file)"
            )
        return name

    @field_validator("noise_positions")
    @classmethod
    def _noise_positions(cls, value: Any) -> Any:
        if value is None or value == "all" or _positions_list(value):
            return value
        raise ValueError(
            f'must be "all" or a non-empty list of token indices and named positions, got {value!r}'
        )

    @model_validator(mode="after")
    def _fits_the_task(self) -> TaskSection:
        task = "file" if self.is_file else self.name
        allowed = CORRUPTIONS.get(self.name)
        if (
            self.corruption is not None
            and allowed is not None
            and self.corruption not in (*allowed, NOISE)
        ):
            raise ValueError(
                f"task.corruption = {self.corruption!r} is not a corruption of {task}; allowed: "
                f"{', '.join((*allowed, NOISE))}"
            )
        only_for = {
            "order": ("ioi", "ioi_groups"),
            "templates": ("ioi", "ioi_groups"),
            "relations": ("factual",),
            "length": ("induction",),
            "repeat": ("induction",),
        }
        for key, names in only_for.items():
            if getattr(self, key) is not None and self.name not in names:
                raise ValueError(f"task.{key} applies to {' and '.join(names)} only, not to {task}")
        for key in ("noise_positions", "noise_scale"):
            if getattr(self, key) is not None and self.corruption != NOISE:
                raise ValueError(f'task.{key} applies to corruption = "noise" only')
        if self.is_file and self.n is not None:
            raise ValueError("task.n does not apply to file: tasks (every row of the file is used)")
        return self

    @property
    def is_file(self) -> bool:
        return self.name.startswith(FILE_TASK)

    @property
    def label(self) -> str:
        """A short name for file names and titles: the task, or the file's stem."""
        return Path(self.name.removeprefix(FILE_TASK)).stem if self.is_file else self.name


class SweepSection(_Section):
    """[sweep]: what to patch, as `actpatch.sweep` takes it."""

    site: str
    direction: Literal["denoise", "noise", "both"] = "denoise"
    positions: Any = (
        None  # "each", "all", or a list of indices and named positions; default per site kind
    )
    layers: list[int] | None = None
    heads: list[int] | None = None
    neurons: list[int] | None = None
    dictionary: str | None = None  # feature sites: a dictionary folder, or "embedded"
    latents: Any = None  # feature sites: "active", "all", or a list of latent indices
    engine: Literal["batched", "reference"] = "batched"
    ablation: Ablation | None = None  # noising sources without a second run
    chunk: PositiveInt | None = None
    memory_budget: PositiveInt | None = None  # bytes
    per_prompt: bool = False
    check_baseline: bool = True
    ci: float | None = Field(
        default=None, gt=0, lt=1
    )  # bootstrap intervals over prompts (docs/uncertainty.md)
    n_boot: PositiveInt | None = None  # resamples for ci; None: actpatch.Bootstrap's default
    boot_seed: int | None = None  # the resamples' seed (Bootstrap.seed); None: its default

    @property
    def bootstrap(self) -> Any:
        """What the library's `ci=` takes: None, or an `actpatch.Bootstrap` of `ci`, `n_boot` and
        `boot_seed` (its own defaults for those not set)."""
        if self.ci is None:
            return None
        from actpatch.stats.bootstrap import (
            Bootstrap,
        )  # on use: the command line starts without torch

        given = {"n_boot": self.n_boot, "seed": self.boot_seed}
        return Bootstrap(self.ci, **{k: v for k, v in given.items() if v is not None})

    @field_validator("site")
    @classmethod
    def _known_site(cls, site: str) -> str:
        parse_kind(site)  # its error lists the site kinds
        return site

    @field_validator("positions")
    @classmethod
    def _positions(cls, value: Any) -> Any:
        if value is None or value in ("each", "all") or _positions_list(value):
            return value
        raise ValueError(
            f'must be "each", "all", or a non-empty list of token indices and named positions, got {value!r}'
        )

    @field_validator("latents")
    @classmethod
    def _latents(cls, value: Any) -> Any:
        if value is None or value in ("active", "all"):
            return value
        if (
            isinstance(value, list)
            and value
            and all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in value)
        ):
            return value
        raise ValueError(
            f'must be "active", "all", or a non-empty list of latent indices (0, 1, ...), got {value!r}'
        )

    @model_validator(mode="after")
    def _dictionary_goes_with_features(self) -> SweepSection:
        feature = parse_kind(self.site)[0] in FEATURE_KINDS
        if feature and self.dictionary is None:
            raise ValueError(
                f"missing key 'sweep.dictionary': site = {self.site!r} patches a dictionary's "
                f'latents or error node; set it to the dictionary\'s folder (or "{EMBEDDED}" on the '
                "embedded model)"
            )
        if not feature and self.dictionary is not None:
            raise ValueError(
                f'sweep.dictionary goes with site = "feature" or "feature_error", not {self.site!r}'
            )
        if self.latents is not None and parse_kind(self.site)[0] != "feature":
            raise ValueError(f'sweep.latents goes with site = "feature", not {self.site!r}')
        return self

    @model_validator(mode="after")
    def _ablation_is_noising(self) -> SweepSection:
        if self.ablation is not None and self.direction != "noise":
            raise ValueError(
                f"sweep.ablation = {self.ablation!r} knocks sites out of the clean run, which is noising: "
                f'set direction = "noise" (it is {self.direction!r})'
            )
        return self

    @model_validator(mode="after")
    def _ci_is_not_per_prompt(self) -> SweepSection:
        if self.ci is not None and self.per_prompt:
            raise ValueError(
                "sweep.ci returns intervals computed from every prompt's numbers, not the numbers: "
                "remove per_prompt, or keep per_prompt and resample the saved result"
            )
        return self

    @property
    def directions(self) -> str | list[str]:
        """`direction` as `actpatch.sweep` takes it."""
        return ["denoise", "noise"] if self.direction == "both" else self.direction


class AttributeSection(_Section):
    """[attribute]: attribution patching, and how many of its estimates to check exactly."""

    method: Literal["atp", "atp*", "ig"] = "atp"
    steps: PositiveInt = 5  # ig only
    graddrop: bool = False
    verify: NonNegativeInt = 0  # patch the top-k estimates exactly (0: no check)
    sample: NonNegativeInt = 10  # ... and this many random others

    @model_validator(mode="after")
    def _graddrop_needs_atp(self) -> AttributeSection:
        if self.graddrop and self.method == "ig":
            raise ValueError('attribute.graddrop goes with method = "atp" or "atp*", not with "ig"')
        return self


class CircuitSection(_Section):
    """[circuit]: the Pareto frontier of a sweep's ranking, the smallest circuit, its minimality."""

    recovery: float = Field(default=0.8, gt=0, le=1)
    threshold: float = Field(
        default=0.02, ge=0
    )  # minimality: a member whose removal costs less is a passenger
    order: Literal["effect", "abs"] = "effect"
    max_size: PositiveInt | None = None  # largest circuit evaluated (default: the whole ranking)
    ablation: Ablation | None = (
        None  # what components outside the circuit take (default: corrupt-run values)
    )


class OutputSection(_Section):
    """[output]: where results, reports and logs go."""

    folder: str = "actpatch-out"
    name: str | None = None  # file stem; default from task, site and direction
    pngs: bool = False  # also write static images


class Experiment(_Section):
    """A whole experiment file."""

    model: ModelSection = Field(default_factory=ModelSection)
    task: TaskSection
    sweep: SweepSection
    attribute: AttributeSection = Field(default_factory=AttributeSection)
    circuit: CircuitSection = Field(default_factory=CircuitSection)
    output: OutputSection = Field(default_factory=OutputSection)


def load(path: str | Path) -> Experiment:
    """The checked experiment in a TOML file; `ExperimentError` says what is wrong with it."""
    return validate(read(path), source=str(path))


def read(path: str | Path) -> dict[str, Any]:
    """A TOML file's table, its `file:` task path made relative to the file's folder."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ExperimentError(f"{path}: no such experiment file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise ExperimentError(f"{path}: cannot read it ({error})") from None
    except tomllib.TOMLDecodeError as error:
        raise ExperimentError(f"{path}: not valid TOML ({error})") from None
    task = data.get("task")
    if (
        isinstance(task, dict)
        and isinstance(task.get("name"), str)
        and task["name"].startswith(FILE_TASK)
    ):
        where = Path(task["name"].removeprefix(FILE_TASK)).expanduser()
        task["name"] = FILE_TASK + str(where if where.is_absolute() else (path.parent / where))
    sweep = data.get("sweep")
    folder = sweep.get("dictionary") if isinstance(sweep, dict) else None
    if isinstance(folder, str) and folder != EMBEDDED:  # read relative to the file, like a task's
        where = Path(folder).expanduser()
        sweep["dictionary"] = str(where if where.is_absolute() else (path.parent / where))
    return data


def validate(data: dict[str, Any], *, source: str = "experiment") -> Experiment:
    """`data` (a TOML table, flags merged in) checked as an `Experiment`."""
    try:
        return Experiment.model_validate(data)
    except ValidationError as error:
        problems = "; ".join(dict.fromkeys(_describe(e) for e in error.errors()))
        raise ExperimentError(f"{source}: {problems}") from None


def make_pairs(model: Model, task: TaskSection) -> PromptPairs | list[PromptPairs]:
    """The task's prompt pairs for `model` (a list of length groups for ioi_groups), corrupted as asked."""
    from actpatch import tasks
    from actpatch.noise import DEFAULT_SCALE, gaussian_noise
    from actpatch.tasks.ioi import CLASSIC

    native = None if task.corruption == NOISE else task.corruption
    n = task.n or DEFAULT_PROMPTS
    if task.name in ("ioi", "ioi_groups"):
        grouped = task.name == "ioi_groups"
        classic = (task.templates or ("all" if grouped else "classic")) == "classic"
        build = tasks.ioi_groups if grouped else tasks.ioi
        pairs = build(
            model,
            n,
            corruption=native or "abc",
            seed=task.seed,
            order=task.order or ("mixed" if grouped else "abba"),
            templates=CLASSIC if classic else None,
        )
    elif task.name == "factual":
        pairs = tasks.factual_recall(model, n, seed=task.seed, relations=task.relations)
    elif task.name == "greater_than":
        pairs = tasks.greater_than(model, n, seed=task.seed)
    elif task.name == "induction":
        pairs = tasks.induction(
            model, n, length=task.length or 20, repeat=task.repeat or 10, seed=task.seed
        )
    else:
        pairs = tasks.from_file(model, task.name.removeprefix(FILE_TASK), corruption=native)
    if task.corruption != NOISE:
        return pairs

    def noised(group: PromptPairs) -> PromptPairs:
        return gaussian_noise(
            model,
            group,
            task.noise_positions or "all",
            scale=task.noise_scale or DEFAULT_SCALE,
            seed=task.seed,
        )

    return [noised(g) for g in pairs] if isinstance(pairs, list) else noised(pairs)


def _positions_list(value: Any) -> bool:
    return (
        isinstance(value, list)
        and bool(value)
        and all(
            isinstance(p, str) or (isinstance(p, int) and not isinstance(p, bool)) for p in value
        )
    )


def _describe(error: dict[str, Any]) -> str:
    """One validation error as a reader wants it: the dotted key, what is wrong, what is allowed."""
    loc = [
        str(part)
        for part in error["loc"]
        if not str(part).startswith(("literal[", "list[", "function-"))
    ]
    key = ".".join(p for p in loc if not p.isdigit()) + "".join(
        f"[{p}]" for p in loc if p.isdigit()
    )
    kind, message = error["type"], error["msg"]
    if kind == "extra_forbidden":
        owner = _section_model(loc[:-1])
        allowed = ", ".join(owner.model_fields) if owner else "?"
        if len(loc) == 1:
            return f"unknown section [{loc[0]}] (allowed sections: {allowed})"
        return f"unknown key {key!r} (allowed in [{'.'.join(loc[:-1])}]: {allowed})"
    if kind == "missing":
        owner = _section_model(loc)
        if owner is not None and issubclass(owner, _Section) and len(loc) == 1:
            return f"missing section [{key}]"
        return f"missing key {key!r}"
    if kind == "model_type":
        return f"[{key}] must be a section (a TOML table), got {error['input']!r}"
    if kind == "literal_error":
        return f"{key} = {error['input']!r}: must be one of {error['ctx']['expected']}"
    if kind == "value_error":
        text = message.removeprefix("Value error, ")
        return (
            text
            if text.startswith(f"{key}.") or text.startswith(f"{loc[0]}.")
            else f"{key}: {text}"
        )
    return f"{key} = {error['input']!r}: {message[0].lower()}{message[1:]}"


def _section_model(loc: list[str]) -> type[BaseModel] | None:
    """The schema class at `loc` (a path of section names), or None."""
    model: type[BaseModel] = Experiment
    for part in loc:
        field = model.model_fields.get(part)
        annotation = field.annotation if field else None
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return None
        model = annotation
    return model


__all__ = [
    "CORRUPTIONS",
    "TASKS",
    "Experiment",
    "ExperimentError",
    "load",
    "make_pairs",
    "read",
    "validate",
]

"""What every command shares: exit codes, the flags that describe an experiment, and writing outputs.

Exit codes are part of the interface, since scripts branch on them: 0 done; 2 bad input, with a
one-line `error: ...` reason on stderr; 1 anything else, with a one-line message naming the log file
that holds the traceback (in the output folder, or a temporary file for commands without one)."""

from __future__ import annotations

import functools
import io
import logging
import os
import re
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

import actpatch as ap
from actpatch import atomic, experiment
from actpatch.experiment import Experiment
from actpatch.sites import parse_kind

if TYPE_CHECKING:  # torch and transformers are imported by the commands that load a model, not here
    from actpatch.models.model import Model
    from actpatch.pairs import PromptPairs

BAD_INPUT = 2
FAILURE = 1
ERROR_LOG = "actpatch-error.log"
SHARE = click.FloatRange(0, 1, min_open=True, max_open=True)  # a share or a coverage: 0 < x < 1

log = logging.getLogger(__name__)


class BadInput(Exception):
    """Input the command refuses; its message is the one-line reason."""


# Errors that always mean the user's input cannot be run, wherever they are raised: (module, class).
# Named, not imported: an error of a module nobody imported cannot have been raised, and importing
# them all would import torch before `--help` could answer.
BAD_INPUT_ERRORS = (
    ("actpatch.pairs", "PairsError"),
    ("actpatch.sites", "SiteError"),
    ("actpatch.engine.collect", "BaselineError"),
    ("actpatch.models.load", "ModelNotFound"),
    ("actpatch.experiment", "ExperimentError"),
    ("actpatch.engine.checkpoint", "CheckpointMismatch"),
    ("actpatch.models.arch", "UnsupportedArchitecture"),
    ("actpatch.models.cache", "DefaultModelNotInstalled"),
    ("actpatch.bases.subspace", "BasisError"),
    ("actpatch.bases.dictionary", "DictionaryError"),
)


def is_bad_input(error: BaseException) -> bool:
    """Whether `error` is BadInput or one of BAD_INPUT_ERRORS."""
    return isinstance(error, BadInput) or any(
        module in sys.modules and isinstance(error, getattr(sys.modules[module], name))
        for module, name in BAD_INPUT_ERRORS
    )


class Commands(click.Group):
    """A click group that turns exceptions into the exit codes above."""

    def invoke(self, ctx: click.Context) -> Any:
        ctx.ensure_object(dict)
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.Abort, SystemExit):
            raise
        except (
            BrokenPipeError
        ):  # the reader went away (`actpatch models | head`): nothing to report
            _silence_stdout()
            sys.exit(FAILURE)
        except click.UsageError as error:
            where = f" (see {error.ctx.command_path} --help)" if error.ctx is not None else ""
            fail(f"{first_line(error.format_message())}{where}")
        except Exception as error:
            if is_bad_input(error):
                fail(in_flags(first_line(error)))
            path = _write_traceback(ctx.obj.get("log_folder"))
            click.echo(
                f"error: {type(error).__name__}: {first_line(error)} (traceback in {path})",
                err=True,
            )
            sys.exit(FAILURE)


def _silence_stdout() -> None:
    # Python flushes stdout again at exit, which would raise once more (see the `signal` docs).
    with suppress(OSError, ValueError, io.UnsupportedOperation):
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def fail(reason: str) -> NoReturn:
    """Exit 2 with a one-line reason."""
    click.echo(f"error: {reason}", err=True)
    sys.exit(BAD_INPUT)


# The library's errors name its keyword arguments; on the command line the same hint is a flag.
_KEYWORD_HINTS = (
    (
        re.compile(r"pass None to load the default model"),
        "leave out --model to use the embedded model",
    ),
    (re.compile(r"\bcheck_baseline=False\b"), "--no-check-baseline"),
    (re.compile(r"\bper_prompt=True\b"), "--per-prompt"),
    (re.compile(r"\bpass layer= to pick one"), "give --layers N to pick one"),
    # `neurons=[...]` -> `--neurons`, `direction='noise'` -> `--direction noise`
    (
        re.compile(
            r"\b(layers|heads|neurons|positions|direction|ablation|engine|chunk)=(?:'([^']*)'|\[\.\.\.\])?"
        ),
        lambda m: f"--{m[1]}" + (f" {m[2]}" if m[2] else ""),
    ),
)


def in_flags(message: str) -> str:
    """A library error's keyword hints (`neurons=[...]`, `check_baseline=False`) as the flags that set them."""
    for pattern, flag in _KEYWORD_HINTS:
        message = pattern.sub(flag, message)
    return message


def first_line(error: BaseException | str) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


@contextmanager
def validating() -> Iterator[None]:
    """Inside: a ValueError or TypeError is the library refusing the user's arguments (bad input),
    not a bug; outside, they count as failures. Wrap argument checks and loading, not long runs."""
    try:
        yield
    except (ValueError, TypeError) as error:
        raise BadInput(first_line(error)) from error


def log_into(folder: Path) -> None:
    """Put a failure's traceback into `folder` (the command's output folder)."""
    click.get_current_context().obj["log_folder"] = folder


def _write_traceback(folder: Path | None) -> Path:
    text = f"actpatch {' '.join(sys.argv[1:])}\n\n{traceback.format_exc()}"
    if folder is not None:
        try:
            return atomic.write_text(Path(folder) / ERROR_LOG, text)
        except OSError:
            pass  # an unwritable output folder may be the failure itself
    handle, name = tempfile.mkstemp(prefix="actpatch-error-", suffix=".log")
    with open(handle, "w", encoding="utf-8") as file:
        file.write(text)
    return Path(name)


# --- flags ---------------------------------------------------------------------------------------


def int_list(text: str | None) -> list[int] | None:
    """'0,2,5-7' -> [0, 2, 5, 6, 7]; negative indices count from the end ('-1')."""
    if text is None:
        return None
    values: list[int] = []
    for part in filter(None, (p.strip() for p in text.split(","))):
        if match := re.fullmatch(r"(-?\d+)-(-?\d+)", part):
            first, last = int(match[1]), int(match[2])
            if last < first:
                raise click.BadParameter(f"range {part!r} runs backwards")
            values.extend(range(first, last + 1))
        elif re.fullmatch(r"-?\d+", part):
            values.append(int(part))
        else:
            raise click.BadParameter(f"{part!r} is not a whole number or a range like 0-5")
    if not values:
        raise click.BadParameter("empty list")
    return values


def positions(text: str | None) -> str | list[int | str] | None:
    """'each', 'all', or a comma-separated list of indices and named positions ('S2,END', '3,-1')."""
    if text is None or text in ("each", "all"):
        return text
    chosen: list[int | str] = [
        int(p) if re.fullmatch(r"-?\d+", p) else p
        for p in (p.strip() for p in text.split(","))
        if p
    ]
    if not chosen:
        raise click.BadParameter(
            "give 'each', 'all', or indices and named positions separated by commas"
        )
    return chosen


# Flag name -> (section, key) of the experiment file it overrides.
OVERRIDES = {
    "model_name": ("model", "name"),
    "dtype": ("model", "dtype"),
    "device": ("model", "device"),
    "task": ("task", "name"),
    "prompts": ("task", "n"),
    "corruption": ("task", "corruption"),
    "seed": ("task", "seed"),
    "site": ("sweep", "site"),
    "direction": ("sweep", "direction"),
    "positions": ("sweep", "positions"),
    "layers": ("sweep", "layers"),
    "heads": ("sweep", "heads"),
    "neurons": ("sweep", "neurons"),
    "dictionary": ("sweep", "dictionary"),
    "latents": ("sweep", "latents"),
    "engine": ("sweep", "engine"),
    "ablation": ("sweep", "ablation"),
    "chunk": ("sweep", "chunk"),
    "per_prompt": ("sweep", "per_prompt"),
    "check_baseline": ("sweep", "check_baseline"),
    "method": ("attribute", "method"),
    "steps": ("attribute", "steps"),
    "graddrop": ("attribute", "graddrop"),
    "verify": ("attribute", "verify"),
    "recovery": ("circuit", "recovery"),
    "max_size": ("circuit", "max_size"),
    "threshold": ("circuit", "threshold"),
    "ci": ("sweep", "ci"),
    "n_boot": ("sweep", "n_boot"),
    "boot_seed": ("sweep", "boot_seed"),
    "out": ("output", "folder"),
    "name": ("output", "name"),
    "pngs": ("output", "pngs"),
}
_FLAG_OF = {
    f"{section}.{key}": "--" + flag.replace("_name", "").replace("_", "-")
    for flag, (section, key) in OVERRIDES.items()
}


def latents(text: str | None) -> str | list[int] | None:
    """'active', 'all', or latent indices and ranges ('3,17,40-42')."""
    return text if text in (None, "active", "all") else int_list(text)


_PARSED = {
    "positions": positions,
    "layers": int_list,
    "heads": int_list,
    "neurons": int_list,
    "latents": latents,
}


def experiment_options(
    *,
    analysis: bool = False,
    circuit: bool = False,
    intervals: bool = False,
    features: bool = False,
) -> Callable:
    """The flags that describe an experiment; each overrides its key in --config. They default
    to None (click's default for a value), so that a key the file sets, or else the library's
    default, stands. `features`: the flags of feature sites, --dictionary and --latents."""
    options = [
        click.option(
            "--config",
            type=click.Path(path_type=Path, dir_okay=False),
            help="An experiment file (TOML); the flags below override its keys.",
        ),
        click.option(
            "--model",
            "model_name",
            help="Checkpoint folder, .gguf file or hub id (default: embedded SmolLM2).",
        ),
        click.option(
            "--dtype",
            type=click.Choice(["float32", "bfloat16", "float16", "float64"]),
            help="Weights dtype (default float32).",
        ),
        click.option("--device", help="Device, e.g. cpu or cuda (default cpu)."),
        click.option(
            "--task",
            help="ioi, ioi_groups, factual, greater_than, induction, or file:PATH (.jsonl/.csv).",
        ),
        click.option("--prompts", type=int, help="Number of prompt pairs (default 8)."),
        click.option(
            "--corruption", help="The task's corruption scheme, or 'noise' (Gaussian noise)."
        ),
        click.option("--seed", type=int, help="Seed of the prompt generator (default 0)."),
        click.option(
            "--site",
            help="resid_pre, resid_mid, resid_post, attn_out, mlp_out, mlp_in, head, q, k, v, pattern, neuron; "
            "feature, feature_error (with --dictionary).",
        ),
        click.option(
            "--direction", type=click.Choice(["denoise", "noise", "both"]), help="Default: denoise."
        ),
        click.option("--positions", help="each, all, or a list like S2,END or 0,3,-1."),
        click.option("--layers", help="Layers to sweep, e.g. 0-5,10 (default all)."),
        click.option("--heads", help="Heads (or KV heads) to sweep, e.g. 0-3."),
        click.option("--neurons", help="Neurons to sweep (neuron sites need them), e.g. 0-99."),
        click.option(
            "--ablation",
            type=click.Choice(["zero", "mean", "resample"]),
            help="Noise with an ablation of the clean run's own values instead of the corrupt run's.",
        ),
        click.option(
            "--check-baseline/--no-check-baseline",
            "check_baseline",
            default=None,
            help="Refuse prompts the model does not solve (default on).",
        ),
        click.option(
            "--out",
            type=click.Path(path_type=Path, file_okay=False),
            help="Output folder for results, reports and logs (default actpatch-out).",
        ),
        click.option(
            "--name", help="File name stem of the outputs (default from task, site and direction)."
        ),
        click.option("--pngs/--no-pngs", default=None, help="Also write PNG images."),
        click.option(
            "--overwrite",
            is_flag=True,
            help="Replace the outputs of an earlier run in --out (without it, they are refused).",
        ),
        click.option(
            "-q",
            "--quiet",
            is_flag=True,
            help="No progress bars and no tables: print only what was written.",
        ),
    ]
    if not analysis:
        options += [
            click.option(
                "--engine", type=click.Choice(["batched", "reference"]), help="Default: batched."
            ),
            click.option(
                "--chunk",
                type=int,
                help="Patched copies per forward (default from a 1 GiB budget).",
            ),
            click.option(
                "--per-prompt/--no-per-prompt",
                "per_prompt",
                default=None,
                help="Keep every prompt's value.",
            ),
        ]
    if circuit:
        options += [
            click.option(
                "--recovery",
                type=float,
                help="Share of the behaviour the circuit must recover (default 0.8).",
            ),
            click.option(
                "--max-size",
                type=int,
                help="Largest circuit evaluated on the frontier (default all).",
            ),
            click.option(
                "--threshold",
                type=float,
                help="Minimality: a member whose removal costs less is a passenger (default 0.02).",
            ),
        ]
    if features:
        options += [
            click.option(
                "--dictionary",
                metavar="PATH",
                help="Feature sites: a dictionary folder (SAELens, sparsify, Gemma Scope 2, "
                "circuit-tracer), or 'embedded' for the embedded model's SAE (docs/features.md).",
            ),
            click.option(
                "--latents",
                help="Feature sites: active (non-zero in either run), all, or indices like 3,17,40-42.",
            ),
        ]
    if intervals:
        options += [
            click.option(
                "--ci",
                type=SHARE,
                help="Bootstrap intervals over prompts on every number, e.g. 0.95 (docs/uncertainty.md).",
            ),
            click.option(
                "--n-boot",
                type=click.IntRange(min=1),
                help="Bootstrap resamples for --ci (default: actpatch.Bootstrap's, 1000).",
            ),
            click.option(
                "--boot-seed",
                type=int,
                help="Seed of the bootstrap resamples, Bootstrap.seed in the library (default 0).",
            ),
        ]

    def decorate(command: Callable) -> Callable:
        for option in reversed(options):
            command = option(command)
        return command

    return decorate


def build_experiment(
    flags: dict[str, Any], *, defaults: dict[str, dict[str, Any]] | None = None
) -> Experiment:
    """The experiment from --config (if any), `defaults` under it, and the flags over both, checked."""
    config = flags.get("config")
    data: dict[str, Any] = experiment.read(config) if config is not None else {}
    for section in ("task", "sweep"):
        data.setdefault(section, {})
    for section, values in (defaults or {}).items():
        if isinstance(data.get(section, {}), dict):
            data[section] = {**values, **data.get(section, {})}
    for flag, value in flags.items():
        if value is None or flag not in OVERRIDES:
            continue
        section, key = OVERRIDES[flag]
        if not isinstance(data.get(section, {}), dict):
            continue  # the schema reports the malformed section
        parse = _PARSED.get(flag)
        try:
            data.setdefault(section, {})[key] = (
                parse(value) if parse else (str(value) if flag == "out" else value)
            )
        except click.BadParameter as error:
            raise BadInput(f"--{flag.replace('_', '-')}: {error.message}") from None
    try:
        return experiment.validate(data, source=str(config) if config is not None else "arguments")
    except experiment.ExperimentError as error:
        raise BadInput(_given_flags(_with_flags(str(error)), flags)) from None


def begin(
    flags: dict[str, Any], *, quiet: bool, defaults: dict[str, dict[str, Any]] | None = None
) -> tuple[Experiment, Path, Callable[[str], None]]:
    """A command's experiment (`build_experiment`), its output folder, which from now on receives
    a failure's traceback, and its echo for tables and notes (silent with --quiet)."""
    spec = build_experiment(flags, defaults=defaults)
    out = Path(spec.output.folder)
    log_into(out)
    return spec, out, echo_unless(quiet)


def _given_flags(message: str, flags: dict[str, Any]) -> str:
    """A key the reader set with a flag, named by that flag where the message speaks of the key
    (`task.n does not apply` -> `--prompts does not apply`); `key = value` quotes stay as written."""
    for flag, value in flags.items():
        if value is not None and flag in OVERRIDES:
            key = ".".join(OVERRIDES[flag])
            message = re.sub(rf"(?<![\w.]){re.escape(key)}(?![\w.]| =)", _FLAG_OF[key], message)
    return message


def _with_flags(message: str) -> str:
    """Name the flag beside each missing key, for readers who gave no experiment file."""
    return re.sub(
        r"missing key '([\w.]+)'",
        lambda m: f"{m[0]} (give {_FLAG_OF.get(m[1], 'it')})" if m[1] in _FLAG_OF else m[0],
        message,
    )


def load(spec: Experiment, *, quiet: bool = False) -> tuple[Model, PromptPairs | list[PromptPairs]]:
    """The experiment's model and prompt pairs; loading errors are bad input (a wrong path, a task
    the tokenizer cannot build)."""
    import transformers

    from actpatch.models.cache import DefaultModelNotInstalled
    from actpatch.models.load import ModelNotFound

    if quiet or not sys.stderr.isatty():
        transformers.utils.logging.disable_progress_bar()  # transformers' own bars, like ours: terminals only
    started = time.perf_counter()
    log.info(
        "loading %s (%s on %s)",
        spec.model.name or "the embedded SmolLM2-135M-Instruct",
        spec.model.dtype,
        spec.model.device,
    )
    with validating():
        try:
            model = ap.load_model(spec.model.name, dtype=spec.model.dtype, device=spec.model.device)
        except OSError as error:
            if isinstance(error, (ModelNotFound, DefaultModelNotInstalled)):
                raise
            raise BadInput(
                f"cannot load model {spec.model.name!r}: {' '.join(str(error).split())[:300]}"
            ) from error
        log.info("loaded %s in %.1f s", model.name, time.perf_counter() - started)
        pairs = experiment.make_pairs(model, spec.task)
    return model, pairs


def load_batch(spec: Experiment, analysis: str, *, quiet: bool) -> tuple[Model, PromptPairs]:
    """The model and the one batch of prompt pairs an analysis takes (`single`), described on the
    terminal unless --quiet."""
    model, pairs = load(spec, quiet=quiet)
    batch = single(pairs, analysis)
    echo_unless(quiet)(describe(model, batch, spec))
    return model, batch


def describe(model: Model, pairs: PromptPairs | list[PromptPairs], spec: Experiment) -> str:
    """One line for the terminal: model, task, prompts, corruption, and an example."""
    groups = pairs if isinstance(pairs, list) else [pairs]
    first = groups[0]
    n = sum(len(g) for g in groups)
    lengths = f" in {len(groups)} length groups" if len(groups) > 1 else ""
    example = (
        f"; e.g. {first.clean_text[0]!r} -> {model.token_strings(first.answers[:1])[0]!r}"
        if first.clean_text
        else ""
    )
    return f"model: {model.name}  task: {spec.task.name} ({first.corruption or 'as given'})  prompts: {n}{lengths}{example}"


def provenance(
    model: Model, spec: Experiment, *, used: dict[str, tuple[str, ...]] | None = None
) -> dict[str, Any]:
    """What a result made by the command line records beyond the library's own provenance.

    `used`: for an analysis that reads only some keys of the analysis sections (sweep, attribute,
    circuit), those keys per section; the others are left out, so that the record holds only what
    made the result (an edge circuit runs no head sweep and no attribution)."""
    from actpatch.engine.checkpoint import weights_fingerprint

    experiment = spec.model_dump(mode="json")
    if used is not None:
        for section in ("sweep", "attribute", "circuit"):
            given = experiment.get(section) or {}
            kept = {key: value for key, value in given.items() if key in used.get(section, ())}
            if kept:
                experiment[section] = kept
            else:
                experiment.pop(section, None)
    return {
        "task": spec.task.name,
        "seed": spec.task.seed,
        "weights_fingerprint": weights_fingerprint(model),
        "experiment": experiment,
    }


def stem(spec: Experiment, *parts: str) -> str:
    """The outputs' file name stem: [output] name, or task, site and direction."""
    if spec.output.name:
        return spec.output.name
    return re.sub(
        r"[^\w.-]+", "_", "_".join([spec.task.label, spec.sweep.site, spec.sweep.direction, *parts])
    ).strip("_")


def progress(quiet: bool) -> bool | None:
    """Progress bars: off with --quiet, else on a terminal only (tqdm's own test)."""
    return False if quiet else None


def refuse_overwrite(out: Path, names: list[str], overwrite: bool) -> None:
    """Refuse to start when an earlier run's outputs are in `out` and --overwrite was not given: a
    rerun must not silently replace results someone may still be reading (or compare against)."""
    if overwrite:
        return
    if existing := [name for name in names if (out / name).exists()]:
        raise BadInput(
            f"{out / existing[0]} exists (an earlier run's output): add --overwrite to replace it, "
            "or choose another --out or --name"
        )


def feature_options(
    spec: Experiment, model: Model, pairs: PromptPairs | list[PromptPairs], *, every: bool = False
) -> dict[str, Any]:
    """`dictionary=` and `latents=` of a feature site ({} for other sites): --dictionary loaded onto
    `model` and checked against it, and --latents as indices, so that the plan check sees them.
    Without --latents: the active ones, or with `every` (attribution, which estimates them all from
    one backward) every latent."""
    from actpatch.bases.select import active_latents

    s = spec.sweep
    if s.dictionary is None:
        return {}
    one_layer = s.layers[0] if s.layers and len(s.layers) == 1 else None
    dictionary = dictionary_from_flag(s.dictionary, model, spec, layer=one_layer)
    if parse_kind(s.site)[0] != "feature":
        return {"dictionary": dictionary}
    chosen = s.latents or ("all" if every else "active")
    if chosen == "active":
        with validating():
            latents = active_latents(model, pairs, dictionary, s.positions)
        if not latents:
            raise BadInput(
                f"no latent of {dictionary.name} is active at the swept positions of these prompts: "
                "give --latents, or other --positions"
            )
    else:
        latents = list(range(dictionary.n_latents)) if chosen == "all" else chosen
    return {"dictionary": dictionary, "latents": latents}


def dictionary_from_flag(
    given: str, model: Model, spec: Experiment, *, layer: int | None = None
) -> Any:
    """One --dictionary: a folder on disk placed on `model` and checked against it (`layer` picks
    one transcoder of a circuit-tracer set), or `embedded`, the embedded model's own SAE."""
    from actpatch.bases.formats import circuit_tracer
    from actpatch.experiment import EMBEDDED

    if given == EMBEDDED:
        if spec.model.name is not None:
            raise BadInput(
                f"--dictionary {EMBEDDED} is the embedded SmolLM2's own SAE: leave out --model, or "
                "give a dictionary folder made for this model"
            )
        return ap.embedded_dictionary(model)
    with validating():
        pick = layer if circuit_tracer.matches(Path(given)) else None
        return ap.load_dictionary(given, model, layer=pick)


def single(pairs: PromptPairs | list[PromptPairs], analysis: str) -> PromptPairs:
    """The analyses other than sweeps take one batch of one token length."""
    if isinstance(pairs, list):
        if len(pairs) > 1:
            raise BadInput(
                f"{analysis} takes prompts of one token length; this task made {len(pairs)} length groups "
                "(use ioi instead of ioi_groups)"
            )
        return pairs[0]
    return pairs


def one_direction(spec: Experiment, analysis: str) -> str:
    if spec.sweep.direction == "both":
        raise BadInput(f"{analysis} takes one direction: set direction to denoise or noise")
    return spec.sweep.direction


def echo_unless(quiet: bool) -> Callable[[str], None]:
    return functools.partial(_echo, quiet)


def _echo(quiet: bool, text: str) -> None:
    if not quiet:
        click.echo(text)

"""`actpatch circuit --level feature`: score every latent and error node of the dictionaries, judge
the top nodes at MIB's sizes with the error nodes kept and ranked, print the curve and the top nodes.

Outputs in --out: `NAME.nc` (the curve), `NAME_curve.csv` (one row per error mode and size) and
`NAME_nodes.csv` (every scored node, strongest first). The node-level command is `analyses.circuit`."""

from __future__ import annotations

from typing import Any

import click

import actpatch as ap
from actpatch import atomic
from actpatch.cli.common import (
    BadInput,
    begin,
    dictionary_from_flag,
    load_batch,
    one_direction,
    provenance,
    refuse_overwrite,
    validating,
)

METHODS = ("atp", "ig")
TOP_NODES_SHOWN = 15
_USED = {"sweep": ("direction", "positions", "ablation", "chunk", "ci", "n_boot", "boot_seed")}
# Flags of the other levels, refused here rather than silently ignored.
_OTHER_LEVELS = {
    "recovery": "--recovery",
    "max_size": "--max-size",
    "threshold": "--threshold",
    "site": "--site",
    "layers": "--layers",
    "heads": "--heads",
    "neurons": "--neurons",
    "engine": "--engine",
    "per_prompt": "--per-prompt",
    "check_baseline": "--check-baseline",
}


def feature_circuit(
    flags: dict[str, Any],
    *,
    quiet: bool,
    overwrite: bool,
    method: str | None,
    steps: int | None,
    percent: float | None,
    dictionaries: tuple[str, ...],
) -> None:
    """The feature-level `circuit` command (see `analyses.circuit` for its flags)."""
    if given := [flag for key, flag in _OTHER_LEVELS.items() if flags.get(key) is not None]:
        raise BadInput(f"{given[0]} does not apply to --level feature; remove it")
    if not dictionaries:
        raise BadInput(
            "--level feature needs --dictionary PATH (a dictionary folder, or 'embedded' for the "
            "embedded model's SAE); repeat it for dictionaries at several layers"
        )
    method = method or "atp"
    if method not in METHODS:
        raise BadInput(
            f"--method for feature circuits is one of {', '.join(METHODS)}, not {method!r}"
        )
    if steps is not None and (method != "ig" or steps < 1):
        raise BadInput(
            "--steps sets integrated gradients' interpolation points (--method ig, 1 or more)"
        )
    if percent is not None and not 0 < percent <= 100:
        raise BadInput(
            f"--percent {percent:g} is outside (0, 100]: give the share of nodes kept, e.g. 5"
        )
    spec, out, echo = begin(flags, quiet=quiet, defaults={"sweep": {"site": "resid_post"}})
    name = spec.output.name or f"{spec.task.label}_feature_{method}"
    refuse_overwrite(out, [f"{name}.nc", f"{name}_curve.csv", f"{name}_nodes.csv"], overwrite)
    direction = one_direction(spec, "circuit")
    model, pairs = load_batch(spec, "circuit", quiet=quiet)
    from actpatch.circuits.curve import MIB_PERCENTS

    s = spec.sweep
    with validating():
        loaded = [dictionary_from_flag(given, model, spec) for given in dictionaries]
        scores = ap.feature_scores(
            model,
            pairs,
            loaded,
            direction=direction,
            method=method,
            positions=s.positions or "each",
            steps=steps or 5,
        )
        percents = sorted({*MIB_PERCENTS, *([percent] if percent else [])})
        curve = ap.feature_faithfulness_curve(
            model,
            pairs,
            scores,
            percents=percents,
            ablation=s.ablation,
            ci=s.bootstrap,
            chunk=s.chunk,
        )
    curve.attrs.update(provenance(model, spec, used=_USED))
    rows, nodes = curve_rows(curve), node_rows(scores)
    echo(f"feature circuit faithfulness, {len(scores.nodes)} nodes scored by {method}:")
    echo(rows.round(4).to_string(index=False))
    echo(_areas(curve))
    echo(
        f"the {min(TOP_NODES_SHOWN, len(nodes))} strongest nodes (effect on the normalised logit difference):"
    )
    echo(nodes.head(TOP_NODES_SHOWN).round(4).to_string(index=False))
    click.echo(f"saved {ap.save(curve, out / f'{name}.nc')}")
    for path, table in ((out / f"{name}_curve.csv", rows), (out / f"{name}_nodes.csv", nodes)):
        click.echo(f"saved {atomic.write_text(path, table.to_csv(index=False))}")


def curve_rows(curve: Any) -> Any:
    """One row per error mode and size: nodes kept, f and completeness (with bounds under --ci),
    the normalised logit difference."""
    import pandas as pd

    shown = ["faithfulness", "completeness", "norm_logit_diff"]
    rows = []
    for mode in curve["errors"].values.tolist():
        one = curve.sel(errors=mode)
        for percent in one["percent"].values.tolist():
            at = one.sel(percent=percent)
            row = {"errors": mode, "percent": percent, "nodes": int(at["n_nodes"])}
            for metric in shown:
                value = at.sel(metric=metric)
                if "stat" in curve.dims:
                    row |= {
                        f"{metric}_{s}" if s != "value" else metric: float(value.sel(stat=s))
                        for s in ("value", "lo", "hi")
                    }
                else:
                    row[metric] = float(value)
            rows.append(row)
    return pd.DataFrame(rows)


def node_rows(scores: Any) -> Any:
    """Every scored node, strongest |effect| first."""
    import pandas as pd

    effects = dict(zip(map(id, scores.nodes), scores.effects))
    ranked = scores.ranking("ranked")
    return pd.DataFrame(
        {"node": [str(s) for s in ranked], "effect": [float(effects[id(s)]) for s in ranked]}
    )


def _areas(curve: Any) -> str:
    lines = []
    for mode in curve["errors"].values.tolist():
        one = curve.sel(errors=mode)
        bounds = (
            f" [{float(one['cpr_lo']):.4f}, {float(one['cpr_hi']):.4f}]"
            if "cpr_lo" in one.coords
            else ""
        )
        lines.append(
            f"errors {mode}: CPR {float(one['cpr']):.4f}{bounds}, CMD {float(one['cmd']):.4f} over "
            f"{int(one['n_ranked'])} ranked nodes"
        )
    lines.append(
        f"f of the error nodes alone (no latent kept): {curve.attrs['errors_alone']:.4f}; with "
        "every error node kept a small circuit is faithful as far as the dictionaries miss what matters"
    )
    return "\n".join(lines)

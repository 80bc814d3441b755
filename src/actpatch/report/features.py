"""Feature results read as latents: the strongest latents by effect, and where each one fires.

A feature sweep or attribution (`site="feature"`) has a `latent` dimension of hundreds or
thousands; a heatmap of it shows little. What a reader wants is the short list of latents that
moved the metric most, with their intervals, and for each, the prompt tokens that light it up
(`attrs["latent_activations"]`, from `actpatch.bases.on_prompts.latent_activations`, which the
command line records). `top_latents` is that list as a table; `latents_html` the report's part.
Both directions of a stacked result are read one at a time."""

from __future__ import annotations

import html
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from actpatch.report.layout import DEFAULT_METRIC
from actpatch.results import effects

TOP = 10  # latents listed
CONTEXTS = 3  # tokens shown per latent, each in its prompt


def is_feature_result(result: xr.DataArray) -> bool:
    """Whether `result` is over a dictionary's latents (a feature sweep or estimate)."""
    return "latent" in result.dims and isinstance(result.attrs.get("dictionary"), dict)


def directions(result: xr.DataArray) -> list[tuple[str, xr.DataArray]]:
    """(direction, the result of that direction alone) for a result of one or both directions."""
    if "direction" not in result.dims:
        return [(str(result.attrs.get("direction", "")), result)]
    return [(str(d), result.sel(direction=d)) for d in result["direction"].values]


def top_latents(
    result: xr.DataArray,
    metric: str = DEFAULT_METRIC,
    *,
    top: int = TOP,
    direction: str | None = None,
) -> pd.DataFrame:
    """The `top` (latent, position) patches of one direction with the largest |effect| on `metric`.

    Columns: latent, pos, token (the clean run's, first prompt), value (the metric after the patch),
    lo and hi where the result has intervals, and effect (the value's distance from the unpatched
    target run, towards the source; `actpatch.results.effects`)."""
    values = result.sel(metric=metric)
    if "batch" in values.dims:
        values = values.mean("batch")
    stat = "stat" in values.dims
    middle = values.sel(stat="value") if stat else values
    middle = middle.transpose(*[d for d in ("layer", "latent", "pos") if d in middle.dims])
    effect = effects(result.attrs, middle.values, metric, direction)
    table = pd.DataFrame({"effect": effect.ravel(), "value": middle.values.ravel()})
    index = np.indices(middle.shape).reshape(middle.ndim, -1)
    for axis, dim in enumerate(middle.dims):
        table[dim] = middle[dim].values[index[axis]]
    if "pos" in middle.dims and "clean_token" in middle.coords:
        table["token"] = middle["clean_token"].values[index[middle.dims.index("pos")]]
    if stat:
        for bound in ("lo", "hi"):
            table[bound] = values.sel(stat=bound).transpose(*middle.dims).values.ravel()
    table = table.iloc[np.argsort(-np.abs(table["effect"].to_numpy()), kind="stable")[:top]]
    columns = [
        c for c in ("layer", "latent", "pos", "token", "value", "lo", "hi", "effect") if c in table
    ]
    return table[columns].reset_index(drop=True)


def latents_html(result: xr.DataArray, metric: str = DEFAULT_METRIC) -> str:
    """The report's part for a feature result: per direction, the top latents by effect with their
    intervals, each with the prompt tokens where it is most active."""
    found = result.attrs.get("latent_activations")
    parts = []
    for direction, part in directions(result):
        table = top_latents(part, metric, direction=direction or None)
        rows = "".join(_row(row, found) for row in table.itertuples(index=False))
        interval = "<th>interval</th>" if "lo" in table else ""
        parts.append(
            f"<h3>{_e(direction)}: the {len(table)} latents that moved {_e(metric)} most</h3>"
            f"<table class='numbers latents'><tr><th>latent</th><th>position</th><th>{_e(metric)}</th>"
            f"{interval}<th>effect</th><th>where it fires (activation; strongest tokens of the prompts)</th></tr>"
            f"{rows}</table>"
        )
    note = (
        "Effect: the metric's distance from the unpatched target run, counted towards the source run."
        + (
            " Activations: the latent's value on each prompt token (clean and corrupt runs); the darker, "
            "the stronger."
            if found
            else " The prompts' activations were not recorded with this result (the command line records "
            "them; in Python, set result.attrs['latent_activations'] = "
            "actpatch.bases.on_prompts.latent_activations(model, pairs, dictionary, latents))."
        )
    )
    return "".join(parts) + f"<p class='note'>{_e(note)}</p>"


def contexts(found: dict[str, Any], latent: int, *, top: int = CONTEXTS) -> list[dict[str, Any]]:
    """The `top` tokens (over every prompt of both runs) where `latent` is most active: run, prompt,
    position, activation and the prompt's tokens with each token's activation."""
    if latent not in found.get("latents", []):
        return []
    row = found["latents"].index(latent)
    peaks = [
        (activations[row][pos], i, pos)
        for i, text in enumerate(found["texts"])
        for activations in [text["activations"]]
        for pos in range(len(text["tokens"]))
        if activations[row][pos] > 0
    ]
    chosen = sorted(peaks, key=lambda peak: -peak[0])[:top]
    return [
        {
            "run": found["texts"][i]["run"],
            "prompt": found["texts"][i]["prompt"],
            "pos": pos,
            "activation": value,
            "tokens": found["texts"][i]["tokens"],
            "activations": found["texts"][i]["activations"][row],
        }
        for value, i, pos in chosen
    ]


def _row(row: Any, found: dict[str, Any] | None) -> str:
    where = str(row.pos) + (f" ({row.token!r})" if hasattr(row, "token") else "")
    interval = f"<td>[{row.lo:+.3f}, {row.hi:+.3f}]</td>" if hasattr(row, "lo") else ""
    fires = _fires(found, int(row.latent)) if found else "—"
    return (
        f"<tr><th>{int(row.latent)}</th><td>{_e(where)}</td><td>{row.value:+.3f}</td>{interval}"
        f"<td>{row.effect:+.3f}</td><td class='contexts'>{fires}</td></tr>"
    )


def _fires(found: dict[str, Any], latent: int) -> str:
    shown = contexts(found, latent)
    if not shown:
        return "not active on these prompts"
    return "<br>".join(
        f"{c['activation']:.3g} at {_e(c['run'])} prompt {c['prompt']}, token {c['pos']}: "
        + _tokens(c["tokens"], c["activations"], c["pos"])
        for c in shown
    )


def _tokens(tokens: list[str], activations: list[float], peak: int) -> str:
    """The prompt's tokens, each shaded by the latent's activation there; the peak token outlined."""
    largest = max(max(activations), 1e-12)
    spans = []
    for pos, (token, value) in enumerate(zip(tokens, activations)):
        shade = max(value, 0.0) / largest
        outline = "outline:1px solid #b42318;" if pos == peak else ""
        spans.append(
            f"<span title='{value:.4g}' style='background:rgba(214,96,77,{shade:.2f});{outline}'>"
            f"{_e(token)}</span>"
        )
    return f"<span class='tokens'>{''.join(spans)}</span>"


def _e(value: Any) -> str:
    return html.escape(str(value))

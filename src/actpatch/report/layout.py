"""How a result is laid out as pictures: which metric, which panels, and what every axis tick says.

Shared by the interactive figures (plotly) and the static ones (matplotlib), so the HTML report
and the PNGs always show the same panels with the same labels. Drawing is not done here."""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass

import numpy as np
import xarray as xr

DEFAULT_METRIC = "norm_logit_diff"
# Dimensions that split a layer's row into columns, in the order we prefer them on the x axis:
# a per-head (or per-latent) sweep at named positions is drawn layer × head, one panel per position.
COLUMN_DIMS = ("head", "kv_head", "neuron", "latent", "pos")
DIRECTION_MEANING = {
    "denoise": "denoise: clean values patched into the corrupt run",
    "noise": "noise: corrupt values patched into the clean run",
}


@dataclass(frozen=True)
class Scale:
    """A colour scale's centre: the value of a patch that changes nothing, drawn white.

    That is the target run's own value: the corrupt run's when denoising (0 on the normalised
    logit difference), the clean run's when noising (1). Centring both directions at 0 would
    paint every untouched noising site as a strong effect."""

    centre: float
    label: str  # what the centre is, for the colour bar: "denoise: 0 = corrupt run (no effect)"


@dataclass(frozen=True)
class Panel:
    """One heatmap: `values` (layer, column), with tick labels and hover text for each column."""

    title: str
    values: np.ndarray
    layers: list[int]
    ticks: list[list[str]]  # per column, the lines of its tick label (plain text)
    hover: list[str]  # per column, a full description (plain text)
    scale: int = 0  # index into Grid.scales: one colour scale per direction
    # Results with a `stat` dimension (bootstrap intervals): (layer, column, 2) lower and upper
    # bounds, and the cells whose interval holds the no-effect value, drawn faded.
    intervals: np.ndarray | None = None
    faded: np.ndarray | None = None


@dataclass(frozen=True)
class Grid:
    """Every panel of one result under one metric, and how to arrange and title them."""

    metric: str
    column_dim: str | None  # None: the result has no dimension beside layer
    panels: list[Panel]
    columns_per_row: int
    note: str  # what was reduced or how to read it; empty when nothing to say
    scales: list[Scale] = dataclasses.field(default_factory=lambda: [Scale(0.0, "")])

    @property
    def rows(self) -> int:
        return math.ceil(len(self.panels) / self.columns_per_row)

    @property
    def extent(self) -> float:
        """Largest distance from a panel's centre over every panel: each colour scale runs from its
        centre − extent to its centre + extent, so equal effects get equal colours in every panel."""
        finite = [
            np.abs(p.values - self.scales[p.scale].centre)[np.isfinite(p.values)]
            for p in self.panels
        ]
        largest = max((float(a.max()) for a in finite if a.size), default=0.0)
        return largest or 1.0

    def limits(self, scale: int) -> tuple[float, float]:
        """(min, max) of colour scale `scale`."""
        centre = self.scales[scale].centre
        return centre - self.extent, centre + self.extent


def default_metric(result: xr.DataArray) -> str | None:
    """The metric a picture shows unless told: normalised logit difference where the result has it."""
    if "metric" not in result.dims:
        return None
    metrics = [str(m) for m in result.metric.values]
    return DEFAULT_METRIC if DEFAULT_METRIC in metrics else metrics[0]


def metrics_of(result: xr.DataArray) -> list[str]:
    return [str(m) for m in result.metric.values] if "metric" in result.dims else []


def is_layer_grid(result: xr.DataArray) -> bool:
    """Whether `result` is drawn as layer heatmaps (else, with one dimension left, as a line)."""
    return "layer" in result.dims


def grid(result: xr.DataArray, metric: str | None = None) -> Grid:
    """Split `result` into layer × column panels: one per direction, corruption or other extra coordinate.

    Per-prompt results (a `batch` dimension) are averaged over prompts, and the note says so:
    the mean of per-prompt normalised values is not the normalised mean a plain sweep reports.
    Results with intervals (a `stat` dimension: value, lo, hi) show `value`; `stat` makes no panels.
    Each panel carries the bounds, and the cells whose interval holds the no-effect value (the
    colour scale's white) are marked `faded`: the prompts cannot tell them from a patch that does nothing."""
    if not is_layer_grid(result):
        raise ValueError(
            f"a heatmap needs a 'layer' dimension; this result has {list(result.dims)}"
        )
    metric = metric or default_metric(result)
    chosen = result.sel(metric=metric) if metric is not None else result
    notes = []
    if "batch" in chosen.dims:
        notes.append(f"mean over {chosen.sizes['batch']} prompts of per-prompt values")
        chosen = chosen.mean("batch", keep_attrs=True)
    bounds = None
    if "stat" in chosen.dims:
        bounds = chosen.sel(stat=["lo", "hi"])
        chosen = chosen.sel(stat="value", drop=True)
        notes.append(_interval_note(result))
    column_dim = next((d for d in COLUMN_DIMS if d in chosen.dims), None)
    facet_dims = [d for d in chosen.dims if d not in ("layer", column_dim, "direction")]
    if "direction" in chosen.dims:
        facet_dims.append("direction")  # last, so that denoise and noise sit side by side in a row
    directions = (
        [str(d) for d in chosen.direction.values]
        if "direction" in chosen.dims
        else [result.attrs.get("direction")]
    )
    scales = [no_effect(result, metric, d) for d in directions]
    panels = []
    for combination in itertools.product(*(range(chosen.sizes[d]) for d in facet_dims)):
        part = chosen.isel(dict(zip(facet_dims, combination)))
        ordered = part.transpose("layer", *([column_dim] if column_dim else []))
        values = np.asarray(ordered.values, dtype=np.float64)
        ticks, hover = _columns(part, column_dim)
        scale = (
            directions.index(str(part.direction.values.item())) if "direction" in part.coords else 0
        )
        values = values.reshape(len(part.layer), -1)
        intervals = faded = None
        if bounds is not None:
            part_bounds = bounds.isel(dict(zip(facet_dims, combination)))
            intervals = np.asarray(
                part_bounds.transpose(
                    "layer", *([column_dim] if column_dim else []), "stat"
                ).values,
                dtype=np.float64,
            ).reshape(*values.shape, 2)
            centre = scales[scale].centre
            faded = (intervals[..., 0] <= centre) & (centre <= intervals[..., 1])
        panels.append(
            Panel(
                title=" · ".join(_facet_title(part, d) for d in facet_dims),
                values=values,
                layers=[int(v) for v in part.layer.values],
                ticks=ticks,
                hover=hover,
                scale=scale,
                intervals=intervals,
                faded=faded,
            )
        )
    if "direction" in chosen.dims:
        per_row = chosen.sizes["direction"]
    else:
        per_row = min(3, len(panels))
    return Grid(
        metric=metric or "value",
        column_dim=column_dim,
        panels=panels,
        columns_per_row=per_row,
        note="; ".join(notes),
        scales=scales,
    )


def _interval_note(result: xr.DataArray) -> str:
    about = result.attrs.get("interval") if isinstance(result.attrs.get("interval"), dict) else {}
    ci = about.get("ci")
    share = f"{100 * ci:g} % " if isinstance(ci, (int, float)) else ""
    return f"faded: the {share}interval over prompts holds the no-effect value"


def no_effect(result: xr.DataArray, metric: str | None, direction: str | None) -> Scale:
    """The value `metric` takes when a patch changes nothing: the target run's, from the result's
    baselines (normalised logit difference: 0 denoising, 1 noising, by definition). Without a
    direction or a baseline for this metric (a GradDrop magnitude, baselines that differ between
    stacked corruptions), the centre is 0, and the label says so."""
    target = {"denoise": "corrupt", "noise": "clean"}.get(str(direction))
    if target is None or metric is None:
        return Scale(0.0, "")
    baseline = result.attrs.get(f"baseline_{target}")
    if metric == DEFAULT_METRIC:
        centre = 0.0 if target == "corrupt" else 1.0
    elif (
        isinstance(baseline, dict)
        and isinstance(baseline.get(metric), (int, float))
        and math.isfinite(baseline[metric])
    ):
        centre = float(baseline[metric])
    else:
        return Scale(0.0, f"{direction}: centred at 0")
    return Scale(centre, f"{direction}: {centre:.3g} = {target} run (no effect)")


def title(result: xr.DataArray) -> str:
    """A result's one-line name: site, direction, estimate method, model."""
    attrs = result.attrs
    parts = [str(attrs.get("site", "")) or str(result.name or "result")]
    if "direction" in result.dims:
        parts.append(" and ".join(str(d) for d in result.direction.values))
    elif attrs.get("direction"):
        parts.append(str(attrs["direction"]))
    if estimate := attrs.get("estimate"):
        parts.append(
            f"{estimate.get('method', 'attribution')} estimate"
            if isinstance(estimate, dict)
            else "estimate"
        )
    if "corruption" in result.dims:
        parts.append(f"{result.sizes['corruption']} corruptions")
    elif attrs.get("corruption"):
        parts.append(f"corruption {attrs['corruption']}")
    if attrs.get("model"):
        parts.append(str(attrs["model"]))
    return " · ".join(parts)


def axis_title(column_dim: str | None) -> str:
    if column_dim == "pos":
        return "position: clean token (corrupt token where it differs)"
    return column_dim or ""


def show_token(token: str) -> str:
    """A token as a label: newlines and tabs made visible, spaces kept."""
    return token.replace("\n", "\\n").replace("\t", "\\t")


def _columns(part: xr.DataArray, column_dim: str | None) -> tuple[list[list[str]], list[str]]:
    if column_dim is None:
        return [["all positions"]], ["all positions at once"]
    ticks, hover = [], []
    for i, value in enumerate(part[column_dim].values):
        if column_dim != "pos":
            ticks.append([str(value)])
            hover.append(f"{column_dim} {value}")
            continue
        lines, described = _pos_description(part, i)
        ticks.append(lines)
        hover.append(described)
    return ticks, hover


def _pos_description(part: xr.DataArray, i: int) -> tuple[list[str], str]:
    """Tick lines (clean token, corrupt token if different, position name) and a hover line for column i."""
    label = part.pos.values[i]
    named = not _is_index(label)
    clean = str(part.clean_token.values[i]) if "clean_token" in part.coords else None
    corrupt = str(part.corrupt_token.values[i]) if "corrupt_token" in part.coords else None
    lines = []
    if clean is not None:
        lines.append(show_token(clean))
        if corrupt is not None and corrupt != clean:
            lines.append(f"({show_token(corrupt)})")
    if named or clean is None:
        lines.append(str(label))
    described = f"pos {label}"
    if clean is not None:
        described += f" · clean {clean!r}"
    if corrupt is not None:
        described += f" · corrupt {corrupt!r}"
    return lines, described


def _facet_title(part: xr.DataArray, dim: str) -> str:
    value = part[dim].values.item()
    if dim == "direction":
        return DIRECTION_MEANING.get(str(value), str(value))
    if dim == "pos" and "clean_token" in part.coords:
        return f"pos {value} ({part.clean_token.values.item()!r})"
    return f"{dim} {value}"


def _is_index(label: object) -> bool:
    if isinstance(label, (int, np.integer)):
        return True
    return isinstance(label, str) and label.lstrip("-").isdigit()

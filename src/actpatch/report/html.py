"""One self-contained HTML page of results: interactive figures, baselines, self-checks, provenance.

The page inlines plotly.js, so it opens anywhere with no network, and it can be mailed or archived
beside the saved `.nc` result it was drawn from. A page is a list of `Section`s: every result
becomes one (figure and tables), and other modules add their own (a Pareto curve, a verification
table) by building a `Section` and passing it in the list, with no change here."""

from __future__ import annotations

import html
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import plotly.graph_objects as go
import plotly.io as pio
import plotly.offline
import xarray as xr

from actpatch import atomic
from actpatch.engine.checks import TOLERANCE
from actpatch.report import features, figures, layout


@dataclass
class Section:
    """A titled part of a report: figures, then `html` (trusted markup: tables, notes), then `note` (plain text)."""

    title: str
    figures: Sequence[go.Figure] = ()
    html: str = ""
    note: str = ""


Item = xr.DataArray | Section
Results = Item | Sequence[Item] | Mapping[str, Item]

# Attributes shown in their own tables, or as the prompts list, rather than in the provenance table.
_OWN_TABLES = (
    "baseline_clean",
    "baseline_corrupt",
    "self_checks",
    "clean_prompts",
    "corrupt_prompts",
    "latent_activations",
)
_PROVENANCE_ORDER = (
    "model",
    "model_source",
    "site",
    "direction",
    "corruption",
    "source",
    "engine",
    "attention",
    "n_prompts",
    "positions",
    "estimate",
    "cost",
    "versions",
)
_PROMPTS_SHOWN = 10


def render_report(
    results: Results,
    path: str | os.PathLike,
    *,
    title: str = "actpatch report",
    metric: str | None = None,
) -> Path:
    """Write every result (one, a list, or a {title: result} mapping) as one HTML page; return its path.

        ap.report.render_report({"IOI, residual stream": res, "IOI, heads": heads}, "ioi.html")

    Results may be mixed with `Section`s built elsewhere. `metric` picks the metric each figure shows
    first; the others stay one menu click away."""
    sections = [s for name, item in _items(results) for s in _as_sections(item, name, metric)]
    return atomic.write_text(path, _page(title, sections))  # a killed run leaves no half page


def result_section(
    result: xr.DataArray, title: str | None = None, *, metric: str | None = None
) -> Section:
    """A result's section: its figure, its baselines and self-checks, its provenance and prompts."""
    parts = [
        _baselines(result.attrs),
        _self_checks(result),
        _provenance(result.attrs),
        _prompts(result.attrs),
    ]
    return Section(
        title or layout.title(result),
        figures=[figures.show(result, metric)],
        html="\n".join(p for p in parts if p),
    )


def _items(results: Results) -> Iterable[tuple[str | None, Item]]:
    if isinstance(results, (xr.DataArray, Section)):
        return [(None, results)]
    if isinstance(results, Mapping):
        return [(str(k), v) for k, v in results.items()]
    return [(None, r) for r in results]


def _as_sections(item: Item, name: str | None, metric: str | None) -> list[Section]:
    if isinstance(item, Section):
        return [item]
    if not isinstance(item, xr.DataArray):
        raise TypeError(
            f"a report is made of xarray results and report.Section objects, got {type(item).__name__}"
        )
    sections = [result_section(item, name, metric=metric)]
    if features.is_feature_result(item):  # latents by effect, and where each one fires
        about = item.attrs["dictionary"]
        sections.append(
            Section(
                f"Top latents of {about.get('name', 'the dictionary')}: {name or layout.title(item)}",
                html=features.latents_html(item, metric or layout.DEFAULT_METRIC),
            )
        )
    return sections


def _baselines(attrs: Mapping[str, Any]) -> str:
    clean, corrupt = attrs.get("baseline_clean"), attrs.get("baseline_corrupt")
    if not isinstance(clean, Mapping) or not isinstance(corrupt, Mapping):
        return (
            "<p class='missing'>Baselines: not kept in this result (they differ between the runs "
            "it stacks; each run's own result has them).</p>"
        )
    rows = "".join(
        f"<tr><th>{_e(m)}</th><td>{_number(clean.get(m))}</td><td>{_number(corrupt.get(m))}</td></tr>"
        for m in dict.fromkeys([*clean, *corrupt])
    )
    return (
        "<h3>Baselines (unpatched runs)</h3><table class='numbers'><tr><th>metric</th><th>clean</th>"
        f"<th>corrupt</th></tr>{rows}</table>"
    )


def _self_checks(result: xr.DataArray) -> str:
    checks = result.attrs.get("self_checks")
    if not isinstance(checks, Mapping):
        if "estimate" in result.attrs:
            return ""  # estimates are checked by verify(), not by in-sweep patches
        return (
            "<p class='missing'>Self-checks: not kept in this stacked result (each part's figures differ); "
            "every part passed them, or its sweep would have raised.</p>"
        )
    # The sweep records the bound it was held to (wider in bfloat16 and float16); older results did not.
    bound = result.attrs.get("self_check_tolerance", TOLERANCE)
    rows = "".join(
        f"<tr><th>{_e(name)}</th><td>{_number(value)}</td>"
        f"<td class='{'ok' if _passed(value, bound) else 'failed'}'>{'ok' if _passed(value, bound) else 'over tolerance'}</td></tr>"
        for name, value in checks.items()
    )
    return (
        f"<h3>Self-checks</h3><p>Errors as a fraction of the clean−corrupt gap; a sweep fails above {bound:g}.</p>"
        f"<table class='numbers'><tr><th>check</th><th>error</th><th></th></tr>{rows}</table>"
    )


def _provenance(attrs: Mapping[str, Any]) -> str:
    keys = [k for k in _PROVENANCE_ORDER if k in attrs] + [
        k for k in attrs if k not in _PROVENANCE_ORDER and k not in _OWN_TABLES
    ]
    rows = "".join(f"<tr><th>{_e(k)}</th><td>{_value(attrs[k])}</td></tr>" for k in keys)
    return f"<h3>Provenance</h3><table class='provenance'>{rows}</table>" if rows else ""


def _prompts(attrs: Mapping[str, Any]) -> str:
    clean, corrupt = (
        list(attrs.get("clean_prompts") or []),
        list(attrs.get("corrupt_prompts") or []),
    )
    if not clean:
        return ""
    rows = "".join(
        f"<tr><td>{_e(c)}</td><td>{_e(k)}</td></tr>"
        for c, k in zip(clean[:_PROMPTS_SHOWN], corrupt[:_PROMPTS_SHOWN] + [""] * _PROMPTS_SHOWN)
    )
    more = f" (first {_PROMPTS_SHOWN} of {len(clean)})" if len(clean) > _PROMPTS_SHOWN else ""
    return (
        f"<details><summary>Prompts{more}</summary><table class='prompts'><tr><th>clean</th><th>corrupt</th></tr>"
        f"{rows}</table></details>"
    )


def _page(title: str, sections: Sequence[Section]) -> str:
    contents = "".join(
        f"<li><a href='#section-{i + 1}'>{_e(s.title)}</a></li>" for i, s in enumerate(sections)
    )
    body = "\n".join(_section(s, f"section-{i + 1}") for i, s in enumerate(sections))
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>{_e(title)}</title>
<style>{_STYLE}</style>
<script>{plotly.offline.get_plotlyjs()}</script>
</head>
<body>
<h1>{_e(title)}</h1>
<nav><ol>{contents}</ol></nav>
{body}
</body>
</html>
"""


def _section(section: Section, anchor: str) -> str:
    plots = "".join(
        "<div class='figure'>"
        + pio.to_html(
            figure,
            include_plotlyjs=False,
            full_html=False,
            div_id=f"{anchor}-figure-{i + 1}",
            config={"displaylogo": False, "responsive": True},
        )
        + "</div>"
        for i, figure in enumerate(section.figures)
    )
    note = f"<p class='note'>{_e(section.note)}</p>" if section.note else ""
    return (
        f"<section id='{anchor}'><h2>{_e(section.title)}</h2>{plots}{section.html}{note}</section>"
    )


def _value(value: Any) -> str:
    if isinstance(value, Mapping):
        rows = "".join(f"<tr><th>{_e(k)}</th><td>{_value(v)}</td></tr>" for k, v in value.items())
        return f"<table class='nested'>{rows}</table>" if rows else "—"
    if isinstance(value, float):
        return _number(value)
    if isinstance(value, (list, tuple)):
        return _e(", ".join(str(v) for v in value)) or "—"
    return _e(value) if value not in ("", None) else "—"


def _number(value: Any) -> str:
    return (
        f"{value:.6g}"
        if isinstance(value, (int, float))
        else _e(value if value is not None else "—")
    )


def _passed(value: Any, bound: float) -> bool:
    return isinstance(value, (int, float)) and abs(value) <= bound


def _e(value: Any) -> str:
    return html.escape(str(value))


_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1400px; padding: 0 1em; color: #222; }
section { border-top: 1px solid #ccc; margin-top: 2em; padding-top: 0.5em; }
table { border-collapse: collapse; margin: 0.5em 0; font-size: 0.9em; }
th, td { border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
table.numbers td { text-align: right; font-variant-numeric: tabular-nums; }
table.nested { margin: 0; }
td.ok { color: #1a7f37; } td.failed { color: #b42318; font-weight: bold; }
p.missing, p.note { color: #555; font-style: italic; }
span.tokens { white-space: pre; font-family: ui-monospace, monospace; }
table.latents td.contexts { text-align: left; }
"""


def provenance_html(attrs: Mapping[str, Any]) -> str:
    """The provenance table and the prompts of a result's `attrs`, for sections built elsewhere."""
    return "\n".join(p for p in (_provenance(attrs), _prompts(attrs)) if p)

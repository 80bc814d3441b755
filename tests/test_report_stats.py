"""Figures of results with intervals (a `stat` dimension): value drawn, `value [lo, hi]` on hover,
cells whose interval holds the no-effect value faded; `stat` makes no panels; line plots get a band."""

from __future__ import annotations

import functools

import numpy as np
import plotly.graph_objects as go
import pytest
import xarray as xr

import actpatch as ap
from actpatch import report
from actpatch.report import figures, layout, png
from tiny import random_pairs, tiny_model


@functools.cache
def bounded() -> xr.DataArray:
    """resid_pre on the tiny LLaMA, both directions, with 95 % intervals; positions 0 and 2 carry
    the same token in both runs, so there every interval is exactly the no-effect value."""
    model = tiny_model("llama")
    return ap.sweep(
        model,
        random_pairs(model, 16),
        "resid_pre",
        direction=["denoise", "noise"],
        ci=ap.Bootstrap(n_boot=200),
    )


def test_stat_is_no_panel_and_the_value_is_drawn():
    result = bounded()
    grid = layout.grid(result)
    assert len(grid.panels) == 2 and grid.columns_per_row == 2  # one per direction, none per stat
    assert "faded: the 95 % interval over prompts holds the no-effect value" in grid.note
    for panel, direction in zip(grid.panels, ["denoise", "noise"]):
        cells = result.sel(direction=direction, metric="norm_logit_diff")
        np.testing.assert_array_equal(panel.values, cells.sel(stat="value").values)
        np.testing.assert_array_equal(panel.intervals[..., 0], cells.sel(stat="lo").values)
        np.testing.assert_array_equal(panel.intervals[..., 1], cells.sel(stat="hi").values)


@pytest.mark.parametrize("direction, centre", [("denoise", 0.0), ("noise", 1.0)])
def test_cells_whose_interval_holds_the_no_effect_value_are_faded(direction, centre):
    result = bounded()
    panel = layout.grid(result).panels[["denoise", "noise"].index(direction)]
    cells = result.sel(direction=direction, metric="norm_logit_diff")
    want = (cells.sel(stat="lo") <= centre) & (centre <= cells.sel(stat="hi"))
    np.testing.assert_array_equal(panel.faded, want.values)
    assert panel.faded[0, [0, 2]].all()  # the same token in both runs: exactly the target run
    assert (
        not panel.faded.all()
    )  # the last position at the last layer restores (or breaks) the answer


def test_the_centre_of_another_metric_is_its_baseline():
    result = bounded().sel(direction="denoise").assign_attrs(direction="denoise")
    grid = layout.grid(result, "logit_diff")
    centre = result.attrs["baseline_corrupt"]["logit_diff"]
    cells = result.sel(metric="logit_diff")
    want = (cells.sel(stat="lo") <= centre) & (centre <= cells.sel(stat="hi"))
    np.testing.assert_array_equal(grid.panels[0].faded, want.values)


def test_the_figure_fades_cells_and_hovers_value_with_interval():
    result = bounded()
    figure = report.show(result)
    panels = [t for t in figure.data if isinstance(t, go.Heatmap) and t.name != figures.FADED_NAME]
    fades = [t for t in figure.data if isinstance(t, go.Heatmap) and t.name == figures.FADED_NAME]
    assert len(panels) == 2 and len(fades) == 2
    grid = layout.grid(result)
    for fade, panel in zip(fades, grid.panels):
        np.testing.assert_array_equal(~np.isnan(np.asarray(fade.z, dtype=float)), panel.faded)
        assert fade.hoverinfo == "skip" and fade.showscale is False
    cells = result.sel(direction="denoise", metric="norm_logit_diff").isel(layer=1, pos=5)
    assert (
        panels[0].customdata[1][5][1]
        == f"[{float(cells.sel(stat='lo')):.8g}, {float(cells.sel(stat='hi')):.8g}]"
    )
    assert panels[0].customdata[1][5][0].startswith("pos 5 · clean ")
    assert "%{z:.8g} %{customdata[1]}" in panels[0].hovertemplate
    # The metric menu replaces every trace's data, the faded layers included.
    menu = figure.layout.updatemenus[0]
    logit = next(b for b in menu.buttons if b.label == "logit_diff")
    assert len(logit.args[0]["z"]) == len(figure.data) == len(logit.args[0]["customdata"])


def test_results_without_intervals_are_drawn_as_before():
    model = tiny_model("llama")
    plain = ap.sweep(model, random_pairs(model, 4), "resid_pre")
    grid = layout.grid(plain)
    assert (
        grid.panels[0].faded is None
        and grid.panels[0].intervals is None
        and "faded" not in grid.note
    )
    assert [t.name for t in report.show(plain).data].count(figures.FADED_NAME) == 0


def test_pngs_fade_the_same_cells(tmp_path, monkeypatch):
    drawn = []
    original = png._fade
    monkeypatch.setattr(png, "_fade", lambda faded: drawn.append(faded) or original(faded))
    (path,) = report.render_pngs(bounded(), tmp_path)
    assert path.stat().st_size > 0
    grid = layout.grid(bounded())
    assert len(drawn) == 2 and all(np.array_equal(d, p.faded) for d, p in zip(drawn, grid.panels))
    layer = original(grid.panels[0].faded)
    assert (layer[grid.panels[0].faded, 3] == png.FADE[3]).all() and (
        layer[~grid.panels[0].faded, 3] == 0
    ).all()


def _curve() -> xr.DataArray:
    values = np.array([[0.1, 0.0, 0.2], [0.5, 0.3, 0.6], [0.9, 0.8, 1.0]])
    return xr.DataArray(
        values,
        dims=["size", "stat"],
        coords={"size": [1, 2, 3], "stat": ["value", "lo", "hi"]},
        name="norm_logit_diff",
    )


def test_a_line_with_intervals_draws_a_band():
    figure = report.line_plot(_curve())
    band, line = figure.data
    np.testing.assert_array_equal(line.y, [0.1, 0.5, 0.9])
    np.testing.assert_array_equal(band.x, [1, 2, 3, 3, 2, 1])
    np.testing.assert_array_equal(
        band.y, [0.2, 0.6, 1.0, 0.8, 0.3, 0.0]
    )  # up along hi, back along lo
    assert band.fill == "toself" and band.hoverinfo == "skip"
    assert "%{customdata[0]:.8g}, %{customdata[1]:.8g}]" in line.hovertemplate
    two = xr.concat([_curve(), _curve() / 2], dim="method").assign_coords(method=["exact", "atp"])
    assert [t.name for t in report.line_plot(two).data if t.fill != "toself"] == ["exact", "atp"]


def test_a_png_line_with_intervals_fills_the_band():
    figure = png.draw(_curve())
    (ax,) = figure.axes
    assert len(ax.collections) == 1  # the band
    np.testing.assert_array_equal(ax.lines[0].get_ydata(), [0.1, 0.5, 0.9])

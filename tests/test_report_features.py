"""The report of a feature result: its top latents by effect, with intervals, and each latent's
activation on the prompts' tokens, checked against the sweep and the dictionary by hand."""

from __future__ import annotations

import html
import re

import numpy as np
import pytest

import actpatch as ap
from actpatch.bases.on_prompts import latent_activations
from actpatch.report.features import contexts, top_latents
from random_dictionaries import random_dictionary
from tiny import tiny_task

pytestmark = pytest.mark.filterwarnings("ignore::actpatch.bases.on_prompts.PoorReconstruction")


@pytest.fixture(scope="module")
def swept():
    """A tiny feature sweep of both directions with intervals, and the dictionary it went through."""
    model, pairs = tiny_task("llama")
    dictionary = random_dictionary(model, "resid_post", "resid_post")
    result = ap.sweep(
        model, pairs, "feature", dictionary=dictionary, latents="active", positions=["X", "END"],
        direction=["denoise", "noise"], ci=ap.Bootstrap(0.9, n_boot=50),
    )  # fmt: skip
    return model, pairs, dictionary, result


def test_top_latents_are_the_largest_effects_with_their_intervals(swept):
    *_, result = swept
    for direction in ("denoise", "noise"):
        part = result.sel(direction=direction)
        table = top_latents(part, direction=direction, top=5)
        values = part.sel(metric="norm_logit_diff", stat="value", layer=1)
        centre = 0.0 if direction == "denoise" else 1.0  # the unpatched target run
        distance = np.abs(values.values - centre)
        assert list(np.abs(table["effect"])) == pytest.approx(sorted(distance.ravel())[::-1][:5])
        first = table.iloc[0]
        cell = dict(latent=first["latent"], pos=first["pos"])
        assert first["value"] == pytest.approx(float(values.sel(cell)))
        lo, hi = (
            float(part.sel(metric="norm_logit_diff", stat=s, layer=1, **cell)) for s in ("lo", "hi")
        )
        assert (first["lo"], first["hi"]) == pytest.approx((lo, hi))


def test_the_report_shows_each_top_latent_where_it_fires_on_the_prompts(swept, tmp_path):
    model, pairs, dictionary, result = swept
    strongest = sorted(
        {
            int(i)
            for i in top_latents(result.sel(direction="denoise"), direction="denoise")["latent"]
        }
    )
    result.attrs["latent_activations"] = latent_activations(model, pairs, dictionary, strongest)
    saved = ap.load(ap.save(result, tmp_path / "features.nc"))  # the record survives netCDF
    page = ap.report.render_report({"tiny features": saved}, tmp_path / "features.html").read_text()
    section = page[page.index("<h2>Top latents of test.resid_post.1") :]
    denoise = section[section.index("<h3>denoise") : section.index("<h3>noise")]
    table = top_latents(result.sel(direction="denoise"), direction="denoise")
    rows = re.findall(
        r"<tr><th>(\d+)</th><td>([^<]*)</td><td>([^<]*)</td><td>([^<]*)</td>", denoise
    )
    assert [int(r[0]) for r in rows] == list(table["latent"])  # in order of |effect|
    first = table.iloc[0]
    assert (
        rows[0][2] == f"{first['value']:+.3f}"
        and rows[0][3] == f"[{first['lo']:+.3f}, {first['hi']:+.3f}]"
    )
    # The top latent's strongest token, by hand: encode the read site of both runs.
    latent = int(first["latent"])
    site = ap.Site("resid_post", 1)
    peaks = [
        (float(value), run_name, int(prompt), int(pos))
        for run_name, run in (("clean", pairs.clean_run), ("corrupt", pairs.corrupt_run))
        for activations in [dictionary.encode(ap.capture(model, run, [site])[site])[..., latent]]
        for (prompt, pos), value in np.ndenumerate(activations.numpy())
    ]
    value, run_name, prompt, pos = max(peaks)
    shown = contexts(saved.attrs["latent_activations"], latent)[0]
    assert (shown["run"], shown["prompt"], shown["pos"]) == (run_name, prompt, pos)
    assert shown["activation"] == pytest.approx(value, abs=1e-4)
    row = denoise[denoise.index(f"<tr><th>{latent}</th>") :]
    assert (
        html.unescape(row).split("</tr>")[0].count(f"at {run_name} prompt {prompt}, token {pos}:")
        >= 1
    )
    # Each token of that prompt, shaded by the latent's activation there, the peak outlined.
    assert f"title='{value:.4g}'" in row.split("</tr>")[0] and "outline:1px solid" in row


def test_a_result_without_recorded_activations_says_how_to_record_them(swept, tmp_path):
    *_, result = swept
    bare = result.copy()
    bare.attrs.pop("latent_activations", None)
    page = ap.report.render_report(bare, tmp_path / "bare.html").read_text()
    assert "were not recorded with this result" in html.unescape(page)
    assert "latent_activations(model, pairs, dictionary, latents)" in html.unescape(page)

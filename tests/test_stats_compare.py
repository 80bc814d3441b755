"""Paired comparisons of two sweeps: a planted difference is flagged, noise is not (beyond the
false discovery rate), and bad pairs are refused."""

import warnings

import numpy as np
import pytest

import actpatch as ap
from actpatch import stats
from actpatch.metrics import METRICS
from sample_results import synthetic
from tiny import random_pairs, tiny_model


def test_a_site_that_matters_under_one_corruption_only_is_flagged():
    model = tiny_model("llama")
    # The same clean prompts; one corruption changes only position 3, the other only position 1.
    late = ap.sweep(
        model, random_pairs(model, 24, seed=3, changed=[3]), "resid_pre", per_prompt=True
    )
    early = ap.sweep(
        model, random_pairs(model, 24, seed=3, changed=[1]), "resid_pre", per_prompt=True
    )
    table = stats.compare(late, early)
    assert list(table.columns[:3]) == ["site", "layer", "pos"] and len(table) == 12
    assert table["site"][3] == "resid_pre[layer=0, pos=3]"
    at = table.set_index(["layer", "pos"])
    # resid_pre at layer 0 is the token: position 3 restores everything under one, nothing under the other.
    assert at.loc[(0, 3), "flagged"] and at.loc[(0, 3), "difference"] == pytest.approx(1, abs=1e-6)
    assert at.loc[(0, 3), "lo"] == pytest.approx(1, abs=1e-6) and at.loc[
        (0, 3), "p"
    ] == pytest.approx(2 / 1001)
    assert at.loc[(0, 1), "flagged"] and at.loc[(0, 1), "difference"] == pytest.approx(-1, abs=1e-6)
    for pos in (0, 2, 4, 5):  # the same token in every run: both are the corrupt run, exactly
        assert at.loc[(0, pos), ["b", "difference", "lo", "hi", "p", "flagged"]].tolist() == [
            0.0,
            0.0,
            0.0,
            0.0,
            1.0,
            False,
        ]
    assert (
        table.attrs["multiple_comparisons"] == "Benjamini-Hochberg over 12 sites"
        and table.attrs["n_prompts"] == 24
    )


def test_sweeps_of_prompts_from_different_seeds_flag_no_more_than_chance():
    model = tiny_model("llama")
    options = dict(per_prompt=True, direction=["denoise", "noise"])
    one = ap.sweep(model, random_pairs(model, 48, seed=10), "resid_pre", **options)
    other = ap.sweep(model, random_pairs(model, 48, seed=11), "resid_pre", **options)
    table = stats.compare(one, other, ci=ap.Bootstrap(n_boot=2000))
    assert len(table) == 24 and set(table["direction"]) == {"denoise", "noise"}
    # Nothing differs but the draw of prompts. Benjamini–Hochberg then keeps the chance of any flag
    # near fdr = 5 %, and the sites are correlated (they share prompts), so a false flag tends to
    # come with neighbours: more than one flagged site would mean the p-values are not what they say.
    assert int(table["flagged"].sum()) <= 1
    assert (table["p"] >= 2 / 2001).all() and (table["p"] <= 1).all()


def test_p_values_of_equal_populations_are_uniform_enough():
    # 300 independent sites where a and b are drawn alike (skewed, 60 prompts): about 5 % of
    # p-values below 0.05, and Benjamini–Hochberg flags (almost) none of them.
    rng = np.random.default_rng(7)
    a, b = synthetic(rng, 60, layers=300), synthetic(rng, 60, layers=300)
    for result in (a, b):
        result.loc[{"metric": "logit_diff"}] = rng.gamma(2.0, 0.7, (300, 60))
    with pytest.warns(
        UserWarning, match="lone difference"
    ):  # 300 sites need more resamples to flag one alone
        table = stats.compare(a, b, metric="logit_diff", fdr=0.05)
    assert (
        0.03 <= float((table["p"] < 0.05).mean()) <= 0.09
    )  # 6.5 % over seeds: a little liberal at 60 prompts
    assert int(table["flagged"].sum()) <= 1


def test_benjamini_hochberg_by_hand():
    p = np.array([0.01, 0.04, 0.03, 0.2, 0.005])
    # sorted 0.005 0.01 0.03 0.04 0.2 against 0.01 0.02 0.03 0.04 0.05 × (k/5): the largest k that passes is 4
    assert stats.benjamini_hochberg(p, 0.05).tolist() == [True, True, True, False, True]
    assert stats.benjamini_hochberg(np.array([0.02, 0.5]), 0.01).tolist() == [False, False]


def test_too_few_resamples_for_the_number_of_sites_warns():
    rng = np.random.default_rng(0)
    with pytest.warns(UserWarning, match="n_boot ≥ 4000"):
        stats.compare(
            synthetic(rng, 10, layers=100),
            synthetic(rng, 10, layers=100),
            ci=ap.Bootstrap(n_boot=100),
        )


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda a: (a, a.isel(batch=slice(0, 9))), "10 prompts and result_b 9"),
        (lambda a: (a, a.mean("batch")), "per_prompt=True"),
        (lambda a: (a.expand_dims(corruption=["x"]), a), "corruption"),
        (lambda a: (a, a.isel(layer=[0])), "same sites"),
    ],
)
def test_bad_pairs_are_refused(make, message):
    a, b = make(synthetic(np.random.default_rng(0), 10, layers=2))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(ValueError, match=message):
            stats.compare(a, b)


def test_unknown_metric_is_refused():
    a = synthetic(np.random.default_rng(0), 10)
    with pytest.raises(ValueError, match=", ".join(METRICS)):
        stats.compare(a, a, metric="logit")


def test_sensitivity_report_with_ci_says_which_spreads_are_real():
    model = tiny_model("llama")
    by_corruption = {
        "late": random_pairs(model, 24, seed=3, changed=[3]),
        "early": random_pairs(model, 24, seed=3, changed=[1]),
    }
    result = ap.sweep_corruptions(model, by_corruption, "resid_pre", per_prompt=True)
    plain = ap.sensitivity_report(result, threshold=0.5)
    report = ap.sensitivity_report(result, threshold=0.5, ci=0.95)
    assert (
        report.index.tolist() == plain.index.tolist()
        and "resid_pre[layer=0, pos=3]" in report.index
    )
    np.testing.assert_allclose(report["spread"], plain["spread"])
    row = report.loc["resid_pre[layer=0, pos=3]"]
    # the token itself: under "late" it restores everything, under "early" nothing, on every resample
    assert (
        row["real"]
        and row["spread_lo"] == pytest.approx(1, abs=1e-6)
        and row["spread_hi"] == pytest.approx(1, abs=1e-6)
    )
    assert (report["spread_lo"] <= report["spread"] + 1e-9).all() and (
        report["spread"] <= report["spread_hi"] + 1e-9
    ).all()
    with pytest.raises(ValueError, match="per_prompt=True"):
        ap.sensitivity_report(ap.sweep_corruptions(model, by_corruption, "resid_pre"), ci=0.95)

"""Intervals from per-prompt rows: the value is the sweep's number, prompts are resampled the way the
sweep pools them, and 95 % intervals cover a known value about 95 % of the time."""

import numpy as np
import pytest
import xarray as xr

import actpatch as ap
from actpatch import stats
from actpatch.stats import bootstrap
from sample_results import synthetic
from tiny import random_pairs, tiny_model, tiny_pairs, with_answers


@pytest.fixture(scope="module")
def swept():
    model = tiny_model("llama")
    pairs = random_pairs(model, 16)
    options = dict(direction=["denoise", "noise"])
    return (
        model,
        pairs,
        ap.sweep(model, pairs, "resid_pre", per_prompt=True, **options),
        ap.sweep(model, pairs, "resid_pre", **options),
    )


def test_value_is_the_sweeps_own_number(swept):
    _, _, per_prompt, averaged = swept
    bounds = stats.intervals(per_prompt, ci=ap.Bootstrap(n_boot=200))
    assert list(bounds["stat"].values) == ["value", "lo", "hi"] and "batch" not in bounds.dims
    assert set(bounds.dims) == {"direction", "metric", "layer", "pos", "stat"}
    np.testing.assert_allclose(
        bounds.sel(stat="value").transpose(*averaged.dims), averaged, rtol=0, atol=1e-12
    )
    assert (bounds.sel(stat="lo") <= bounds.sel(stat="value") + 1e-12).all()
    assert (bounds.sel(stat="value") <= bounds.sel(stat="hi") + 1e-12).all()
    assert list(bounds["clean_token"].values) == list(averaged["clean_token"].values)
    assert (
        bounds.attrs["interval"]["n_boot"] == 200
        and "per_prompt_baseline_logit_diff" not in bounds.attrs
    )


def test_unchanged_tokens_at_layer_0_have_an_interval_of_exactly_zero(swept):
    _, _, per_prompt, _ = swept
    bounds = stats.intervals(per_prompt, ci=ap.Bootstrap(n_boot=200)).sel(
        direction="denoise", metric="norm_logit_diff", layer=0
    )
    for pos in (0, 2):  # clean and corrupt tokens agree there: the patch is the corrupt run itself
        assert bounds.sel(pos=pos).values.tolist() == [0.0, 0.0, 0.0]
    assert (bounds.sel(pos=5, stat="hi") > bounds.sel(pos=5, stat="lo")).all()


def test_directions_share_their_resamples_and_seeds_repeat(swept):
    _model, _pairs, per_prompt, _ = swept
    both = stats.intervals(per_prompt, ci=ap.Bootstrap(n_boot=300, seed=4))
    alone = stats.intervals(per_prompt.sel(direction="noise"), ci=ap.Bootstrap(n_boot=300, seed=4))
    xr.testing.assert_identical(
        both.sel(direction="noise").drop_vars("direction"), alone.drop_vars("direction")
    )
    other = stats.intervals(per_prompt, ci=ap.Bootstrap(n_boot=300, seed=5))
    assert not np.array_equal(both.sel(stat="lo").values, other.sel(stat="lo").values)


def test_length_groups_are_resampled_within_each_group():
    model = tiny_model("llama")
    groups = [
        with_answers(model, tiny_pairs(batch=b, seq=s, seed=seed))[1]
        for b, s, seed in ((3, 6, 1), (2, 8, 2), (4, 7, 3))
    ]
    per_prompt = ap.sweep(model, groups, "head", positions=["END"], per_prompt=True)
    averaged = ap.sweep(model, groups, "head", positions=["END"])
    bounds = stats.intervals(per_prompt, ci=ap.Bootstrap(n_boot=200))
    np.testing.assert_allclose(
        bounds.sel(stat="value").transpose(*averaged.dims), averaged, rtol=0, atol=1e-12
    )
    assert bounds.attrs["interval"]["resampled"].endswith("within length groups")
    block = bootstrap.split(per_prompt)[0][0]
    counts = bootstrap.resample_counts(block, 500, np.random.default_rng(0))
    np.testing.assert_array_equal(
        counts[:, :3].sum(1), 3
    )  # every resample keeps 3, 2 and 4 prompts of each length
    np.testing.assert_array_equal(counts[:, 3:5].sum(1), 2)
    np.testing.assert_array_equal(counts[:, 5:].sum(1), 4)


def test_each_corruption_is_resampled_on_its_own_prompts():
    model = tiny_model("llama")
    by_corruption = {
        "late": random_pairs(model, 10, seed=1, changed=[3, 4, 5]),
        "early": random_pairs(model, 7, seed=2, changed=[1]),
    }
    per_prompt = ap.sweep_corruptions(model, by_corruption, "resid_pre", per_prompt=True)
    averaged = ap.sweep_corruptions(model, by_corruption, "resid_pre")
    bounds = stats.intervals(per_prompt, ci=ap.Bootstrap(n_boot=200))
    np.testing.assert_allclose(
        bounds.sel(stat="value").transpose(*averaged.dims), averaged, rtol=0, atol=1e-12
    )
    assert bounds.attrs["interval"]["n_prompts"] == {"late": 10, "early": 7}
    # The stacked result lost each corruption's per-prompt baselines; they are read back from its rows.
    for name, pairs in by_corruption.items():
        alone = ap.sweep(model, pairs, "resid_pre", per_prompt=True)
        block = next(b for b in bootstrap.split(per_prompt)[0] if b.label == name)
        np.testing.assert_allclose(
            block.clean, alone.attrs["per_prompt_baseline_logit_diff"]["clean"], atol=1e-9
        )
        np.testing.assert_allclose(
            block.corrupt, alone.attrs["per_prompt_baseline_logit_diff"]["corrupt"], atol=1e-9
        )


def test_95_percent_intervals_cover_a_known_ratio_of_means_about_95_percent_of_the_time():
    rng = np.random.default_rng(2026)
    covered = {"norm_logit_diff": 0, "logit_diff": 0}
    truth = {"norm_logit_diff": 0.5, "logit_diff": 2.5}
    n_sets = 400
    for i in range(n_sets):
        bounds = stats.intervals(synthetic(rng, 40), ci=ap.Bootstrap(seed=i)).isel(layer=0)
        for metric in covered:
            lo, hi = bounds.sel(metric=metric, stat="lo"), bounds.sel(metric=metric, stat="hi")
            covered[metric] += int(lo <= truth[metric] <= hi)
    for metric, count in covered.items():
        assert 0.92 <= count / n_sets <= 0.98, (metric, count / n_sets)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda r: stats.intervals(r.mean("batch")), "per_prompt=True"),
        (lambda r: stats.intervals(r, ci=95), "between 0 and 1"),
        (lambda r: stats.intervals(r, ci=ap.Bootstrap(n_boot=0)), "n_boot"),
        (lambda r: stats.intervals(r, method="bca"), "method must be one of"),
        (lambda r: stats.intervals(r.isel(batch=[0])), "at least 2"),
    ],
)
def test_bad_calls_say_what_to_do(call, message):
    with pytest.raises(ValueError, match=message):
        call(synthetic(np.random.default_rng(0), 8))

"""sweep(..., ci=): the sweep's numbers with their intervals, in one call."""

import numpy as np
import pytest

import actpatch as ap
from tiny import random_pairs, tiny_model


@pytest.fixture(scope="module")
def model_and_pairs():
    model = tiny_model("llama")
    return model, random_pairs(model, 12)


def test_the_value_is_the_sweep_without_ci_and_unchanged_tokens_are_exactly_zero(model_and_pairs):
    model, pairs = model_and_pairs
    options = dict(direction=["denoise", "noise"])
    plain = ap.sweep(model, pairs, "resid_pre", **options)
    bounds = ap.sweep(
        model, pairs, "resid_pre", ci=ap.Bootstrap(0.9, n_boot=300, seed=1), **options
    )
    assert "batch" not in bounds.dims and list(bounds["stat"].values) == ["value", "lo", "hi"]
    np.testing.assert_allclose(
        bounds.sel(stat="value").transpose(*plain.dims), plain, rtol=0, atol=1e-12
    )
    assert bounds.attrs["interval"] == {
        "ci": 0.9,
        "n_boot": 300,
        "seed": 1,
        "method": "percentile",
        "resampled": "prompts, with replacement",
        "n_prompts": 12,
    }
    at_layer_0 = bounds.sel(direction="denoise", metric="norm_logit_diff", layer=0)
    for pos in (
        0,
        2,
    ):  # random_pairs, like tiny_pairs, leaves these tokens equal: the patch is a no-op
        assert at_layer_0.sel(pos=pos).values.tolist() == [0.0, 0.0, 0.0]


def test_corruptions_get_their_own_intervals(model_and_pairs):
    model, _pairs = model_and_pairs
    by_corruption = {
        "late": random_pairs(model, 8, seed=3, changed=[3]),
        "early": random_pairs(model, 8, seed=3, changed=[1]),
    }
    bounds = ap.sweep_corruptions(
        model, by_corruption, "resid_pre", layers=[0], ci=ap.Bootstrap(n_boot=200)
    )
    assert set(bounds.dims) == {"corruption", "metric", "layer", "pos", "stat"}
    restored = bounds.sel(metric="norm_logit_diff", layer=0, stat=["lo", "hi"])
    np.testing.assert_allclose(restored.sel(corruption="late", pos=3), [1, 1], atol=1e-6)
    np.testing.assert_allclose(restored.sel(corruption="late", pos=1), [0, 0], atol=0)


@pytest.mark.parametrize(
    "options, message",
    [
        (dict(ci=0.95, per_prompt=True), "drop per_prompt=True"),
        (dict(ci=1.5), "between 0 and 1"),
        (dict(ci=lambda: ap.Bootstrap(n_boot=0)), "n_boot is a number of bootstrap resamples"),
        (dict(ci=lambda: ap.Bootstrap(seed=0.5)), "seed seeds the resamples"),
    ],
)
def test_bad_interval_options_are_refused_before_sweeping(model_and_pairs, options, message):
    model, pairs = model_and_pairs
    with pytest.raises(ValueError, match=message):
        made = {k: v() if callable(v) else v for k, v in options.items()}
        ap.sweep(model, pairs, "resid_pre", **made)

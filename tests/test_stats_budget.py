"""enough_prompts: widths shrink like 1/√n, and the count for a width matches the textbook one."""

import numpy as np
import pytest

import actpatch as ap
from actpatch import stats
from sample_results import synthetic
from tiny import random_pairs, tiny_model


def test_the_count_for_a_width_is_the_textbook_one_for_a_mean():
    rng = np.random.default_rng(1)
    result = synthetic(rng, 100, layers=2)
    result.loc[{"metric": "logit_diff"}] = rng.normal(0, 1, (2, 100)) + np.array([[0.0], [3.0]])
    budget = stats.enough_prompts(result, metric="logit_diff", width=0.1, top=1)
    # A 95 % interval of a mean is 2 × 1.96 × sd / √n wide, so width w needs (3.92 sd / w)² prompts.
    sd = float(result.sel(metric="logit_diff", layer=1).std())
    assert list(budget.sites["site"]) == [
        "1"
    ]  # the strongest effect (no site kind: cells by number)
    assert budget.needed == pytest.approx((3.92 * sd / 0.1) ** 2, rel=0.15)
    assert (
        budget.sites["slope"][0] == pytest.approx(-0.5, abs=0.1)
        and budget.sites["misfit"][0] < 0.15
    )
    assert list(budget.widths["n_prompts"]) == [12, 25, 50, 100]
    assert budget.widths["width"].is_monotonic_decreasing


def test_strongest_sites_of_a_sweep_and_named_sites():
    model = tiny_model("llama")
    per_prompt = ap.sweep(
        model, random_pairs(model, 32), "resid_pre", per_prompt=True, direction=["denoise", "noise"]
    )
    budget = stats.enough_prompts(per_prompt, width=0.1, ci=ap.Bootstrap(n_boot=500))
    values = stats.intervals(per_prompt, ci=ap.Bootstrap(n_boot=10)).sel(
        metric="norm_logit_diff", stat="value"
    )
    strongest = max(
        abs(values.sel(direction="denoise")).max(), abs(1 - values.sel(direction="noise")).max()
    )
    assert len(budget.sites) == 3 and budget.sites["effect"].abs().max() == pytest.approx(
        float(strongest)
    )
    assert budget.needed == budget.sites["needed"].max()
    one = stats.enough_prompts(
        per_prompt.sel(direction="denoise"),
        sites=["resid_pre[layer=1, pos=5]"],
        width=0.1,
        ci=ap.Bootstrap(n_boot=500),
    )
    wider = stats.enough_prompts(
        per_prompt.sel(direction="denoise"),
        sites=[ap.Site("resid_pre", 1, pos=5)],
        width=0.2,
        ci=ap.Bootstrap(n_boot=500),
    )
    assert list(one.sites["site"]) == ["resid_pre[layer=1, pos=5]"]
    assert wider.needed == pytest.approx(
        one.needed / 4, rel=0.05
    )  # half the width, four times the prompts


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda r: stats.enough_prompts(r, width=0), "width"),
        (lambda r: stats.enough_prompts(r, sizes=[4, 40]), "from 2 to the 20 swept"),
        (
            lambda r: stats.enough_prompts(r.expand_dims(corruption=["x"])),
            "one corruption at a time",
        ),
        (lambda r: stats.enough_prompts(r, top=0), "top"),
    ],
)
def test_bad_calls_say_what_to_do(call, message):
    with pytest.raises(ValueError, match=message):
        call(synthetic(np.random.default_rng(0), 20, layers=2))

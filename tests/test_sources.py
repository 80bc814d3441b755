"""Where patched values come from: ablation sources, the Gaussian-noise corruption, and the
baseline check every sweep makes first. Each is checked against plain hooks or the reference engine."""

import itertools

import numpy as np
import pytest
import torch
import xarray as xr

import actpatch as ap
from actpatch.engine import sources
from actpatch.engine.collect import BaselineError
from actpatch.noise import gaussian_noise
from tiny import tiny_model, tiny_pairs, tiny_task, with_answers

FAMILIES_FOR_SOURCES = ("llama", "gpt2", "gemma3")


def by_hand(model, pairs, values):
    """Mean logit difference of the clean run with `values` patched in (plain hooks.patch)."""
    with ap.patch(model, values, named_positions=pairs.positions):
        logits = model.last_logits(pairs.clean).double()
    rows = torch.arange(len(pairs))
    return float((logits[rows, pairs.answers] - logits[rows, pairs.wrong]).mean())


@pytest.mark.parametrize("family", FAMILIES_FOR_SOURCES)
@pytest.mark.parametrize("ablation", ["zero", "mean", "resample"])
def test_ablations_match_the_reference_engine(family, ablation):
    model, pairs = tiny_task(family, batch=4)
    for kind, options in (
        ("mlp_out", {}),
        ("head", dict(positions=["X", "END"])),
        ("resid_pre", dict(layers=[1])),
    ):
        want = ap.sweep(
            model, pairs, kind, direction="noise", ablation=ablation, engine="reference", **options
        )
        got = ap.sweep(model, pairs, kind, direction="noise", ablation=ablation, chunk=2, **options)
        xr.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
        assert (
            got.attrs["source"] == ablation and "full_patch_error" not in got.attrs["self_checks"]
        )


def test_zero_and_mean_ablation_equal_hand_written_values():
    model, pairs = tiny_task("llama", batch=4)
    site = ap.Site("mlp_out", 0)
    own = ap.capture(model, pairs.clean, [site])[site]  # (batch, pos, d_model)
    result = ap.sweep(
        model, pairs, "mlp_out", layers=[0], positions="all", direction="noise", ablation="zero"
    )
    assert result.sel(metric="logit_diff", layer=0).item() == pytest.approx(
        by_hand(model, pairs, {site: torch.zeros_like(own)}), abs=1e-5
    )
    mean = own.mean(0, keepdim=True).expand_as(own)
    result = ap.sweep(
        model, pairs, "mlp_out", layers=[0], positions="all", direction="noise", ablation="mean"
    )
    assert result.sel(metric="logit_diff", layer=0).item() == pytest.approx(
        by_hand(model, pairs, {site: mean}), abs=1e-5
    )


def test_mean_over_a_reference_set_uses_those_prompts():
    model, pairs = tiny_task("llama")
    mean_over = tiny_pairs(batch=5, seed=7)
    site = ap.Site("mlp_out", 1)
    mean = (
        ap.capture(model, mean_over.clean, [site])[site]
        .mean(0, keepdim=True)
        .expand(len(pairs), -1, -1)
    )
    result = ap.sweep(
        model,
        pairs,
        "mlp_out",
        layers=[1],
        positions="all",
        direction="noise",
        ablation="mean",
        mean_over=mean_over,
    )
    assert result.sel(metric="logit_diff", layer=1).item() == pytest.approx(
        by_hand(model, pairs, {site: mean}), abs=1e-5
    )
    batch_mean = ap.sweep(
        model, pairs, "mlp_out", layers=[1], positions="all", direction="noise", ablation="mean"
    )
    assert not np.isclose(
        result.sel(metric="logit_diff").item(), batch_mean.sel(metric="logit_diff").item()
    )


def test_resample_gives_each_prompt_another_prompts_value():
    for n in range(2, 9):
        order = sources.derangement(n, seed=0)
        assert sorted(order.tolist()) == list(range(n)) and not bool(
            (order == torch.arange(n)).any()
        )
    model, pairs = tiny_task("qwen2", batch=4)
    site = ap.Site("resid_pre", 1)
    own = ap.capture(model, pairs.clean, [site])[site]
    want = by_hand(model, pairs, {site: own[sources.derangement(4, sources.RESAMPLE_SEED)]})
    result = ap.sweep(
        model,
        pairs,
        "resid_pre",
        layers=[1],
        positions="all",
        direction="noise",
        ablation="resample",
    )
    assert result.sel(metric="logit_diff", layer=1).item() == pytest.approx(want, abs=1e-5)


def test_resample_needs_two_prompts():
    model, pairs = tiny_task("llama", batch=1)
    with pytest.raises(ValueError, match="at least 2 prompts"):
        ap.sweep(model, pairs, "mlp_out", direction="noise", ablation="resample")


@pytest.mark.parametrize("family", (*FAMILIES_FOR_SOURCES, "gpt_neox"))
def test_noise_corruption_matches_the_reference_engine_in_both_directions(family):
    model, pairs = tiny_task(family)
    noisy = gaussian_noise(model, pairs, ["X", 1])
    _, noisy = with_answers(model, noisy)  # noise changes the corrupt run, so its best answers too
    assert torch.equal(noisy.corrupt, noisy.clean) and noisy.corruption.startswith("gaussian_noise")
    cases = [
        ("resid_pre", {}),
        ("head", dict(positions=["X", "END"])),
        ("mlp_out", dict(positions="all")),
    ]
    for (kind, options), direction in itertools.product(cases, ["denoise", "noise"]):
        want = ap.sweep(model, noisy, kind, direction=direction, engine="reference", **options)
        got = ap.sweep(model, noisy, kind, direction=direction, chunk=3, **options)
        xr.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
        # The full-input self-check passes only if both runs carry the noise where they should.
        assert (
            max(
                got.attrs["self_checks"]["full_patch_error"],
                want.attrs["self_checks"]["full_patch_error"],
            )
            < 1e-4
        )


def test_noise_lands_only_at_the_chosen_positions_and_scales_with_the_input():
    model, pairs = tiny_task("llama")
    noisy = gaussian_noise(model, pairs, ["X"], scale=3.0, seed=5)
    noise = noisy.corrupt_noise
    where = noise.abs().sum(-1) > 0
    expected = torch.zeros_like(where)
    expected[torch.arange(3), pairs.positions["X"]] = True
    assert torch.equal(where, expected)
    inputs = ap.capture(model, pairs.clean, [ap.Site("resid_pre", 0)])[ap.Site("resid_pre", 0)]
    assert float(noise[where].std()) == pytest.approx(3.0 * float(inputs.std()), rel=0.35)
    # Denoising the whole first-layer input restores the clean run; no noise where there is none.
    _, noisy = with_answers(model, noisy)
    result = ap.sweep(model, noisy, "resid_pre", layers=[0])
    x_positions = set(pairs.positions["X"].tolist())
    untouched = [p for p in range(pairs.seq_len) if p not in x_positions]
    np.testing.assert_allclose(
        result.sel(metric="norm_logit_diff", pos=untouched, layer=0).values, 0.0, atol=1e-6
    )


def test_noise_attribution_reads_the_noisy_run():
    model, pairs = tiny_task("llama")
    _, noisy = with_answers(model, gaussian_noise(model, pairs, "all"))
    exact = ap.sweep(model, noisy, "resid_pre", layers=[0], positions="all")
    estimate = ap.attribute(
        model, noisy, "resid_pre", layers=[0], positions="all", method="ig", steps=16
    )
    # Patching the whole input is the clean run; integrated gradients recover it closely.
    assert exact.sel(metric="norm_logit_diff").item() == pytest.approx(1.0, abs=1e-4)
    assert estimate.sel(metric="norm_logit_diff").item() == pytest.approx(1.0, abs=0.15)


@pytest.mark.parametrize(
    "bad, message",
    [
        (dict(positions=["Y"]), "no named position 'Y'"),
        (dict(positions=[99]), "out of range"),
        (dict(positions=[]), "positions is empty"),
        (dict(positions="all", scale=0), "scale must be positive"),
    ],
)
def test_bad_noise_arguments(bad, message):
    model, pairs = tiny_model("llama"), tiny_pairs()
    with pytest.raises(ap.PairsError, match=message):
        gaussian_noise(model, pairs, **bad)


def test_a_sweep_refuses_pairs_the_model_does_not_solve():
    model, pairs = tiny_task("llama")
    swapped = type(pairs)(
        pairs.clean, pairs.corrupt, pairs.wrong, pairs.answers, positions=pairs.positions
    )
    for call in (
        lambda: ap.sweep(model, swapped, "mlp_out"),
        lambda: ap.attribute(model, swapped, "mlp_out"),
        lambda: ap.sweep(model, swapped, "mlp_out", engine="reference"),
    ):
        with pytest.raises(BaselineError, match=r"does not perform the task.*check_baseline=False"):
            call()
    result = ap.sweep(model, swapped, "mlp_out", check_baseline=False)
    assert (
        result.attrs["baseline_clean"]["logit_diff"]
        < result.attrs["baseline_corrupt"]["logit_diff"]
    )


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_the_baseline_forwards_capture_what_the_sweep_reads(direction, monkeypatch):
    """`sources.recorded` gives the baseline's logits and every patch and self-check value from its two
    forwards, bit for bit what separate captures give, and a sweep then runs no capture of its own."""
    from actpatch.engine import collect
    from actpatch.engine.plan import plan
    from actpatch.engine.spec import SweepSpec

    model, pairs = tiny_task("llama")
    noisy = gaussian_noise(
        model, pairs, scale=2.0, positions=[1], seed=0
    )  # input noise must reach the captures too
    the_plan = plan(model, noisy, SweepSpec(site="head", direction=direction, positions=["END"]))
    filled, clean_logits, corrupt_logits = sources.recorded(model, the_plan)
    base = collect.baseline(model, noisy, check=False)
    assert torch.equal(clean_logits, base.clean_logits) and torch.equal(
        corrupt_logits, base.corrupt_logits
    )
    for role, run, sites in (
        ("source", the_plan.source, [*the_plan.sites, sources.WHOLE_INPUT]),
        ("target", the_plan.target, the_plan.sites),
    ):
        fresh = sources.captured(model, run, sites)
        assert all(torch.equal(filled.captured[(role, site)], fresh[site]) for site in sites)
    assert not the_plan.captured  # the plan given is left as it was

    calls = []
    real = sources.captured
    monkeypatch.setattr(sources, "captured", lambda *args: calls.append(args) or real(*args))
    for engine in ("batched", "reference"):
        ap.sweep(
            model,
            noisy,
            "head",
            direction=direction,
            positions=["END"],
            engine=engine,
            check_baseline=False,
        )
    assert calls == []

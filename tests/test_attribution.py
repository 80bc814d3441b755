"""Attribution estimates against exact patching, where the answer is known by construction."""

import functools

import numpy as np
import pytest
import torch
import transformers as tf

import actpatch as ap
from actpatch import hooks
from actpatch.engine import verify as verify_module
from tiny import CONFIGS, tiny_pairs, tiny_task, with_answers

reference_sweep = functools.partial(ap.sweep, engine="reference")


@functools.cache
def linear_head_model(family: str) -> ap.Model:
    """A tiny float64 model whose final norm is removed, so the logit difference is linear in the
    last resid_post and in the last mlp_out: there, AtP is exact by construction."""
    torch.manual_seed(0)
    hf = (
        tf.AutoModelForCausalLM.from_config(CONFIGS[family]()).double().eval().requires_grad_(False)
    )
    model = ap.Model.from_hf(hf, name=f"tiny-linear-{family}")
    parent, _, name = model.arch.final_norm.rpartition(".")
    setattr(hf.get_submodule(parent), name, torch.nn.Identity())
    return model


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
@pytest.mark.parametrize("direction", ["denoise", "noise"])
@pytest.mark.parametrize("kind", ["resid_post", "mlp_out"])
def test_atp_is_exact_where_the_metric_is_linear(family, direction, kind):
    model, pairs = with_answers(linear_head_model(family), tiny_pairs())
    last = [model.dims.n_layers - 1]
    estimate = ap.attribute(model, pairs, kind, direction=direction, layers=last)
    exact = reference_sweep(model, pairs, kind, direction=direction, layers=last).sel(
        metric=list(estimate.metric.values)
    )
    np.testing.assert_allclose(estimate.values, exact.values, atol=1e-5)
    assert (
        np.abs(
            exact.sel(metric="logit_diff").values
            - exact.attrs["baseline_corrupt" if direction == "denoise" else "baseline_clean"][
                "logit_diff"
            ]
        ).max()
        > 1e-2
    )


@pytest.mark.parametrize("kind", ap.SITE_KINDS)
def test_integrated_gradients_with_one_step_is_atp(kind):
    model, pairs = tiny_task("qwen2")
    extra = {"neurons": [0, 9]} if kind == "neuron" else {}
    atp = ap.attribute(model, pairs, kind, **extra)
    ig = ap.attribute(model, pairs, kind, method="ig", steps=1, **extra)
    np.testing.assert_array_equal(atp.values, ig.values)
    assert atp.attrs["estimate"]["method"] == "atp" and ig.attrs["estimate"]["method"] == "ig"


@pytest.mark.parametrize("family", ["llama", "gpt_neox", "gemma3"])
def test_more_steps_move_integrated_gradients_toward_exact(family):
    """Patching all of resid_pre at layer 0 is patching the input itself, so the integrated gradient
    along the input path converges to the exact effect; the tiny models are far from linear there."""
    model, pairs = tiny_task(family)
    exact = (
        reference_sweep(model, pairs, "resid_pre", layers=[0], positions="all")
        .sel(metric="logit_diff")
        .item()
    )
    error = {
        k: abs(
            ap.attribute(
                model, pairs, "resid_pre", layers=[0], positions="all", method="ig", steps=k
            )
            .sel(metric="logit_diff")
            .item()
            - exact
        )
        for k in (1, 32)
    }
    assert error[1] > 0.05  # AtP is visibly wrong here
    assert error[32] < error[1] / 4


def test_attribution_leaves_no_hooks_and_no_gradients():
    model, pairs = tiny_task("llama")
    ap.attribute(model, pairs, "pattern", method="ig", steps=2)
    assert ap.attached_hooks(model) == 0
    assert model.hf.config._attn_implementation == "sdpa"
    assert all(p.grad is None and not p.requires_grad for p in model.hf.parameters())
    with torch.no_grad():  # the caller's grad mode is left as it was
        ap.attribute(model, pairs, "head")
        assert not torch.is_grad_enabled()


def test_an_error_in_the_backward_leaves_the_model_clean():
    model, pairs = tiny_task("llama")

    def arm(module, args, output):
        if output.requires_grad:
            output.register_hook(_explode)

    bomb = model.submodule(1, model.arch.mlp).register_forward_hook(arm)
    try:
        with pytest.raises(RuntimeError, match="boom"):
            ap.attribute(model, pairs, "head")
    finally:
        bomb.remove()
    assert ap.attached_hooks(model) == 0


def _explode(grad):
    raise RuntimeError("boom")


def test_verify_patches_the_strongest_estimates_exactly():
    model, pairs = tiny_task("llama")
    estimate = ap.attribute(model, pairs, "head", positions="each")
    report = ap.verify(model, pairs, estimate, top_k=4, sample=3)
    assert len(report.table) == 7 and report.table["in_top_k"].sum() == 4
    assert -1.0 <= report.spearman <= 1.0 and 0.0 <= report.top_k_recall <= 1.0
    exact = reference_sweep(model, pairs, "head", positions="each").sel(metric="norm_logit_diff")
    for _, row in report.table.iterrows():
        site = ap.Site.parse(row["site"])
        assert row["exact"] == pytest.approx(
            exact.sel(layer=site.layer, head=site.head, pos=site.pos).item(), abs=1e-5
        )
    strongest = np.abs(estimate.sel(metric="norm_logit_diff").values).max()
    assert np.abs(report.table.loc[report.table["in_top_k"], "estimate"]).max() == pytest.approx(
        strongest
    )


def test_verify_on_an_exact_linear_estimate_finds_no_error():
    model, pairs = with_answers(linear_head_model("llama"), tiny_pairs())
    estimate = ap.attribute(model, pairs, "resid_post", layers=[-1])
    report = ap.verify(model, pairs, estimate, top_k=3, sample=2)
    assert report.table["error"].abs().max() < 1e-5 and report.top_k_recall == 1.0


@pytest.mark.parametrize(
    "estimate, exact",
    [
        (
            [0.0, 0.0, 0.0, 1.0, 2.0],
            [0.0, 0.0, 1.0, 1.0, 2.0],
        ),  # patches that change nothing tie exactly
        ([0.3, 0.3, 0.3, 0.3, 0.9, 0.1], [0.0, 0.5, 0.5, 0.2, 0.7, 0.2]),
        ([1.0, 2.0, 3.0, 4.0], [4.0, 3.0, 2.0, 1.0]),
    ],
)
def test_spearman_gives_tied_values_their_average_rank(estimate, exact):
    got = verify_module._spearman(np.array(estimate), np.array(exact))
    scipy_stats = pytest.importorskip(
        "scipy.stats", reason="scipy checks every case; the hand computation below runs without it"
    )
    assert got == pytest.approx(scipy_stats.spearmanr(estimate, exact).statistic, abs=1e-12)


def test_spearman_of_tied_values_by_hand():
    # Ranks with ties averaged: [2, 2, 2, 4, 5] and [1.5, 1.5, 3.5, 3.5, 5]; both have mean 3, so
    # r = Σ da·db / √(Σ da² Σ db²) = 7 / √(8 · 9) ≈ 0.825. Ranking ties by position gives 1.0.
    got = verify_module._spearman(
        np.array([0.0, 0.0, 0.0, 1.0, 2.0]), np.array([0.0, 0.0, 1.0, 1.0, 2.0])
    )
    assert got == pytest.approx(7 / np.sqrt(72), abs=1e-12)
    assert np.isnan(verify_module._spearman(np.zeros(4), np.arange(4.0)))  # nothing to rank


@pytest.mark.parametrize("family", ["llama", "gpt2", "mistral"])
@pytest.mark.parametrize("kind, pos", [("k", 3), ("q", 5), ("k", "X")])
def test_atp_star_linearises_from_the_exactly_recomputed_pattern(family, kind, pos):
    """AtP* for a q/k patch is target + Σ (pattern under the real patch − pattern) · ∂metric/∂pattern."""
    model, pairs = with_answers(linear_head_model(family), tiny_pairs())
    group = model.dims.n_heads // model.dims.n_kv_heads
    head = (
        model.dims.n_kv_heads - 1 if kind == "k" else 1
    )  # the last KV group, to catch group arithmetic
    site = ap.Site(kind, 1, head=head, pos=pos)
    heads = range(head * group, (head + 1) * group) if kind == "k" else [head]
    patterns = [ap.Site("pattern", 1, head=h) for h in heads]
    with hooks.eager_attention(model):
        source = ap.capture(model, pairs.clean, [site], named_positions=pairs.positions)
        with ap.patch(model, source, named_positions=pairs.positions):
            patched = ap.capture(model, pairs.corrupt, patterns)
        inputs = model.hf.get_input_embeddings()(pairs.corrupt).detach().requires_grad_(True)
        with torch.enable_grad(), hooks.watch(model, patterns) as watched:
            logits = model.hf(inputs_embeds=inputs).logits[:, -1]
            rows = torch.arange(len(pairs))
            target = (logits[rows, pairs.answers] - logits[rows, pairs.wrong]).mean()
            target.backward()
    want = target.item() + sum(
        ((patched[s] - watched.values[s]) * watched.grads[s]).sum().item() for s in patterns
    )
    got = ap.attribute(model, pairs, kind, layers=[1], heads=[head], positions=[pos], method="atp*")
    assert got.sel(metric="logit_diff").item() == pytest.approx(
        want, abs=1e-6
    )  # float32 metric arithmetic
    assert ap.attached_hooks(model) == 0 and model.hf.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("method", ["atp", "atp*"])
def test_graddrop_of_a_last_layer_site_is_its_atp_magnitude(method):
    """Dropping the gradient through an earlier layer cannot touch a last-layer site, and dropping
    its own layer zeroes it: (L − 1)·|ĉ| + 0, divided by L − 1."""
    model, pairs = tiny_task("mistral")
    result = ap.attribute(model, pairs, "k", method=method, positions="each", graddrop=True)
    last = result.sel(layer=model.dims.n_layers - 1)
    change = np.abs(last.sel(metric="logit_diff") - result.attrs["baseline_corrupt"]["logit_diff"])
    np.testing.assert_allclose(
        last.sel(metric="abs_logit_diff_change_graddrop"), change, rtol=1e-6, atol=1e-9
    )
    first = result.sel(layer=0)
    first_change = np.abs(
        first.sel(metric="logit_diff") - result.attrs["baseline_corrupt"]["logit_diff"]
    )
    assert not np.allclose(first.sel(metric="abs_logit_diff_change_graddrop"), first_change)
    assert result.attrs["cost"]["forward_equivalents"] == 6 + model.dims.n_layers
    assert ap.attached_hooks(model) == 0


@pytest.mark.parametrize("method, kind", [("atp", "mlp_out"), ("atp*", "k"), ("ig", "resid_pre")])
def test_per_prompt_estimates_average_to_the_estimate_and_ci_keeps_its_value(method, kind):
    model, pairs = tiny_task("llama")
    options = dict(method=method, steps=3, layers=[0, 1])
    plain = ap.attribute(model, pairs, kind, **options)
    rows = ap.attribute(model, pairs, kind, per_prompt=True, **options)
    bounds = ap.attribute(model, pairs, kind, ci=ap.Bootstrap(0.9, n_boot=200), **options)
    assert rows.sizes["batch"] == len(pairs) and "per_prompt_baseline_logit_diff" in rows.attrs
    np.testing.assert_allclose(
        rows.sel(metric="logit_diff").mean("batch"), plain.sel(metric="logit_diff"), atol=1e-9
    )
    assert (
        list(bounds["stat"].values) == ["value", "lo", "hi"]
        and bounds.attrs["interval"]["n_boot"] == 200
    )
    np.testing.assert_array_equal(
        bounds.sel(stat="value").transpose(*plain.dims).values, plain.values
    )
    lo, value, hi = (bounds.sel(stat=s).values for s in ("lo", "value", "hi"))
    assert (lo <= value + 1e-12).all() and (value <= hi + 1e-12).all() and (hi > lo).any()


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_per_prompt_atp_is_each_prompts_exact_effect_where_the_metric_is_linear(direction):
    model, pairs = with_answers(linear_head_model("llama"), tiny_pairs())
    last = [model.dims.n_layers - 1]
    estimate = ap.attribute(
        model, pairs, "mlp_out", direction=direction, layers=last, per_prompt=True
    )
    exact = reference_sweep(
        model, pairs, "mlp_out", direction=direction, layers=last, per_prompt=True
    )
    exact = exact.sel(metric=list(estimate.metric.values)).transpose(*estimate.dims)
    np.testing.assert_allclose(estimate.values, exact.values, atol=1e-5)
    assert np.ptp(exact.sel(metric="logit_diff").values, axis=-1).max() > 1e-2  # prompts do differ


def test_verify_puts_an_interval_on_the_rank_correlation_without_changing_it():
    model, pairs = tiny_task("llama")
    rows = ap.attribute(model, pairs, "head", per_prompt=True)
    plain = ap.verify(model, pairs, ap.attribute(model, pairs, "head"), top_k=4, sample=4)
    checked = ap.verify(model, pairs, rows, top_k=4, sample=4, ci=ap.Bootstrap(0.9, n_boot=300))
    assert checked.spearman == pytest.approx(plain.spearman, abs=1e-12)
    assert list(checked.table["site"]) == list(plain.table["site"])
    lo, hi = checked.spearman_interval
    assert -1 <= lo <= hi <= 1 and hi - lo > 0.01
    assert (checked.table["exact_lo"] <= checked.table["exact"] + 1e-12).all()
    assert (checked.table["exact"] <= checked.table["exact_hi"] + 1e-12).all()


def test_verify_resamples_estimates_and_exact_values_together():
    # Where AtP is exact prompt by prompt, every resample ranks both sides alike: the interval is
    # [1, 1] only if both are recomputed on the same resampled prompts.
    model, pairs = with_answers(linear_head_model("llama"), tiny_pairs())
    last = [model.dims.n_layers - 1]
    rows = ap.attribute(model, pairs, "resid_post", layers=last, per_prompt=True)
    checked = ap.verify(model, pairs, rows, top_k=3, sample=3, ci=ap.Bootstrap(n_boot=200))
    assert checked.spearman_interval == pytest.approx((1.0, 1.0), abs=1e-9)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda m, p: ap.attribute(m, p, "head", ci=0.9, per_prompt=True), "drop per_prompt=True"),
        (lambda m, p: ap.attribute(m, p, "head", ci=0.9, graddrop=True), "graddrop"),
        (lambda m, p: ap.attribute(m, p, "head", ci=2.0), "between 0 and 1"),
        (lambda m, p: ap.verify(m, p, ap.attribute(m, p, "head"), ci=0.9), "per_prompt=True"),
    ],
)
def test_bad_interval_options_of_attribution_are_refused(call, message):
    model, pairs = tiny_task("llama")
    with pytest.raises(ValueError, match=message):
        call(model, pairs)

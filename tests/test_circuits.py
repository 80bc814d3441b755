"""Circuits: evaluation at its exact ends, the frontier, and the guards on models built to need them."""

import numpy as np
import pandas as pd
import pytest
import torch
import transformers as tf
import xarray as xr

import actpatch as ap
from actpatch import hooks
from actpatch.circuits import EMBED, components
from tiny import FAMILIES, random_pairs, tiny_model, tiny_pairs, tiny_task, with_answers


def score(result):
    return result.sel(metric="norm_logit_diff").item()


# --- evaluation ----------------------------------------------------------------------------------


@pytest.mark.parametrize("family", FAMILIES)
def test_the_whole_model_is_clean_and_the_empty_circuit_is_corrupt(family):
    model, pairs = tiny_task(family)
    everything = components(model)
    assert score(ap.evaluate_circuit(model, pairs, everything)) == pytest.approx(1.0, abs=1e-6)
    assert score(ap.evaluate_circuit(model, pairs, [], components=everything)) == pytest.approx(
        0.0, abs=1e-6
    )
    assert score(ap.evaluate_circuit(model, pairs, everything, direction="noise")) == pytest.approx(
        0.0, abs=1e-6
    )
    assert score(
        ap.evaluate_circuit(model, pairs, [], direction="noise", components=everything)
    ) == pytest.approx(1.0, abs=1e-6)
    assert ap.attached_hooks(model) == 0


def test_under_a_noise_corruption_the_empty_circuit_is_the_noisy_run():
    model = tiny_model("llama")
    pairs = ap.gaussian_noise(model, tiny_pairs(), "all")
    _, pairs = with_answers(model, pairs)
    everything = components(model)
    assert score(ap.evaluate_circuit(model, pairs, [], components=everything)) == pytest.approx(
        0.0, abs=1e-6
    )
    assert score(ap.evaluate_circuit(model, pairs, everything)) == pytest.approx(1.0, abs=1e-6)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_a_circuit_is_the_clean_run_with_everything_else_patched_from_the_corrupt_run(family):
    model, pairs = tiny_task(family)
    everything = components(model)
    circuit = [EMBED, ap.Site("head", 0, head=1), ap.Site("mlp_out", 1), ap.Site("head", 1, head=3)]
    rest = [c for c in everything if c not in circuit]
    corrupt = hooks.capture(model, pairs.corrupt, rest)
    with hooks.patch(model, corrupt):
        logits = model.last_logits(pairs.clean)
    base = ap.Baseline(
        model.last_logits(pairs.clean), model.last_logits(pairs.corrupt), pairs.answers, pairs.wrong
    )
    want = ap.metrics.averaged(logits, base)
    got = ap.evaluate_circuit(model, pairs, circuit, components=everything)
    np.testing.assert_allclose(
        [got.sel(metric=m).item() for m in ap.METRICS], [want[m] for m in ap.METRICS], atol=1e-6
    )
    # Noising a circuit is denoising its complement.
    noised = ap.evaluate_circuit(model, pairs, rest, direction="noise", components=everything)
    xr.testing.assert_allclose(noised.drop_attrs(), got.drop_attrs(), atol=1e-9)


ABLATED = {
    "mean": lambda v: v.mean(0, keepdim=True).expand_as(v),
    "zero": torch.zeros_like,
    "resample": lambda v: v[
        torch.tensor([2, 0, 1])
    ],  # what engine/sources.py's seeded derangement gives for 3 prompts
}


@pytest.mark.parametrize("ablation", ABLATED)
def test_other_ablations_write_what_sweeps_write(ablation):
    model, pairs = tiny_task("qwen2")
    heads = components(model, mlps=False, embed=False)
    circuit = heads[:3]
    clean = hooks.capture(model, pairs.clean, heads[3:])
    with hooks.patch(model, {s: ABLATED[ablation](v) for s, v in clean.items()}):
        logits = model.last_logits(pairs.clean)
    base = ap.Baseline(
        model.last_logits(pairs.clean), model.last_logits(pairs.corrupt), pairs.answers, pairs.wrong
    )
    got = ap.evaluate_circuit(model, pairs, circuit, ablation=ablation)
    assert score(got) == pytest.approx(
        ap.metrics.averaged(logits, base)["norm_logit_diff"], abs=1e-6
    )
    assert got.attrs["ablation"] == ablation
    assert abs(score(got) - score(ap.evaluate_circuit(model, pairs, circuit))) > 1e-3


@pytest.mark.parametrize("family", ["llama", "gpt_neox"])
def test_a_member_at_a_position_is_kept_there_and_ablated_elsewhere(family):
    model, pairs = tiny_task(family)
    # Only first-layer heads are ablated, so the second layer reads what the kept positions write.
    heads = [ap.Site("head", 0, head=h) for h in range(model.dims.n_heads)]
    head = ap.Site("head", 0, head=2)
    corrupt = hooks.capture(model, pairs.corrupt, heads)
    rest = {s: corrupt[s] for s in heads if s != head}
    # Plain: one prompt at a time, the kept index written out, every other position patched.
    per_prompt = []
    for b in range(len(pairs)):
        kept = {4, int(pairs.positions["X"][b])}
        patches = {s: v[b : b + 1] for s, v in rest.items()}
        patches.update(
            {
                ap.Site("head", 0, head=2, pos=p): corrupt[head][b : b + 1, p]
                for p in range(pairs.seq_len)
                if p not in kept
            }
        )
        with hooks.patch(model, patches):
            per_prompt.append(model.last_logits(pairs.clean[b : b + 1]))
    base = ap.Baseline(
        model.last_logits(pairs.clean), model.last_logits(pairs.corrupt), pairs.answers, pairs.wrong
    )
    want = ap.metrics.averaged(torch.cat(per_prompt), base)["logit_diff"]
    circuit = [ap.Site("head", 0, head=2, pos="X"), ap.Site("head", 0, head=2, pos=4)]
    got = ap.evaluate_circuit(model, pairs, circuit, components=heads)
    assert got.sel(metric="logit_diff").item() == pytest.approx(want, abs=1e-5)
    for other in ([head], []):  # neither the whole head nor none of it
        assert (
            abs(
                got.sel(metric="logit_diff").item()
                - ap.evaluate_circuit(model, pairs, other, components=heads)
                .sel(metric="logit_diff")
                .item()
            )
            > 1e-4
        )


# --- the frontier ----------------------------------------------------------------------------------


def test_a_ranking_reads_a_sweep_helpful_first_in_either_direction():
    model, pairs = tiny_task("llama")
    both = ap.sweep(model, pairs, "head", direction=["denoise", "noise"])
    for direction in ("denoise", "noise"):
        result = both.sel(direction=direction)
        result.attrs["direction"] = direction
        ranked = ap.circuits.ranking(result)
        values = [
            result.sel(metric="norm_logit_diff", layer=s.layer, head=s.head).item() for s in ranked
        ]
        effects = values if direction == "denoise" else [1 - v for v in values]
        assert effects == sorted(effects, reverse=True) and len(ranked) == 8
        by_size = ap.circuits.ranking(result, order="abs")
        sizes = [
            abs(e)
            for e in (
                [
                    result.sel(metric="norm_logit_diff", layer=s.layer, head=s.head).item()
                    for s in by_size
                ]
            )
        ]
        assert len(by_size) == 8 and (direction == "noise" or sizes == sorted(sizes, reverse=True))
    at_positions = ap.circuits.ranking(ap.sweep(model, pairs, "head", positions=["END", 2]))
    assert {s.pos for s in at_positions} == {"END", 2} and len(at_positions) == 16


def test_the_frontier_grows_the_circuit_one_component_at_a_time():
    model, pairs = tiny_task("gpt2")
    sweep = ap.sweep(model, pairs, "head")
    ranked = ap.circuits.ranking(sweep)
    frontier = ap.pareto_frontier(model, pairs, sweep)
    assert frontier.dims == ("metric", "size") and frontier["size"].values.tolist() == list(
        range(9)
    )
    assert frontier["component"].values.tolist() == [""] + [str(s) for s in ranked]
    for k in (0, 3, 8):
        want = ap.evaluate_circuit(
            model, pairs, ranked[:k], components=components(model, mlps=False, embed=False)
        )
        np.testing.assert_allclose(frontier.sel(size=k).values, want.values, atol=1e-9)
    # Every head intact, MLPs and embeddings untouched: the clean run.
    assert frontier.sel(metric="norm_logit_diff", size=8).item() == pytest.approx(1.0, abs=1e-6)
    values = frontier.sel(metric="norm_logit_diff").values
    for recovery in (0.5, 0.8, 0.9):
        smallest = ap.smallest_circuit(frontier, recovery)
        first = int(np.argmax(values >= recovery))
        assert (
            smallest == ranked[:first]
            and values[first] >= recovery
            and (values[:first] < recovery).all()
        )
    assert ap.smallest_circuit(frontier, 1.5) is None
    some = ap.pareto_frontier(model, pairs, ranked, sizes=[0, 2, 5])
    np.testing.assert_allclose(
        some.sel(size=[0, 2, 5]).values, frontier.sel(size=[0, 2, 5]).values, atol=1e-9
    )
    assert some["component"].values.tolist() == ["", str(ranked[1]), str(ranked[4])]


def test_a_frontier_can_rank_an_attribution_estimate():
    model, pairs = tiny_task("llama")
    estimate = ap.attribute(model, pairs, "head")
    frontier = ap.pareto_frontier(model, pairs, estimate, sizes=[0, 8])
    assert frontier.attrs["ranking"] == [str(s) for s in ap.circuits.ranking(estimate)]
    assert frontier.sel(metric="norm_logit_diff", size=8).item() == pytest.approx(1.0, abs=1e-6)


def test_a_noising_frontier_knocks_the_top_components_out():
    model, pairs = tiny_task("llama")
    frontier = ap.pareto_frontier(
        model, pairs, ap.sweep(model, pairs, "head", direction="noise"), direction="noise"
    )
    assert frontier.sel(metric="norm_logit_diff", size=0).item() == pytest.approx(1.0, abs=1e-6)
    knocked = ap.smallest_circuit(frontier, 0.5)
    assert (
        knocked is not None
        and frontier.sel(metric="norm_logit_diff", size=len(knocked)).item() <= 0.5
    )


@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_find_circuit_is_the_sweep_frontier_smallest_and_minimality_it_names(direction):
    model, pairs = tiny_task("llama")
    found = ap.find_circuit(model, pairs, "head", direction=direction, recovery=0.5, max_size=6)
    sweep = ap.sweep(model, pairs, "head", direction=direction)
    frontier = ap.pareto_frontier(model, pairs, sweep, direction=direction, sizes=range(7))
    circuit = ap.smallest_circuit(frontier, 0.5)
    assert circuit is not None and found.circuit == circuit
    xr.testing.assert_equal(found.ranked_by.drop_attrs(), sweep.drop_attrs())
    xr.testing.assert_equal(found.frontier.drop_attrs(), frontier.drop_attrs())
    table = ap.minimality(model, pairs, circuit, direction=direction)
    pd.testing.assert_frame_equal(found.minimality, table)
    assert found.passengers == [c for c in table.index if table.loc[c, "passenger"]]
    assert found.attrs["circuit"] == [str(c) for c in circuit]
    assert found.attrs["max_size"] == 6 and found.attrs["direction"] == direction
    assert set(found.attrs["self_checks"]) >= {
        "sweep: noop_patch_error",
        "pareto_frontier: noop_patch_error",
        "minimality: noop_patch_error",
    }
    line = repr(found)
    assert "\n" not in line and line.startswith(f"CircuitSearch({len(circuit)} components ")
    assert f"{table.attrs['circuit_score']:.3f}" in line and direction in line


def test_find_circuit_ranks_what_it_is_given_and_says_when_nothing_is_enough():
    model, pairs = tiny_task("llama")
    estimate = ap.attribute(model, pairs, "head")
    found = ap.find_circuit(model, pairs, ranked_by=estimate, recovery=0.5)
    assert found.ranked_by is estimate and found.attrs["ranked_by"] == "attribute"
    assert found.frontier.attrs["ranking"] == [str(s) for s in ap.circuits.ranking(estimate)]
    # One component recovering everything: on this model no single head does.
    none = ap.find_circuit(model, pairs, recovery=1.0, max_size=1, sweep={"positions": "all"})
    assert none.circuit is None and none.minimality is None and none.passengers == []
    assert none.frontier.sizes["size"] == 2
    assert repr(none).startswith("CircuitSearch(no circuit of up to 1 components recovers 1;")


def test_find_circuit_passes_intervals_to_every_step(ten_prompts):
    model, pairs = ten_prompts
    heads = [ap.Site("head", 0, head=h) for h in range(4)] + [ap.Site("head", 1, head=0)]
    bootstrap = dict(ci=ap.Bootstrap(0.8, n_boot=6, seed=3))
    found = ap.find_circuit(model, pairs, ranked_by=heads, recovery=0.3, **bootstrap)
    xr.testing.assert_equal(
        found.frontier.drop_attrs(),
        ap.pareto_frontier(model, pairs, heads, **bootstrap).drop_attrs(),
    )
    assert found.circuit is not None
    pd.testing.assert_frame_equal(
        found.minimality, ap.minimality(model, pairs, found.circuit, **bootstrap)
    )
    assert found.attrs["interval"]["n_boot"] == 6


def test_the_frontier_plot_is_a_plotly_figure():
    plotly = pytest.importorskip(
        "plotly"
    )  # an optional dependency of the report; the core does not need it
    model, pairs = tiny_task("llama")
    figure = ap.circuits.plot_frontier(
        ap.pareto_frontier(model, pairs, ap.sweep(model, pairs, "head"))
    )
    assert isinstance(figure, plotly.graph_objects.Figure) and len(figure.data[0].x) == 9


# --- a model built to have logic in it -------------------------------------------------------------
# Two heads in different layers (layer 0 head 0, layer 1 head 0) copy the same token feature
# into the answer direction. The final RMSNorm saturates, so what matters is the sign of
# (offset + what the heads write): with offset −0.5 either head alone flips it (OR); with
# offset −1.5 both are needed (AND). Every other weight is zero.

W, F, U, N = (
    0,
    1,
    2,
    3,
)  # residual directions: an anchor at the last position, the feature, the answer, an anchor elsewhere
BOS, X, Y, END, ANSWER, WRONG = range(6)
OR, AND = -0.5, -1.5
A, B = ap.Site("head", 0, head=0), ap.Site("head", 1, head=0)


def gate_model(offset, second_head=1.0, write=20.0):
    config = tf.LlamaConfig(
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        hidden_size=16,
        head_dim=8,
        intermediate_size=4,
        vocab_size=8,
        max_position_embeddings=16,
        tie_word_embeddings=False,
    )
    hf = tf.AutoModelForCausalLM.from_config(config).eval().requires_grad_(False)
    for name, parameter in hf.named_parameters():
        parameter.fill_(1.0 if "norm" in name else 0.0)
    big = 1000.0  # the non-final positions are dominated by N, so what one head writes there barely moves the next's norm
    embed = hf.model.embed_tokens.weight
    embed[[BOS, X, Y], N] = big
    embed[X, F] = big
    embed[END, W], embed[END, U] = 1.0, offset * write
    # Queries are zero, so attention is uniform: at the last of 4 positions a head's value (the
    # normalised feature, 2√2 at X's position) averages to 2√2 / 4.
    z = 2 * 2**0.5 / 4
    for layer, gain in ((0, 1.0), (1, second_head)):
        attention = hf.model.layers[layer].self_attn
        attention.v_proj.weight[0, F] = 1.0
        attention.o_proj.weight[U, 0] = gain * write / z
    hf.lm_head.weight[ANSWER, U], hf.lm_head.weight[WRONG, U] = 1.0, -1.0
    return ap.Model.from_hf(hf, name=f"gate{offset}")


def gate_pairs(n=2):
    clean, corrupt = torch.tensor([[BOS, X, BOS, END]] * n), torch.tensor([[BOS, Y, BOS, END]] * n)
    return ap.PromptPairs(clean, corrupt, torch.full((n,), ANSWER), torch.full((n,), WRONG))


@pytest.mark.parametrize(
    "offset, second_head, want",
    [
        (OR, 1.0, {A: "sufficient only (OR-like)", B: "sufficient only (OR-like)"}),
        (AND, 1.0, {A: "necessary only (AND-like)", B: "necessary only (AND-like)"}),
        (OR, 0.0, {A: "necessary and sufficient", B: "neither"}),
    ],
)
def test_denoising_and_noising_read_or_and_and(offset, second_head, want):
    model, pairs = gate_model(offset, second_head), gate_pairs()
    table = ap.label_directions(ap.sweep(model, pairs, "head", direction=["denoise", "noise"]))
    assert {s: table.loc[str(s), "label"] for s in want} == want
    assert (table.drop(index=[str(A), str(B)])["label"] == "neither").all()
    assert table.attrs["sufficient"] == 0.1 and table.attrs["necessary"] == 0.1
    strict = ap.label_directions(
        ap.sweep(model, pairs, "head", direction=["denoise", "noise"]),
        sufficient=1.01,
        necessary=1.01,
    )
    assert (strict["label"] == "neither").all()


@pytest.mark.parametrize("effect", ["total", "direct"])
def test_backup_finds_the_head_that_takes_over(effect):
    model, pairs = gate_model(OR), gate_pairs()
    table = ap.backup(model, pairs, A, effect=effect)
    assert table.index[0] == str(B) and table["compensates"].tolist() == [True, False, False, False]
    assert (
        table.loc[str(B), "before"] == pytest.approx(0.0, abs=0.01)
        and table.loc[str(B), "after"] > 0.95
    )
    assert table.attrs["ablated_effect"] == pytest.approx(
        0.0, abs=0.01
    )  # noising A alone hides its role
    anded = ap.backup(gate_model(AND), pairs, A, effect=effect)
    assert not anded["compensates"].any() and anded.loc[str(B), "growth"] < -0.9


@pytest.mark.parametrize("family", FAMILIES)
def test_resumed_backup_runs_match_full_forwards(family):
    model, pairs = tiny_task(family)
    cases = [
        (ap.Site("head", 0, head=1), None),
        (ap.Site("mlp_out", 0), None),
        (
            ap.Site("head", 1, head=0, pos="END"),
            [ap.Site("head", 0, head=2), ap.Site("mlp_out", 1), ap.Site("head", 1, head=3, pos=4)],
        ),
    ]
    for component, candidates in cases:
        fast = ap.backup(model, pairs, component, candidates=candidates)
        plain = ap.backup(model, pairs, component, candidates=candidates, resume=False)
        pd.testing.assert_frame_equal(fast, plain, atol=1e-5, rtol=1e-5)
        assert (fast[["before", "after"]].abs() > 1e-3).any().all(), (
            "no candidate moved: a vacuous comparison"
        )
    assert ap.attached_hooks(model) == 0


def test_the_backup_report_covers_the_top_components():
    model, pairs = gate_model(OR), gate_pairs()
    report = ap.backup_report(model, pairs, ap.sweep(model, pairs, "head"), top=2)
    assert report.attrs["ablated"] == [str(A), str(B)]  # A before B: ties keep layer order
    assert report[["ablated", "component"]].values.tolist() == [
        [str(A), str(B)]
    ]  # nothing comes after B
    direct = ap.backup(model, pairs, A, candidates=[B, ap.Site("head", 1, head=1)], effect="direct")
    assert direct.index.tolist() == [str(B), "head[layer=1, head=1]"]


def test_minimality_flags_the_passengers():
    model, pairs = gate_model(OR, second_head=0.0), gate_pairs()
    circuit = [A, B, ap.Site("head", 1, head=1)]
    table = ap.minimality(model, pairs, circuit)
    assert table["passenger"].tolist() == [False, True, True]
    assert table.loc[str(A), "drop"] > 0.95 and table.attrs["circuit_score"] == pytest.approx(
        1.0, abs=1e-6
    )
    for member in circuit:
        rest = [m for m in circuit if m != member]
        assert table.loc[str(member), "without"] == pytest.approx(
            score(
                ap.evaluate_circuit(
                    model, pairs, rest, components=components(model, mlps=False, embed=False)
                )
            )
        )
    # Redundant members are each a passenger alone: removing one at a time cannot see an OR.
    redundant = ap.minimality(gate_model(OR), pairs, [A, B])
    assert redundant["passenger"].all()
    assert not ap.minimality(gate_model(AND), pairs, [A, B])["passenger"].any()


# --- sensitivity to the corruption --------------------------------------------------------------


def test_components_that_depend_on_the_corruption_are_listed():
    model = gate_model(OR, second_head=0.0)
    feature = gate_pairs()
    # A corruption that leaves the feature in place and moves the answer another way (a final
    # token whose offset no head can overcome): head A cannot matter under it.
    other_end = 7
    (
        model.hf.model.embed_tokens.weight[other_end, W],
        model.hf.model.embed_tokens.weight[other_end, U],
    ) = 1.0, 3 * OR * 20.0
    elsewhere = ap.PromptPairs(
        feature.clean, torch.tensor([[BOS, X, BOS, other_end]] * 2), feature.answers, feature.wrong
    )
    result = ap.sweep_corruptions(model, {"feature": feature, "elsewhere": elsewhere}, "head")
    report = ap.sensitivity_report(result)
    assert report.index.tolist() == [str(A)]
    assert report.loc[str(A), "largest_under"] == "feature" and report.loc[str(A), "spread"] > 0.9
    assert report.attrs["corruptions"] == ["feature", "elsewhere"]
    assert ap.sensitivity_report(result, threshold=2.0).empty


def test_an_error_inside_a_circuit_run_leaves_no_hooks(monkeypatch):
    model, pairs = tiny_task("mistral")
    everything = components(model)
    real = hooks.last_logits
    calls = []

    def fail_on_the_patched_run(model, run):
        calls.append(1)
        if ap.attached_hooks(model):
            raise RuntimeError("boom")
        return real(model, run)

    monkeypatch.setattr(hooks, "last_logits", fail_on_the_patched_run)
    with pytest.raises(RuntimeError, match="boom"):
        ap.evaluate_circuit(model, pairs, everything[:5], components=everything)
    assert calls and ap.attached_hooks(model) == 0


# --- the real model ---------------------------------------------------------------------------------


@pytest.mark.smollm
def test_the_core_of_the_ioi_circuit_example_on_smollm(smollm):
    """The example's steps on a short list of heads (the strongest of its head sweep)."""
    pairs = ap.ioi_pairs(smollm, n=4)
    heads = components(smollm, mlps=False, embed=False)
    top = [ap.Site("head", 23, head=3), ap.Site("head", 23, head=2), ap.Site("head", 29, head=1)]
    frontier = ap.pareto_frontier(smollm, pairs, top, components=heads, sizes=[0, 1, 3])
    curve = frontier.sel(metric="norm_logit_diff")
    # The final token is " to" in both prompts and only heads move information between positions,
    # so with every head at its corrupt value the clean prompt's run is the corrupt run, exactly.
    assert curve.sel(size=0).item() == pytest.approx(0.0, abs=1e-6)
    assert curve.sel(size=1).item() > 0.3  # one head carries a large share on its own
    assert score(ap.evaluate_circuit(smollm, pairs, heads)) == pytest.approx(1.0, abs=1e-6)
    table = ap.minimality(smollm, pairs, top, components=heads)
    assert table.loc[str(top[0]), "drop"] > 0.3 and not table.loc[str(top[0]), "passenger"]
    report = ap.backup(
        smollm,
        pairs,
        top[0],
        candidates=[ap.Site("head", 29, head=h) for h in (0, 1)] + [ap.Site("mlp_out", 29)],
    )
    assert report.attrs["ablated_effect"] > 0.3 and len(report) == 3
    assert ap.attached_hooks(smollm) == 0


def test_sensitivity_report_reads_any_site_kind():
    model, pairs = tiny_task("llama")
    _, other = with_answers(model, tiny_pairs(seed=5))
    other = ap.PromptPairs(
        pairs.clean, other.corrupt, pairs.answers, pairs.wrong, positions=pairs.positions
    )
    result = ap.sweep_corruptions(
        model,
        {"one": pairs, "other": other},
        "resid_pre",
        positions=["X", "END"],
        check_baseline=False,
    )
    report = ap.sensitivity_report(result, threshold=0.0)
    assert len(report) == 2 * 2 and set(report.index) == {
        f"resid_pre[layer={l}, pos={p}]" for l in (0, 1) for p in ("X", "END")
    }
    flat = result.sel(metric="norm_logit_diff", layer=1, pos="X")
    assert report.loc["resid_pre[layer=1, pos=X]", "spread"] == pytest.approx(
        float(abs(flat.sel(corruption="one") - flat.sel(corruption="other")))
    )


# --- intervals over prompts ---------------------------------------------------------------------


def _resampled_pairs(pairs, n_boot, seed=0):
    """The prompt sets a bootstrap of `pairs` draws (the resamples `bootstrap.replicates` uses)."""
    from actpatch.stats import bootstrap

    n = len(pairs)
    block = bootstrap.Block(None, np.zeros((n, 1, 1)), np.zeros(n), np.zeros(n), (n,))
    counts = bootstrap.resample_counts(block, n_boot, bootstrap.rngs(seed, 1)[0])
    return [pairs[np.repeat(np.arange(n), row.astype(int)).tolist()] for row in counts]


def _percentile(values, ci):
    return np.quantile(np.asarray(values), [(1 - ci) / 2, (1 + ci) / 2], axis=0)


@pytest.fixture(scope="module")
def ten_prompts():
    model = tiny_model("llama")
    return model, random_pairs(model, 10)


def test_circuit_intervals_are_the_same_analysis_on_resampled_prompts(ten_prompts):
    # A resample is a weighting of the per-prompt rows: the analysis rerun on the resampled prompts
    # (their own baselines, a ratio of means) must give the same numbers, with no extra forward.
    model, pairs = ten_prompts
    heads = [ap.Site("head", 0, head=h) for h in range(4)] + [ap.Site("head", 1, head=0)]
    n_boot, ci = 6, 0.8
    resampled = _resampled_pairs(pairs, n_boot, seed=3)

    plain = ap.evaluate_circuit(model, pairs, heads[:2])
    bounds = ap.evaluate_circuit(
        model, pairs, heads[:2], ci=ap.Bootstrap(ci, n_boot=n_boot, seed=3)
    )
    np.testing.assert_array_equal(bounds.sel(stat="value").values, plain.values)
    want = _percentile([ap.evaluate_circuit(model, p, heads[:2]).values for p in resampled], ci)
    np.testing.assert_allclose(
        bounds.sel(stat=["lo", "hi"]).transpose("stat", "metric").values, want, atol=1e-9
    )

    frontier = ap.pareto_frontier(model, pairs, heads, ci=ap.Bootstrap(ci, n_boot=n_boot, seed=3))
    xr.testing.assert_equal(
        frontier.sel(stat="value", drop=True).drop_attrs(),
        ap.pareto_frontier(model, pairs, heads).drop_attrs(),
    )
    want = _percentile(
        [
            ap.pareto_frontier(model, p, heads).sel(metric="norm_logit_diff").values
            for p in resampled
        ],
        ci,
    )
    np.testing.assert_allclose(
        frontier.sel(metric="norm_logit_diff", stat=["lo", "hi"]).transpose("stat", "size"),
        want,
        atol=1e-9,
    )
    assert frontier.attrs["interval"]["n_boot"] == n_boot

    table = ap.minimality(model, pairs, heads[:3], ci=ap.Bootstrap(ci, n_boot=n_boot, seed=3))
    pd.testing.assert_frame_equal(
        table[["without", "drop", "passenger"]], ap.minimality(model, pairs, heads[:3])
    )
    want = _percentile([ap.minimality(model, p, heads[:3])["drop"].values for p in resampled], ci)
    np.testing.assert_allclose(table[["drop_lo", "drop_hi"]].values.T, want, atol=1e-9)
    assert (table["drop_excludes_0"] == ((table["drop_lo"] > 0) | (table["drop_hi"] < 0))).all()


def test_backup_growth_intervals_are_the_same_analysis_on_resampled_prompts(ten_prompts):
    model, pairs = ten_prompts
    component, candidates = (
        ap.Site("head", 0, head=1),
        [ap.Site("head", 1, head=h) for h in range(4)] + [ap.Site("mlp_out", 1)],
    )
    n_boot, ci = 6, 0.8
    table = ap.backup(
        model, pairs, component, candidates=candidates, ci=ap.Bootstrap(ci, n_boot=n_boot)
    )
    plain = ap.backup(model, pairs, component, candidates=candidates)
    pd.testing.assert_frame_equal(table[plain.columns], plain)
    growths = [
        ap.backup(model, p, component, candidates=candidates)["growth"].reindex(table.index).values
        for p in _resampled_pairs(pairs, n_boot, seed=0)
    ]
    np.testing.assert_allclose(
        table[["growth_lo", "growth_hi"]].values.T, _percentile(growths, ci), atol=1e-6
    )
    assert (table["growth_hi"] > table["growth_lo"]).any()


def test_a_frontier_band_is_drawn_and_read_at_its_value(ten_prompts):
    model, pairs = ten_prompts
    heads = [ap.Site("head", 0, head=h) for h in range(4)]
    frontier = ap.pareto_frontier(model, pairs, heads, ci=ap.Bootstrap(0.9, n_boot=200))
    plain = ap.pareto_frontier(model, pairs, heads)
    for recovery in (0.1, 0.5, 0.9):
        assert ap.smallest_circuit(frontier, recovery) == ap.smallest_circuit(plain, recovery)
    surely = ap.circuits.reached_surely(frontier, 0.5)
    lo = frontier.sel(metric="norm_logit_diff", stat="lo")
    assert (surely.values == (lo.values >= 0.5)).all()
    figure = ap.circuits.plot_frontier(frontier)
    assert [trace.fill for trace in figure.data] == ["toself", None]  # the band, then the line
    assert list(figure.data[1].y) == pytest.approx(
        frontier.sel(metric="norm_logit_diff", stat="value").values.tolist()
    )
    with pytest.raises(ValueError, match=r"ci=0.95"):
        ap.circuits.reached_surely(plain)


def test_direction_labels_say_whether_other_prompts_would_agree(ten_prompts):
    model, pairs = ten_prompts
    options = dict(direction=["denoise", "noise"], layers=[0])
    plain = ap.label_directions(ap.sweep(model, pairs, "head", **options))
    bounded = ap.label_directions(
        ap.sweep(model, pairs, "head", ci=ap.Bootstrap(n_boot=300), **options)
    )
    from_rows = ap.label_directions(ap.sweep(model, pairs, "head", per_prompt=True, **options))
    pd.testing.assert_frame_equal(bounded[plain.columns], plain, atol=1e-12)
    pd.testing.assert_frame_equal(from_rows[plain.columns], plain, atol=1e-12)
    for name in ("sufficiency", "necessity"):
        assert (bounded[f"{name}_lo"] <= bounded[name] + 1e-12).all() and (
            bounded[name] <= bounded[f"{name}_hi"] + 1e-12
        ).all()
    clear = lambda n, t: (bounded[f"{n}_lo"] >= t) | (bounded[f"{n}_hi"] < t)
    assert (bounded["settled"] == (clear("sufficiency", 0.1) & clear("necessity", 0.1))).all()
    assert bounded.attrs["interval"]["n_boot"] == 300


HEADS = [ap.Site("head", 0, head=1), ap.Site("head", 1, head=0), ap.Site("head", 1, head=2)]


@pytest.mark.parametrize(
    "analysis",
    [
        lambda model, pairs, **kw: ap.evaluate_circuit(model, pairs, HEADS[:1], **kw),
        lambda model, pairs, **kw: ap.pareto_frontier(model, pairs, HEADS, sizes=[1], **kw),
        lambda model, pairs, **kw: ap.minimality(model, pairs, HEADS, **kw),
        lambda model, pairs, **kw: ap.backup(model, pairs, HEADS[0], candidates=HEADS[1:], **kw),
    ],
    ids=["evaluate_circuit", "pareto_frontier", "minimality", "backup"],
)
def test_circuits_take_check_baseline_as_sweeps_do(analysis):
    model, pairs = tiny_task("llama")
    flipped = ap.PromptPairs(
        pairs.clean, pairs.corrupt, pairs.wrong, pairs.answers
    )  # answers the wrong way round: the clean run loses
    with pytest.raises(ap.BaselineError, match=r"does not perform the task.*check_baseline=False"):
        analysis(model, flipped)
    # Turned off, it runs; swapping the answers negates every logit difference and keeps its share.
    unchecked, solved = analysis(model, flipped, check_baseline=False), analysis(model, pairs)
    if isinstance(solved, pd.DataFrame):
        column = "growth" if "growth" in solved else "drop"
        np.testing.assert_allclose(unchecked[column], solved[column], atol=1e-9)
        assert unchecked.attrs["baseline_clean"]["logit_diff"] == pytest.approx(
            -solved.attrs["baseline_clean"]["logit_diff"]
        )
    else:
        np.testing.assert_allclose(
            unchecked.sel(metric="logit_diff"), -solved.sel(metric="logit_diff"), atol=1e-9
        )
        np.testing.assert_allclose(
            unchecked.sel(metric="norm_logit_diff"), solved.sel(metric="norm_logit_diff"), atol=1e-9
        )

"""circuit_stability: the full-data circuit is the one circuits finds, and resamples of identical
prompts find it every time."""

import pytest

import actpatch as ap
from actpatch import stats
from tiny import random_pairs, tiny_model


def test_the_full_data_circuit_is_the_circuits_own_and_inclusions_are_shares():
    model = tiny_model("llama")
    pairs = random_pairs(model, 16)
    table = stats.circuit_stability(
        model, pairs, ap.sweep(model, pairs, "head", per_prompt=True), resamples=6
    )
    found = ap.smallest_circuit(
        ap.pareto_frontier(model, pairs, ap.sweep(model, pairs, "head")), 0.8
    )
    assert table.attrs["circuit"] == sorted(str(s) for s in found)
    assert set(table.loc[table["in_circuit"], "component"]) == set(table.attrs["circuit"])
    assert table["inclusion"].between(0, 1).all() and table["inclusion"].is_monotonic_decreasing
    assert (
        (table["inclusion"] * 6).round(9).eq((table["inclusion"] * 6).round()).all()
    )  # counts out of 6 resamples
    assert 0 < table.attrs["mean_jaccard"] <= 1 and table.attrs["direction"] == "denoise"


def test_resamples_of_identical_prompts_find_the_same_circuit_every_time():
    model = tiny_model("llama")
    pairs = random_pairs(model, 1)[[0] * 6]
    table = stats.circuit_stability(
        model, pairs, ap.sweep(model, pairs, "head", per_prompt=True), resamples=4
    )
    assert table.attrs["mean_jaccard"] == 1.0 and table.attrs["reached"] == 1.0
    assert table["inclusion"].eq(1.0).all() and table["in_circuit"].all()


def test_a_sweep_of_other_prompts_is_refused():
    model = tiny_model("llama")
    rows = ap.sweep(model, random_pairs(model, 8), "head", per_prompt=True)
    with pytest.raises(ValueError, match="the sweep holds 8 prompts"):
        stats.circuit_stability(model, random_pairs(model, 6), rows)


def test_other_prompt_sets_are_counted_beside_the_resamples():
    model = tiny_model("llama")
    pairs = random_pairs(model, 8)
    rows = ap.sweep(model, pairs, "head", per_prompt=True)
    other = random_pairs(model, 8, seed=5)
    table = stats.circuit_stability(
        model,
        pairs,
        rows,
        resamples=3,
        others=[
            (pairs, ap.sweep(model, pairs, "head")),
            (other, ap.sweep(model, other, "head", per_prompt=True)),
        ],
    )
    assert table.attrs["n_others"] == 2 and 0 <= table.attrs["mean_jaccard_others"] <= 1
    # the first other set is the full data itself: its circuit is the full-data circuit
    assert (table.loc[table["in_circuit"], "inclusion_others"] >= 0.5).all()
    assert table["inclusion_others"].between(0, 1).all()

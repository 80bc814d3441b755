"""Edge-circuit stability: re-found on resampled prompts and on other prompt sets."""

import numpy as np
import pytest

from actpatch.graph import edge_scores, edge_stability, top_edges
from tiny import tiny_pairs, tiny_task, with_answers


def test_edge_stability_counts_the_resampled_and_the_other_circuits():
    model, pairs = tiny_task("qwen2", batch=4)
    _, others = with_answers(model, tiny_pairs(batch=4, seed=7))
    table = edge_stability(
        model,
        pairs,
        method="eap",
        percent=20,
        resamples=4,
        seed=1,
        others=[others, pairs],
        check_baseline=False,
        progress=False,
    )
    scores = edge_scores(model, pairs, "eap", check_baseline=False)
    full = set(scores.graph.names(top_edges(scores, percent=20)))
    assert (
        full
        and set(table.loc[table.in_circuit, "edge"]) == full
        and table.attrs["n_edges"] == len(full)
    )
    assert table["inclusion"].between(0, 1).all() and 0 <= table.attrs["mean_jaccard"] <= 1
    # the second other prompt set is `pairs` itself: every full-data edge is in at least half the others
    assert (table.loc[table.in_circuit, "inclusion_others"] >= 0.5).all()
    assert table.attrs["mean_jaccard_others"] >= 0.5


def test_one_prompt_repeated_gives_the_same_circuit_on_every_resample():
    model, pairs = tiny_task("llama")
    same = pairs[[0, 0, 0]]
    table = edge_stability(
        model, same, percent=10, resamples=3, check_baseline=False, progress=False
    )
    assert table.attrs["mean_jaccard"] == 1.0
    np.testing.assert_array_equal(table.loc[table.in_circuit, "inclusion"], 1.0)
    assert np.isnan(table.attrs["mean_jaccard_others"])


def test_edge_stability_refuses_a_bad_number_of_resamples():
    model, pairs = tiny_task("llama")
    with pytest.raises(ValueError, match="resamples must be a positive number"):
        edge_stability(model, pairs, resamples=0)

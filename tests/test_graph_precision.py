"""Edge circuits in bfloat16: the rule's identities and the float32 results, within the bound the
sweeps' precision tests use (tests/test_precision.py). Measured on these tiny models: the empty
circuit differs from the corrupt run by at most 1.7e-3 in the normalised logit difference, a
faithfulness curve of the same circuits by at most 4.6e-3, and EAP scores rank-correlate with
float32's at ≥ 0.9988."""

import pytest
import torch

from actpatch import hooks, metrics
from actpatch.graph import EdgeRuns, edge_scores, faithfulness_curve
from actpatch.graph.verify import spearman
from tiny import FAMILIES, tiny_model, tiny_task

BOUND = 3e-2  # bfloat16, as for sweeps


@pytest.mark.parametrize("family", FAMILIES)
def test_edge_circuits_in_bfloat16_stay_within_the_bound_of_float32(family):
    exact, pairs = tiny_task(family)
    half = tiny_model(family, torch.bfloat16)
    runs = EdgeRuns.prepare(half, pairs, check_baseline=False)
    g = runs.graph
    full, empty = (
        metrics.averaged(l, runs.base)["norm_logit_diff"]
        for l in runs.logits(torch.stack([g.full(), g.empty()]))
    )
    assert (
        abs(full - 1) <= BOUND and abs(empty) <= BOUND
    )  # every edge: the clean run; none: the corrupt run
    scores = edge_scores(exact, pairs, "eap", check_baseline=False)
    assert (
        spearman(
            scores.scores[g.exists],
            edge_scores(half, pairs, "eap", check_baseline=False).scores[g.exists],
        )
        >= 0.99
    )
    curves = [
        faithfulness_curve(m, pairs, scores, check_baseline=False)
        .sel(metric="norm_logit_diff")
        .values
        for m in (exact, half)
    ]
    assert abs(curves[0] - curves[1]).max() <= BOUND
    assert (
        curves[0].max() - curves[0].min() > 10 * BOUND
    )  # the curve spreads: a misplaced patch would show
    assert hooks.attached_hooks(half) == 0

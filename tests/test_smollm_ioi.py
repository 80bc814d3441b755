"""End to end on the real SmolLM2-135M-Instruct: IOI behaves, and the resid_pre sweep shows where.

The clean−corrupt story (Wang et al. 2022): name information sits at the name positions in early
layers and is moved to the final position in late layers."""

import numpy as np
import pytest

import actpatch as ap

pytestmark = pytest.mark.smollm
EARLY, LATE = [0, 1, 2], [27, 28, 29]


@pytest.fixture(scope="module")
def ioi(smollm):
    return ap.ioi_pairs(smollm, n=4, seed=0)


@pytest.fixture(scope="module")
def resid_pre(smollm, ioi):
    return ap.sweep(smollm, ioi, "resid_pre", layers=EARLY + LATE)


def test_smollm_prefers_the_indirect_object_and_the_corruption_removes_it(resid_pre):
    clean, corrupt = resid_pre.attrs["baseline_clean"], resid_pre.attrs["baseline_corrupt"]
    assert clean["logit_diff"] > 2.0 and clean["accuracy"] == 1.0
    assert corrupt["logit_diff"] < clean["logit_diff"] - 2.0


def test_layer_0_is_exactly_zero_where_clean_and_corrupt_tokens_agree(resid_pre, ioi):
    same = (ioi.clean == ioi.corrupt).all(0).numpy()
    assert same.any() and not same.all()
    layer0 = resid_pre.sel(metric="norm_logit_diff", layer=0).values
    assert (layer0[same] == 0.0).all()


def test_early_layers_carry_it_at_the_names_and_late_layers_at_the_end(resid_pre, ioi):
    effect = resid_pre.sel(metric="norm_logit_diff")
    names = {int(ioi.positions["IO"][0]), int(ioi.positions["S1"][0])}
    end = int(ioi.positions["END"][0])
    for layer in EARLY:
        strongest = np.argsort(-np.abs(effect.sel(layer=layer).values))[:2]
        assert set(strongest.tolist()) == names, f"layer {layer}"
    for layer in LATE:
        assert int(np.argmax(effect.sel(layer=layer).values)) == end
        assert effect.sel(layer=layer, pos=end).item() == pytest.approx(1.0, abs=0.15)


def test_last_resid_post_at_the_end_is_exactly_the_clean_run(smollm, ioi):
    result = ap.sweep(smollm, ioi, "resid_post", layers=[-1], positions=["END"])
    assert result.sel(metric="norm_logit_diff").item() == pytest.approx(1.0, abs=1e-6)
    assert ap.attached_hooks(smollm) == 0


def test_the_corruption_decides_what_is_traced(smollm):
    """All names replaced: early layers carry the answer at IO (and S1). Only S2 replaced: at S2, not at IO."""
    by_corruption = {c: ap.tasks.ioi(smollm, n=8, corruption=c, seed=5) for c in ("abc", "s2")}
    result = ap.sweep_corruptions(
        smollm, by_corruption, "resid_pre", layers=EARLY, positions=["S1", "IO", "S2", "END"]
    )
    assert result.dims[:2] == ("corruption", "metric") and list(result.corruption.values) == [
        "abc",
        "s2",
    ]
    early = np.abs(result.sel(metric="norm_logit_diff")).mean("layer")
    assert early.sel(corruption="abc", pos="IO") > 0.3
    assert early.sel(corruption="s2", pos="S2") > 0.3
    assert early.sel(corruption="s2", pos="IO") < 0.05

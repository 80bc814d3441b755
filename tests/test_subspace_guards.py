"""DAS finds a planted variable and passes its guards; the guards flag a planted illusion."""

import math

import numpy as np
import pytest
import torch

import actpatch as ap
from actpatch import PairsError
from actpatch.bases.subspace import BasisError
from actpatch.subspace import readout
from actpatch.subspace.das import Training, das
from actpatch.subspace.guards import Guards, flags_of, measure
from actpatch.subspace.patching import interchange
from actpatch.subspace.planted import planted
from tiny import tiny_model, tiny_task

FAST = {
    "training": Training(steps=60, lr=0.1),
    "guards": Guards(n_random=10),
    "ci": ap.Bootstrap(n_boot=200),
}


@pytest.fixture(scope="module")
def genuine():
    return planted("genuine")


@pytest.fixture(scope="module")
def illusion():
    return planted("illusion")


def test_das_recovers_the_planted_direction_and_passes_every_guard(genuine, tmp_path):
    result = das(genuine.model, genuine.pairs, genuine.site, rank=1, **FAST)
    assert abs(float(result.subspace.U[:, 0] @ genuine.direction)) >= 0.95
    assert result.passed, result.flags
    table = result.table.sel(stat="value", metric="iia")
    assert result.iia == 1 and float(table.sel(control="full_component")) == 1
    assert (
        float(table.sel(control="row_space")) == 1 and float(table.sel(control="null_space")) == 0
    )
    assert (
        float(table.sel(control="random_model")) < 0.5
        and float(table.sel(control="unpatched")) == 0
    )
    assert result.random_subspaces.shape == (10, 2)
    # Neuron 0 is 3 after A and 1 after B: every held-out pair moves 2 along the learned direction.
    moved = result.projection.sel(run="source") - result.projection.sel(run="target")
    assert moved.shape == (len(result.test), 1) and float(abs(abs(moved) - 2).max()) < 0.1
    attrs = result.table.attrs
    assert attrs["analysis"] == "das" and attrs["rank"] == 1 and attrs["row_rank"] == 1
    assert attrs["n_train"] + attrs["n_test"] == len(genuine.pairs) and attrs["flags"] == []
    assert set(result.train).isdisjoint(result.test)
    loaded = ap.load(ap.save(result.table, tmp_path / "das.nc"))
    assert loaded.attrs["readout"] == "the MLP's down projection"


def test_guards_flag_the_mlp_in_the_middle_illusion(illusion):
    result = das(illusion.model, illusion.pairs, illusion.site, rank=1, **FAST)
    names = {flag.split(":")[0] for flag in result.flags}
    assert {"exceeds_component", "dormant_pathway"} <= names
    assert result.iia == 1  # the illusion works: the search alone would report success
    table = result.table.sel(stat="value", metric="iia")
    assert (
        float(table.sel(control="full_component")) == 0
        and float(table.sel(control="row_space")) == 0
    )


@pytest.mark.parametrize(
    "kind, flagged", [("genuine", set()), ("illusion", {"exceeds_component", "dormant_pathway"})]
)
def test_guards_judge_a_fixed_direction(kind, flagged):
    """The guards alone, on the planted direction itself: no learning involved."""
    case = planted(kind)
    run = interchange(case.model, case.pairs, case.site)
    U = case.direction[:, None]
    controls = measure(case.model, run, U, n_random=10, seed=0)
    assert (controls.row_rank, controls.null_rank) == ((1, 0) if kind == "genuine" else (1, 1))
    mean = {
        name: {"iia": float(rows["accuracy"].mean()), "norm_logit_diff": 0.0}
        for name, rows in controls.rows.items()
    }
    mean["subspace"] = {
        "iia": float(run.per_prompt(case.model, run.subspace_value(U))["accuracy"].mean()),
        "norm_logit_diff": 0.0,
    }
    assert {flag.split(":")[0] for flag in flags_of(mean, controls, margin=0.1)} == flagged


def test_subspace_gradient_flows_through_the_patch():
    """DAS trains through hooks.patch: the gradient in U matches a finite difference."""
    model, pairs = tiny_task("llama")
    run = interchange(model, pairs, "resid_pre[layer=1, pos=END]")
    U = torch.linalg.qr(torch.randn(32, 2, generator=torch.Generator().manual_seed(0)))[0].double()
    U.requires_grad_(True)

    def score(matrix):
        return run.logits(model, run.subspace_value(matrix))[:, 5].sum()

    with torch.enable_grad():
        score(U).backward()
    step = torch.zeros_like(U)
    step[3, 1] = 1e-2
    with torch.no_grad():
        numeric = (score(U + step) - score(U - step)) / 2e-2
    assert float(U.grad[3, 1]) == pytest.approx(float(numeric), rel=1e-2, abs=1e-3)


def test_das_is_seeded_and_runs_on_a_mid_residual():
    model, pairs = tiny_task("gpt2", batch=6)
    pairs = pairs[[0, 1, 2, 0, 1, 2]]  # tiny_pairs makes at most 6 named positions; repeat them
    once = das(
        model,
        pairs,
        "resid_pre[layer=1, pos=END]",
        rank=2,
        training=Training(steps=5),
        guards=Guards(n_random=3, random_model=False),
        ci=ap.Bootstrap(n_boot=50),
    )
    again = das(
        model,
        pairs,
        "resid_pre[layer=1, pos=END]",
        rank=2,
        training=Training(steps=5),
        guards=Guards(n_random=3, random_model=False),
        ci=ap.Bootstrap(n_boot=50),
    )
    torch.testing.assert_close(once.subspace.U, again.subspace.U)
    assert "mid-stream residual" in once.table.attrs["readout"]
    assert once.table.attrs["seed"] == -1 and once.table.attrs["das_seed"] == 0
    assert np.isnan(float(once.table.sel(control="row_space", metric="iia", stat="value")))
    assert np.isnan(float(once.table.sel(control="random_model", metric="iia", stat="value")))
    assert "subspace" in repr(once)


def test_readouts():
    model = tiny_model("gpt2")
    # The last residual is read through the final LayerNorm, which removes the mean: the all-ones
    # direction is its whole null space.
    matrix, what = readout.readout(model, ap.Site("resid_post", 1))
    rows = readout.row_space(matrix)
    assert "LayerNorm" in what and rows.shape == (32, 31)
    ones = torch.ones(32, 1) / math.sqrt(32)
    row, null, share = readout.split(ones, rows)
    assert row.shape[1] == 0 and null.shape[1] == 1 and share == pytest.approx(0, abs=1e-6)
    matrix, _ = readout.readout(model, ap.Site("head", 1, head=2))
    assert matrix.shape == (32, 8)


@pytest.mark.parametrize(
    "call, error, message",
    [
        (
            lambda p: das(p.model, p.pairs, p.site, rank=17),
            BasisError,
            "rank must be .* 1 to the site's width 16",
        ),
        (lambda p: das(p.model, p.pairs, p.site, rank=0), BasisError, "from 1"),
        (
            lambda p: das(p.model, p.pairs[:3], p.site, rank=1),
            PairsError,
            "at least 2 each.*more pairs",
        ),
        (
            lambda p: das(p.model, p.pairs, p.site, rank=1, direction="noise"),
            PairsError,
            "pass counterfactual=",
        ),
        (
            lambda p: das(p.model, p.pairs, p.site, rank=1, counterfactual=p.pairs.wrong),
            PairsError,
            "compared with",
        ),
        (
            lambda p: das(p.model, p.pairs, p.site, rank=1, guards=Guards(margin=0.1), training=1),
            TypeError,
            "Training",
        ),
        (
            lambda p: das(p.model, p.pairs, p.site, rank=1, test_share=1.5),
            ValueError,
            "between 0 and 1",
        ),
        (
            lambda p: das(p.model, p.pairs, "k[layer=0, head=0]", rank=1),
            ap.SiteError,
            "subspace sits at",
        ),
    ],
)
def test_bad_inputs(genuine, call, error, message):
    with pytest.raises(error, match=message):
        call(genuine)


def test_das_noises_with_a_counterfactual(genuine):
    """Noising: the corrupt value written into the clean run should give the corrupt answer."""
    result = das(
        genuine.model,
        genuine.pairs,
        genuine.site,
        rank=1,
        direction="noise",
        counterfactual=genuine.pairs.wrong,
        training=Training(steps=60, lr=0.1),
        guards=False,
        ci=ap.Bootstrap(n_boot=100),
    )
    assert result.iia == 1 and abs(float(result.subspace.U[:, 0] @ genuine.direction)) >= 0.95
    assert result.flags == () and result.table.attrs["direction"] == "noise"


@pytest.mark.parametrize("kind", ["genuine", "illusion"])
def test_boundless_das_learns_the_rank(kind):
    """rank="learned": a full rotation and a boundary; on both planted models the variable needs
    one direction, which it finds; the guards judge it as they judge a fixed-rank search."""
    case = planted(kind)
    result = das(
        case.model,
        case.pairs,
        case.site,
        rank="learned",
        training=Training(steps=100, lr=0.1),
        guards=Guards(n_random=10, random_model=False),
        ci=ap.Bootstrap(n_boot=100),
    )
    assert result.subspace.rank == 1 and result.table.attrs["rank"] == 1
    assert result.table.attrs["rank_learned"] and "boundless" in result.table.attrs["method"]
    assert abs(float(result.subspace.U[:, 0] @ case.direction)) >= 0.99
    assert result.iia == 1
    names = {flag.split(":")[0] for flag in result.flags}
    assert names == (set() if kind == "genuine" else {"exceeds_component", "dormant_pathway"})


def test_a_masked_patch_is_the_patch_of_the_kept_directions():
    """Boundless DAS's soft mask at 0/1 is the plain patch of the directions it keeps."""
    model, pairs = tiny_task("llama")
    run = interchange(model, pairs, "resid_pre[layer=1, pos=END]")
    Q = torch.linalg.qr(torch.randn(32, 32, generator=torch.Generator().manual_seed(1)))[0]
    mask = torch.zeros(32)
    mask[:3] = 1
    torch.testing.assert_close(run.subspace_value(Q, mask), run.subspace_value(Q[:, :3]))

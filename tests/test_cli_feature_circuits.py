"""`actpatch circuit --level feature`: the curve and the top nodes printed, the curve and every
node's score written, each the library's own numbers; flags of the other levels refused."""

from __future__ import annotations

import pandas as pd
import pytest

import actpatch as ap
from actpatch import experiment
from command_line import run
from random_dictionaries import random_dictionary, save_saelens

# Seed 2: prompts on which the random model's clean run is above its corrupt one (circuits always
# check the baseline).
TINY_IOI = ("--task", "ioi", "--prompts", "4", "--seed", "2")


@pytest.fixture(scope="module")
def tiny(tiny_folder, tmp_path_factory):
    """(the tiny model, the command line's pairs, SAE folders at both layers)."""
    model = ap.load_model(tiny_folder)
    spec = experiment.validate(
        {"task": {"name": "ioi", "n": 4, "seed": 2}, "sweep": {"site": "resid_pre"}}
    )
    pairs = experiment.make_pairs(model, spec.task)
    folders = [
        save_saelens(
            random_dictionary(model, "resid_post", "resid_post", layer=layer, seed=layer),
            tmp_path_factory.mktemp(f"sae{layer}"),
            hook_name=f"blocks.{layer}.hook_resid_post",
        )
        for layer in (0, 1)
    ]
    return model, pairs, folders


def test_a_feature_circuit_prints_its_curve_and_top_nodes_and_saves_the_librarys_numbers(
    tiny, tiny_folder, tmp_path
):
    model, pairs, folders = tiny
    result = run(
        "circuit",
        "--level",
        "feature",
        "--model",
        tiny_folder,
        *TINY_IOI,
        "--dictionary",
        folders[0],
        "--dictionary",
        folders[1],
        "--percent",
        "30",
        "--out",
        tmp_path,
    )
    assert result.exit_code == 0, result.output
    assert "errors kept: CPR" in result.output and "errors ranked: CPR" in result.output
    assert "strongest nodes" in result.output
    rows = pd.read_csv(tmp_path / "ioi_feature_atp_curve.csv")
    assert set(rows["errors"]) == {"kept", "ranked"} and 30.0 in set(rows["percent"])
    nodes = pd.read_csv(tmp_path / "ioi_feature_atp_nodes.csv")
    curve = ap.load(tmp_path / "ioi_feature_atp.nc")
    # The library, on the same model, prompts and dictionaries, gives the same numbers.
    dictionaries = [ap.load_dictionary(f, model) for f in folders]
    scores = ap.feature_scores(model, pairs, dictionaries)
    want = ap.feature_faithfulness_curve(
        model, pairs, scores, percents=sorted({*ap.graph.MIB_PERCENTS, 30.0})
    )
    got = rows.set_index(["errors", "percent"])["faithfulness"]
    for mode in ("kept", "ranked"):
        f = want.sel(errors=mode, metric="faithfulness")
        assert got.loc[mode].values == pytest.approx(f.values, abs=1e-6)
        assert float(curve.sel(errors=mode)["cpr"]) == pytest.approx(float(f["cpr"]), abs=1e-9)
    assert nodes["node"].tolist() == [str(s) for s in scores.ranking("ranked")]
    assert curve.attrs["experiment"]["task"]["name"] == "ioi"


@pytest.mark.parametrize(
    "extra, reason",
    [
        ((), "needs --dictionary PATH"),
        (
            ("--dictionary", "X", "--recovery", "0.5"),
            "--recovery does not apply to --level feature",
        ),
        (("--dictionary", "X", "--method", "eap"), "one of atp, ig"),
        (("--dictionary", "X", "--nodes"), "--nodes does not apply to --level feature"),
    ],
)
def test_feature_level_flags_are_checked_before_any_model_loads(tmp_path, extra, reason):
    result = run("circuit", "--level", "feature", *extra, "--out", tmp_path)
    assert result.exit_code == 2 and reason in result.output


def test_a_dictionary_at_another_level_is_refused(tmp_path):
    result = run("circuit", "--level", "edge", "--dictionary", "X", "--out", tmp_path)
    assert result.exit_code == 2 and "--dictionary goes with --level feature" in result.output

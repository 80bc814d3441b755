"""`actpatch sweep --site feature --dictionary PATH` and `actpatch attribute` over features, on the
tiny GPT-2 checkpoint with a random SAE written to disk in SAELens's format; their refusals."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch
import xarray as xr

import actpatch as ap
from actpatch import experiment
from actpatch.bases.dictionary import Dictionary
from actpatch.bases.select import active_latents
from command_line import run, run_tiny_ioi
from random_dictionaries import random_dictionary, save_saelens

N_LATENTS = 24
# A random dictionary reconstructs nothing: its warning is tested in test_reconstruction.py.
pytestmark = pytest.mark.filterwarnings("ignore::actpatch.bases.on_prompts.PoorReconstruction")


@pytest.fixture(scope="module")
def tiny(tiny_folder, tmp_path_factory):
    """(the tiny model, its 4 IOI pairs as the command line makes them, an SAE folder for it)."""
    model = ap.load_model(tiny_folder)
    pairs = experiment.make_pairs(
        model,
        experiment.validate({"task": {"name": "ioi", "n": 4}, "sweep": {"site": "resid_pre"}}).task,
    )
    sae = random_dictionary(model, "resid_post", "resid_post", n_latents=N_LATENTS, layer=1)
    folder = save_saelens(sae, tmp_path_factory.mktemp("sae"), hook_name="blocks.1.hook_resid_post")
    return model, pairs, folder


def features(command, tiny_folder, out, folder, *extra):
    """`actpatch COMMAND --site feature --dictionary FOLDER ...` on the tiny IOI task."""
    return run_tiny_ioi(
        (command,), tiny_folder, out, "--site", "feature", "--dictionary", folder, *extra
    )


def test_a_feature_sweep_prints_its_top_latents_and_saves_what_the_library_computes(
    tiny, tiny_folder, tmp_path
):
    model, pairs, folder = tiny
    result = features(
        "sweep",
        tiny_folder,
        tmp_path,
        folder,
        "--positions",
        "S2,END",
        "--ci",
        "0.9",
        "--n-boot",
        "50",
    )
    assert result.exit_code == 0, result.output
    saved = ap.load(tmp_path / "ioi_feature_denoise.nc")
    dictionary = ap.load_dictionary(folder, model)
    latents = [int(i) for i in saved["latent"].values]
    # --latents defaults to the active ones, as the library's latents="active" finds them.
    assert latents == active_latents(model, pairs, dictionary, ["S2", "END"])
    want = ap.sweep(
        model,
        pairs,
        "feature",
        dictionary=dictionary,
        latents=latents,
        positions=["S2", "END"],
        check_baseline=False,
        ci=ap.Bootstrap(0.9, n_boot=50),
    )
    xr.testing.assert_allclose(saved.sel(stat="value"), want.sel(stat="value"), atol=1e-6)
    # The table: the latent furthest from the unpatched run first, with its interval.
    value = want.sel(metric="norm_logit_diff", stat="value", layer=1)
    latent, pos = np.unravel_index(np.abs(value.values).argmax(), value.shape)
    top = next(line for line in result.output.splitlines() if line.strip().startswith("latent"))
    assert f"latent {latents[latent]:>6} at pos {value['pos'].values[pos]}" in top
    assert f"{float(value.values[latent, pos]):+.3f} [" in top
    # The strongest latents' activations on the prompts ride in the result, for its report.
    recorded = saved.attrs["latent_activations"]
    assert latents[latent] in recorded["latents"] and len(recorded["texts"]) == 2 * len(pairs)
    report = (tmp_path / "ioi_feature_denoise.html").read_text()
    assert "Top latents of sae.resid_post.1" in report


def test_feature_sweeps_take_listed_latents_and_the_error_node(tiny, tiny_folder, tmp_path):
    _, _, folder = tiny
    listed = features(
        "sweep",
        tiny_folder,
        tmp_path / "listed",
        folder,
        "--latents",
        "1,3-4",
        "--positions",
        "END",
    )
    assert listed.exit_code == 0, listed.output
    saved = ap.load(tmp_path / "listed" / "ioi_feature_denoise.nc")
    assert list(saved["latent"].values) == [1, 3, 4]
    error = run_tiny_ioi(
        ("sweep",),
        tiny_folder,
        tmp_path / "error",
        "--site",
        "feature_error",
        "--dictionary",
        folder,
        "--direction",
        "both",
    )
    assert error.exit_code == 0, error.output
    saved = ap.load(tmp_path / "error" / "ioi_feature_error_both.nc")
    assert set(saved.dims) == {"metric", "direction", "layer", "pos"}
    assert saved.attrs["dictionary"]["name"] == "sae.resid_post.1"


def test_attribute_estimates_every_latent_and_error_node_which_add_up_to_the_plain_site(
    tiny, tiny_folder, tmp_path
):
    model, pairs, folder = tiny
    result = features(
        "attribute",
        tiny_folder,
        tmp_path,
        folder,
        "--verify",
        "3",
    )
    assert result.exit_code == 0, result.output
    latents = ap.load(tmp_path / "ioi_feature_denoise_atp.nc")
    errors = ap.load(tmp_path / "ioi_feature_denoise_atp_error.nc")
    assert list(latents["latent"].values) == list(range(N_LATENTS))  # every latent by default
    plain = ap.attribute(model, pairs, "resid_post", layers=[1], check_baseline=False)
    # AtP is additive: every latent plus the error node is the whole site's estimate, position by
    # position (each value is the target's plus its estimated change).
    target = plain.attrs["baseline_corrupt"]["logit_diff"]
    change = (latents - target).sum("latent") + (errors - target)
    got = change.sel(metric="logit_diff") + target
    np.testing.assert_allclose(got.values, plain.sel(metric="logit_diff").values, atol=1e-4)
    assert (
        "error nodes" in result.output
        and "the estimate of patching resid_post whole" in result.output
    )
    assert (tmp_path / "ioi_feature_denoise_atp_verify.csv").is_file()


def test_a_feature_experiment_file_reads_its_dictionary_beside_it(tiny, tiny_folder, tmp_path):
    _, _, folder = tiny
    (tmp_path / "sae").symlink_to(folder)
    config = tmp_path / "features.toml"
    config.write_text(
        f'[model]\nname = "{tiny_folder}"\n[task]\nname = "ioi"\nn = 4\n'
        '[sweep]\nsite = "feature"\ndictionary = "sae"\nlatents = [0, 2]\npositions = ["END"]\n'
        "check_baseline = false\n"
    )
    result = run("sweep", "--config", config, "--out", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert list(ap.load(tmp_path / "out" / "ioi_feature_denoise.nc")["latent"].values) == [0, 2]


def _saelens(folder, tiny, **cfg):
    """The tiny SAE's folder copied into `folder` with its cfg.json fields changed."""
    shutil.copytree(tiny[2], folder)
    data = json.loads((folder / "cfg.json").read_text())
    data.update(cfg)
    (folder / "cfg.json").write_text(json.dumps(data))
    return folder


@pytest.mark.parametrize(
    "flags, message",
    [
        (("--site", "feature"), r"missing key 'sweep.dictionary'.*give --dictionary"),
        (("--site", "head", "--dictionary", "SAE"), r"--dictionary goes with site"),
        (("--site", "resid_post", "--latents", "1"), r"--latents goes with site"),
        (
            ("--site", "feature", "--dictionary", "SAE", "--latents", "1,99"),
            r"latent 99 is out of range.*0\.\.23",
        ),
        (
            ("--site", "feature", "--dictionary", "SAE", "--latents", "x"),
            r"--latents: 'x' is not a whole number",
        ),
        (
            ("--site", "feature", "--dictionary", "embedded"),
            r"--dictionary embedded is the embedded SmolLM2's.*leave out --model",
        ),
        (("--site", "feature", "--dictionary", "DEEP"), r"layer 5, but .* has layers 0\.\.1"),
        (("--site", "feature", "--dictionary", "NOWHERE"), r"blocks\.1\.hook_nothing"),
        (("--site", "feature", "--dictionary", "MISSING"), r"no such dictionary folder"),
    ],
)
def test_bad_feature_flags_exit_2_naming_the_fix(tiny, tiny_folder, tmp_path, flags, message):
    folders = {
        "SAE": str(tiny[2]),
        "DEEP": str(
            _saelens(tmp_path / "deep", tiny, metadata={"hook_name": "blocks.5.hook_resid_post"})
        ),
        "NOWHERE": str(
            _saelens(tmp_path / "nowhere", tiny, metadata={"hook_name": "blocks.1.hook_nothing"})
        ),
        "MISSING": str(tmp_path / "missing"),
    }
    result = run_tiny_ioi(
        ("sweep",), tiny_folder, tmp_path / "out", *[folders.get(f, f) for f in flags]
    )
    assert result.exit_code == 2, result.output
    assert re.search(message, result.stderr), result.stderr


def test_a_dictionary_of_another_width_is_refused_with_the_fix(tiny, tiny_folder, tmp_path):
    # A dictionary for a model twice as wide (d_model 32; the tiny GPT-2's is 16).
    wider = Dictionary(
        "wide",
        1,
        "resid_post",
        "resid_post",
        W_enc=torch.randn(32, 8),
        b_enc=torch.zeros(8),
        W_dec=torch.randn(8, 32),
        b_dec=torch.zeros(32),
    )
    folder = save_saelens(wider, tmp_path / "wide", hook_name="blocks.1.hook_resid_post")
    result = features("attribute", tiny_folder, tmp_path / "out", folder)
    assert result.exit_code == 2, result.output
    assert re.search(
        r"32-wide activations, but .* 16 wide \(d_model\).*load a dictionary made for this one",
        result.stderr,
    )

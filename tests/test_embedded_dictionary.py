"""The embedded model's dictionary: the TopK trainer, the SAELens folder it saves, and its cache.

Mechanics on a tiny random llama with random token rows (one small trained dictionary, a few
hundred activations); the real SmolLM2 training is the slow test at the end."""

import json
import logging

import pytest
import torch

import actpatch as ap
from actpatch import embedded
from actpatch.bases.train import train_topk
from tiny import VOCAB, tiny_model

RECIPE = embedded.Recipe(layer=1, n_latents=64, k=4, tokens=256, context=16, epochs=3, batch=32)


def normalised_error(dictionary, acts):
    return float(
        (acts - dictionary.reconstruct(acts)).pow(2).sum() / (acts - acts.mean(0)).pow(2).sum()
    )


def as_dictionary(fit):
    return ap.Dictionary(
        name="fit",
        layer=0,
        reads="resid_post",
        writes="resid_post",
        W_enc=fit.W_enc,
        b_enc=fit.b_enc,
        W_dec=fit.W_dec,
        b_dec=fit.b_dec,
        activation="topk",
        k=fit.k,
        input_bias=fit.b_dec,
    )


def test_training_reduces_the_reconstruction_error_on_raw_activations():
    # Sparse sums of 48 fixed directions in 16 dimensions, scaled far from unit size: the trained
    # weights must read and write raw activations (the input scale folded back in).
    g = torch.Generator().manual_seed(0)
    directions = torch.randn(48, 16, generator=g)
    codes = torch.rand(2000, 48, generator=g) * (torch.rand(2000, 48, generator=g) < 0.06)
    acts = 30.0 * codes @ directions + 5.0
    untrained = train_topk(acts, 64, 4, epochs=0, progress=False)
    trained = train_topk(acts, 64, 4, epochs=6, batch=64, progress=False)
    before = normalised_error(as_dictionary(untrained), acts)
    after = normalised_error(as_dictionary(trained), acts)
    assert after < 0.5 * before, (before, after)
    assert trained.losses[-1] < trained.losses[0]
    # the epoch losses were measured in the scaled space; the folded weights give the same error
    assert after == pytest.approx(trained.losses[-1], rel=0.5)


@pytest.fixture()
def cached(tmp_path, monkeypatch):
    """(model, token rows, the fits each call trained) with the cache in a temp folder."""
    monkeypatch.setenv("ACTPATCH_CACHE", str(tmp_path))
    fits = []

    def recording(*args, **kwargs):
        fits.append(train_topk(*args, **kwargs))
        return fits[-1]

    monkeypatch.setattr(embedded, "train_topk", recording)
    model = tiny_model("llama")
    tokens = torch.randint(0, VOCAB, (16, 16), generator=torch.Generator().manual_seed(3))
    return model, tokens, fits


def test_first_use_trains_and_saves_a_saelens_folder_that_loads_as_trained(cached):
    model, tokens, fits = cached
    dictionary = ap.embedded_dictionary(model, recipe=RECIPE, tokens=tokens, progress=False)
    assert len(fits) == 1
    folder = embedded.dictionary_folder(model, RECIPE)
    assert sorted(p.name for p in folder.iterdir()) == [
        "cfg.json",
        "manifest.json",
        "sae_weights.safetensors",
    ]
    cfg = json.loads((folder / "cfg.json").read_text())
    training = json.loads((folder / "manifest.json").read_text())["training"]
    assert training["activations"] == 16 * 15 and training["dead_latents"] == fits[0].dead
    assert (cfg["architecture"], cfg["d_in"], cfg["d_sae"], cfg["k"]) == ("topk", 32, 64, 4)
    assert cfg["metadata"]["hook_name"] == "blocks.1.hook_resid_post"
    loaded = ap.load_dictionary(folder, model)
    assert (loaded.reads, loaded.writes, loaded.layer, loaded.activation) == (
        "resid_post",
        "resid_post",
        1,
        "topk",
    )
    for got in (dictionary, loaded):
        for name in ("W_enc", "b_enc", "W_dec", "b_dec"):
            torch.testing.assert_close(getattr(got, name), getattr(fits[0], name), rtol=0, atol=0)
    acts = embedded.collect(model, tokens, RECIPE.layer)
    assert acts.shape == (16 * 15, 32)
    # it reconstructs what it was trained on better than the activations' mean does
    assert normalised_error(loaded, acts) < 0.9


def test_second_use_loads_and_a_changed_manifest_or_file_retrains(cached, caplog):
    model, tokens, fits = cached
    first = ap.embedded_dictionary(model, recipe=RECIPE, tokens=tokens, progress=False)
    second = ap.embedded_dictionary(model, recipe=RECIPE, tokens=tokens, progress=False)
    assert len(fits) == 1
    torch.testing.assert_close(second.W_dec, first.W_dec, rtol=0, atol=0)
    folder = embedded.dictionary_folder(model, RECIPE)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["format_version"] = 0
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING):
        ap.embedded_dictionary(model, recipe=RECIPE, tokens=tokens, progress=False)
    assert len(fits) == 2 and "format_version changed" in caplog.text
    (folder / "sae_weights.safetensors").write_bytes(b"not the weights")
    ap.embedded_dictionary(model, recipe=RECIPE, tokens=tokens, progress=False)
    assert len(fits) == 3
    other = torch.randint(0, VOCAB, (16, 16), generator=torch.Generator().manual_seed(4))
    ap.embedded_dictionary(model, recipe=RECIPE, tokens=other, progress=False)  # new text
    assert len(fits) == 4
    ap.embedded_dictionary(model, recipe=RECIPE, tokens=other, progress=False)
    assert len(fits) == 4


@pytest.fixture(scope="module")
def embedded_sae(smollm):
    """The real SmolLM2 dictionary from the user's cache (trained there first if it is not yet)."""
    return ap.embedded_dictionary(smollm, progress=False)


def test_the_embedded_model_s_dictionary_reconstructs_held_out_text(smollm, embedded_sae):
    recipe = embedded.Recipe()
    folder = embedded.dictionary_folder(smollm, recipe)
    loaded = ap.load_dictionary(folder, smollm)
    assert (loaded.reads, loaded.layer, loaded.n_latents, loaded.k) == ("resid_post", 14, 2048, 32)
    torch.testing.assert_close(loaded.W_enc, embedded_sae.W_enc, rtol=0, atol=0)
    acts = embedded.collect(smollm, embedded.held_out_tokens(smollm, recipe, 2), recipe.layer)
    assert normalised_error(loaded, acts) < 0.6  # measured 0.41 on 16 rows (docs/features.md)

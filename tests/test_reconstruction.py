"""The warning when a dictionary's error nodes dominate: its figure (the fraction of variance
explained on the analysed prompts) against the formula by hand, a random dictionary warned about
once, and a good dictionary not at all."""

from __future__ import annotations

import warnings

import pytest
import torch

import actpatch as ap
from actpatch.bases.dictionary import Dictionary
from actpatch.bases.on_prompts import PoorReconstruction, explained_variance
from random_dictionaries import random_dictionary
from tiny import tiny_task


def good_dictionary(model, noise: float = 0.06) -> Dictionary:
    """An SAE at layer 1's resid_post whose latents are relu(x) and relu(−x), decoded back with a
    little noise on the decoder: it explains most, not all, of the site."""
    d = model.dims.d_model
    eye = torch.eye(d)
    wobble = torch.randn(2 * d, d, generator=torch.Generator().manual_seed(0)) * noise
    return Dictionary(
        "good.resid_post.1", 1, "resid_post", "resid_post",
        W_enc=torch.cat([eye, -eye], 1), b_enc=torch.zeros(2 * d),
        W_dec=torch.cat([eye, -eye], 0) + wobble, b_dec=torch.zeros(d),
    )  # fmt: skip


def poor_reconstructions(call) -> list[warnings.WarningMessage]:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        call()
    return [w for w in caught if issubclass(w.category, PoorReconstruction)]


@pytest.mark.parametrize("positions", [None, [5, 2]])
def test_the_figure_is_the_fraction_of_variance_explained_by_hand(positions):
    model, pairs = tiny_task("llama")
    for dictionary in (good_dictionary(model), random_dictionary(model, "mlp_in", "mlp_out")):
        written, estimate, every = [], [], []
        for run in (pairs.clean_run, pairs.corrupt_run):
            reads, writes = (ap.Site(k, 1) for k in (dictionary.reads, dictionary.writes))
            found = ap.capture(model, run, [reads, writes])
            every.append(found[writes][:, 1:].reshape(-1, model.dims.d_model))
            chosen = slice(1, None) if positions is None else positions
            written.append(found[writes][:, chosen].reshape(-1, model.dims.d_model))
            estimate.append(
                dictionary.reconstruct(found[reads][:, chosen]).reshape(written[-1].shape)
            )
        x, x_hat, mean = torch.cat(written), torch.cat(estimate), torch.cat(every).mean(0)
        want = 1 - ((x - x_hat) ** 2).sum() / ((x - mean) ** 2).sum()
        got = explained_variance(model, pairs, dictionary, positions)
        assert got == pytest.approx(float(want), abs=1e-5)


def test_a_random_dictionary_warns_once_with_its_figure_and_the_fix():
    model, pairs = tiny_task("llama")
    bad = random_dictionary(model, "resid_post", "resid_post", seed=3)
    figure = explained_variance(model, pairs, bad, [5])
    assert figure < 0.5

    def analyses():
        ap.sweep(model, pairs, "feature", dictionary=bad, latents=[0, 1], positions=[5],
                 direction=["denoise", "noise"])  # fmt: skip
        ap.attribute(model, pairs, "feature", dictionary=bad, latents="active", positions=[5])

    caught = poor_reconstructions(analyses)
    assert len(caught) == 1  # both directions, then the attribution: one warning
    message = str(caught[0].message)
    assert f"fraction of variance explained {figure:.2f}" in message
    assert "sweep feature_error" in message.lower() and "made for this model" in message
    assert caught[0].filename == __file__  # it points at the caller's line


def test_a_good_dictionary_does_not_warn():
    model, pairs = tiny_task("llama")
    good = good_dictionary(model)
    assert 0.8 < explained_variance(model, pairs, good) < 0.95  # good, not exact
    caught = poor_reconstructions(
        lambda: (
            ap.sweep(model, pairs, "feature", dictionary=good, latents=[0, 1], positions=[5]),
            ap.attribute(model, pairs, "feature_error", dictionary=good),
        )
    )
    assert caught == []

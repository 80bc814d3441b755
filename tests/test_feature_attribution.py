"""Attribution over feature sites: every latent and error node from one forward and one backward.

The gradient at latent i is decoder row i · the gradient where the dictionary writes, so the
estimates of every latent and the error node at a position add up to the estimate of the plain
site there; where the metric is linear in that site, the estimates are the exact patches.
"""

from __future__ import annotations

import pytest

import actpatch as ap
from random_dictionaries import kinds_for, random_dictionary
from tiny import FAMILIES, linear_head_model, tiny_pairs, tiny_task, with_answers


def changes(result, metric="logit_diff"):
    """Each estimate's change of the logit difference from the unpatched target run."""
    target = result.attrs[
        "baseline_corrupt" if result.attrs["direction"] == "denoise" else "baseline_clean"
    ]
    return result.sel(metric=metric) - target[metric]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("direction", ["denoise", "noise"])
def test_latent_and_error_estimates_add_up_to_the_estimate_of_the_plain_site(family, direction):
    model, pairs = tiny_task(family)
    reads, writes = kinds_for(family)[-1]  # a transcoder: latents read one site and write another
    basis = random_dictionary(model, reads, writes, "jumprelu")
    keywords = {"direction": direction, "positions": "each", "progress": False}
    latents = ap.attribute(
        model, pairs, "feature", dictionary=basis, latents=list(range(basis.n_latents)), **keywords
    )
    error = ap.attribute(model, pairs, "feature_error", dictionary=basis, **keywords)
    plain = ap.attribute(model, pairs, writes, layers=[basis.layer], **keywords)
    summed = changes(latents).sum("latent") + changes(error)
    assert float(abs(summed - changes(plain)).max()) <= 1e-5
    assert float(abs(changes(plain)).max()) > 1e-2
    assert latents.attrs["dictionary"]["name"] == basis.name
    assert ap.attached_hooks(model) == 0


@pytest.mark.parametrize("family", ["llama", "gpt2", "gemma3"])
def test_feature_atp_is_exact_where_the_metric_is_linear(family):
    model = linear_head_model(family)
    model, pairs = with_answers(model, tiny_pairs())
    basis = random_dictionary(model, "resid_post", "resid_post", "topk")  # the last layer's output
    estimate = ap.attribute(
        model, pairs, "feature", dictionary=basis, latents="active", positions=[5], progress=False
    )
    exact = ap.sweep(
        model,
        pairs,
        "feature",
        dictionary=basis,
        latents=list(estimate["latent"].values),
        positions=[5],
        progress=False,
    )
    assert float(abs(changes(estimate) - changes(exact)).max()) <= 1e-5
    verification = ap.verify(model, pairs, estimate, dictionary=basis, top_k=3, sample=2)
    assert verification.table["error"].abs().max() <= 1e-5


def test_integrated_gradients_of_one_step_is_atp_on_features():
    model, pairs = tiny_task("qwen2")
    basis = random_dictionary(model, "resid_mid", "resid_mid")
    keywords = {"dictionary": basis, "latents": [0, 4, 9], "positions": [3, 5], "progress": False}
    atp = ap.attribute(model, pairs, "feature", **keywords)
    one_step = ap.attribute(model, pairs, "feature", method="ig", steps=1, **keywords)
    assert float(abs(atp - one_step).max()) == 0.0


def test_verify_needs_the_dictionary_the_estimate_was_made_with():
    model, pairs = tiny_task("llama")
    basis = random_dictionary(model, "resid_post", "resid_post")
    estimate = ap.attribute(
        model, pairs, "feature", dictionary=basis, latents=[1, 2], positions=[5], progress=False
    )
    with pytest.raises(ValueError, match="pass that dictionary"):
        ap.verify(model, pairs, estimate)
    other = random_dictionary(model, "mlp_out", "mlp_out")
    with pytest.raises(ValueError, match=r"test.resid_post.1"):
        ap.verify(model, pairs, estimate, dictionary=other)
    plain = ap.attribute(model, pairs, "resid_post", layers=[1], positions=[5], progress=False)
    with pytest.raises(ValueError, match="goes with estimates over feature sites"):
        ap.verify(model, pairs, plain, dictionary=basis)

"""Prompts of different token lengths: grouped by length, swept at named positions, pooled exactly.
Nothing is ever padded, so the tokenizer's padding side cannot change a result (checked on SmolLM2)."""

import numpy as np
import pytest
import xarray as xr

import actpatch as ap
from tiny import tiny_model, tiny_pairs, with_answers


def groups_of(model):
    return [
        with_answers(model, tiny_pairs(batch=b, seq=s, seed=seed))[1]
        for b, s, seed in ((3, 6, 1), (2, 8, 2), (4, 7, 3))
    ]


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_pooled_groups_equal_one_batch_of_all_prompts(family):
    model = tiny_model(family)
    groups = groups_of(model)
    options = dict(positions=["X", "END"], direction=["denoise", "noise"])
    pooled = ap.sweep(model, groups, "head", **options)
    alone = [ap.sweep(model, g, "head", per_prompt=True, **options) for g in groups]
    per_prompt = xr.concat(alone, dim="batch", coords="minimal", compat="override")
    sizes = [len(g) for g in groups]
    # Every metric is the mean over all prompts ...
    for metric in ("logit_diff", "prob", "kl", "accuracy"):
        np.testing.assert_allclose(
            pooled.sel(metric=metric), per_prompt.sel(metric=metric).mean("batch"), atol=1e-9
        )
    # ... and the normalised logit difference normalises the pooled mean by the pooled baselines.
    clean = sum(a.attrs["baseline_clean"]["logit_diff"] * n for a, n in zip(alone, sizes)) / sum(
        sizes
    )
    corrupt = sum(
        a.attrs["baseline_corrupt"]["logit_diff"] * n for a, n in zip(alone, sizes)
    ) / sum(sizes)
    np.testing.assert_allclose(
        pooled.sel(metric="norm_logit_diff"),
        (pooled.sel(metric="logit_diff") - corrupt) / (clean - corrupt),
        atol=1e-12,
    )
    assert pooled.attrs["n_prompts"] == 9 and pooled.attrs["group_lengths"] == [6, 8, 7]
    assert set(pooled.dims) == {"direction", "metric", "layer", "head", "pos"}
    reference = ap.sweep(model, groups, "head", engine="reference", **options)
    xr.testing.assert_allclose(pooled, reference, atol=1e-5, rtol=1e-5)


def test_positions_are_labelled_by_name_and_index():
    model = tiny_model("llama")
    groups = groups_of(model)
    one = ap.sweep(
        model, groups[0], "resid_pre", layers=[0]
    )  # every index; X varies by prompt, END does not
    assert list(one["pos_name"].values) == ["", "", "", "", "", "END"]
    named = ap.sweep(model, groups[0], "resid_pre", layers=[0], positions=["X", "END", 2])
    assert list(named["pos_index"].values) == [-1, 5, 2] and list(named["pos_name"].values) == [
        "X",
        "END",
        "",
    ]
    pooled = ap.sweep(model, groups, "resid_pre", layers=[0], positions=["END"])
    assert list(pooled["pos_index"].values) == [-1]  # END is 5, 7 and 6 in the three groups


def test_groups_need_named_positions():
    model = tiny_model("llama")
    for positions in ("each", [2], ["X", 3]):
        with pytest.raises(ap.SiteError, match="named positions"):
            ap.sweep(model, groups_of(model), "resid_pre", positions=positions)


def test_groups_refuse_when_the_pooled_baseline_fails():
    model = tiny_model("llama")
    swapped = [
        type(g)(g.clean, g.corrupt, g.wrong, g.answers, positions=g.positions)
        for g in groups_of(model)
    ]
    with pytest.raises(ap.BaselineError, match="does not perform the task"):
        ap.sweep(model, swapped, "mlp_out", positions=["END"])


@pytest.mark.smollm
def test_mixed_length_ioi_is_grouped_and_padding_side_changes_nothing(smollm):
    prompts = [
        "When Mary and John went to the store, John gave a drink to",
        "Then, Mary and John had a lot of fun at the park. John gave a ball to",
        "When Anna and Tom went to the school, Tom gave a book to",
        "Friends Anna and Tom found a ring at the garden. Tom gave it to",
    ]
    corrupt = [
        p.replace("Mary", "Ellen")
        .replace("John", "David")
        .replace("Anna", "Sarah")
        .replace("Tom", "Peter")
        for p in prompts
    ]
    answers, wrong = [" Mary", " Mary", " Anna", " Anna"], [" John", " John", " Tom", " Tom"]
    end = [len(smollm.tokenizer(p)["input_ids"]) - 1 for p in prompts]
    with pytest.raises(ap.PairsError, match="groups_from_strings"):
        ap.PromptPairs.from_strings(smollm, prompts, corrupt, answers, wrong)
    results = []
    original = smollm.tokenizer.padding_side
    try:
        for side in ("left", "right"):
            smollm.tokenizer.padding_side = side
            groups = ap.PromptPairs.groups_from_strings(
                smollm, prompts, corrupt, answers, wrong, positions={"END": end}
            )
            assert [g.seq_len for g in groups] == sorted({n + 1 for n in end})
            results.append(
                ap.sweep(smollm, groups, "resid_post", positions=["END"], layers=[0, 15, 29])
            )
    finally:
        smollm.tokenizer.padding_side = original
    xr.testing.assert_identical(results[0], results[1])
    # The last layer's output at the final position is all the unembedding reads: the clean answer, exactly.
    assert results[0].sel(metric="norm_logit_diff", layer=29, pos="END").item() == pytest.approx(
        1.0, abs=1e-4
    )


@pytest.mark.smollm
def test_ioi_groups_use_every_template_with_names_at_their_positions(smollm):
    from actpatch.tasks.ioi import TEMPLATES

    # Every template once: prompt i takes template i % n, in ABBA order when i is even; with
    # 14 templates a second round would repeat each in the same order with other names.
    n = len(TEMPLATES)
    groups = ap.tasks.ioi_groups(smollm, n=n, corruption="s2")
    assert len(groups) > 1 and sum(len(g) for g in groups) == n
    texts = [t for g in groups for t in g.clean_text]
    assert (
        len({t.split(",")[0].split(" ")[0] + str(len(t)) for t in texts}) > 4
    )  # many templates, not one length's few
    for g in groups:
        for i in range(len(g)):
            words = {
                name: smollm.token_strings(g.clean[i, g.positions[name][i] :][:1])[0]
                for name in ("S1", "IO", "S2")
            }
            assert words["S1"] == words["S2"] == smollm.token_strings(g.wrong[i : i + 1])[0]
            assert words["IO"] == smollm.token_strings(g.answers[i : i + 1])[0]
            assert (
                g.clean[i, g.positions["S1"][i]] == g.corrupt[i, g.positions["S1"][i]]
            )  # s2 leaves S1 alone
    assert len(TEMPLATES) >= 10
    result = ap.sweep(smollm, groups, "resid_pre", positions=["S1", "S2", "END"], layers=[2])
    assert result.attrs["n_prompts"] == n and result.sizes["pos"] == 3

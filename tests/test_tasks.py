"""IOI prompts and corruptions: each changes exactly the tokens it says, with the real tokenizer
and with a GPT-2-style byte-level tokenizer built from a small word vocabulary (word_tokenizer.py)."""

import pytest
import torch

import actpatch as ap
from actpatch.corrupt import IOI_CORRUPTIONS
from word_tokenizer import gpt2_style_model

CHANGED = {
    "abc": {"S1", "IO", "S2"},
    "s2": {"S2"},
    "s1": {"S1"},
    "io_s_swap": {"S1", "IO", "S2"},
    "random": {"S1", "IO", "S2"},
}


@pytest.fixture(
    scope="module", params=[pytest.param("smollm2", marks=pytest.mark.smollm), "gpt2-style"]
)
def model(request):
    if request.param == "gpt2-style":
        return gpt2_style_model()
    return request.getfixturevalue("smollm")


@pytest.mark.parametrize("corruption", IOI_CORRUPTIONS)
def test_each_corruption_changes_exactly_its_tokens(model, corruption):
    pairs = ap.tasks.ioi(model, n=8, corruption=corruption, seed=2)
    assert pairs.corruption == corruption and pairs.clean.shape == pairs.corrupt.shape
    for row in range(len(pairs)):
        changed = set(torch.nonzero(pairs.clean[row] != pairs.corrupt[row]).flatten().tolist())
        named = {int(pairs.positions[name][row]): name for name in ("S1", "IO", "S2")}
        assert {named.get(i, f"pos {i}") for i in changed} == CHANGED[corruption], (
            pairs.corrupt_text[row]
        )


def test_named_positions_point_at_the_names_in_both_orders(model):
    pairs = ap.tasks.ioi(model, n=10, seed=4)
    decode = lambda ids: model.tokenizer.decode(ids).strip()
    orders = set()
    for row in range(len(pairs)):
        at = {name: int(pairs.positions[name][row]) for name in ("S1", "IO", "S2", "END")}
        assert decode(pairs.clean[row, at["IO"]]) == decode(pairs.answers[row])
        assert (
            decode(pairs.clean[row, at["S1"]])
            == decode(pairs.clean[row, at["S2"]])
            == decode(pairs.wrong[row])
        )
        assert at["END"] == pairs.seq_len - 1
        assert decode(pairs.clean[row, pairs.positions["VERB"][row]]) in {
            "gave",
            "decided",
            "wanted",
            "handed",
            "passed",
        }
        orders.add(at["S1"] < at["IO"])
    assert orders == {True, False}  # ABBA and BABA both present


def test_io_s_swap_swaps_roles(model):
    pairs = ap.tasks.ioi(model, n=4, corruption="io_s_swap", seed=1)
    for row in range(len(pairs)):
        io, s1 = int(pairs.positions["IO"][row]), int(pairs.positions["S1"][row])
        assert (
            pairs.corrupt[row, io] == pairs.clean[row, s1]
            and pairs.corrupt[row, s1] == pairs.clean[row, io]
        )


def test_unknown_corruption_lists_the_choices(model):
    with pytest.raises(ap.PairsError, match=r"unknown IOI corruption 'names'.*abc.*s2.*io_s_swap"):
        ap.tasks.ioi(model, n=2, corruption="names")


def test_clean_prompts_depend_only_on_n_and_seed(model):
    # The corruption draws from its own random stream: corruptions that draw different numbers of
    # names (abc three, s2 one, io_s_swap none) must still corrupt the same clean prompts.
    by_corruption = {c: ap.tasks.ioi(model, n=8, corruption=c, seed=3) for c in IOI_CORRUPTIONS}
    first = by_corruption["abc"]
    for corruption, pairs in by_corruption.items():
        assert pairs.clean_text == first.clean_text, corruption
        assert torch.equal(pairs.clean, first.clean) and torch.equal(pairs.answers, first.answers)
    assert len({pairs.corrupt_text for pairs in by_corruption.values()}) == len(IOI_CORRUPTIONS)
    assert ap.tasks.ioi(model, n=8, corruption="abc", seed=4).clean_text != first.clean_text

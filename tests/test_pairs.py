"""Prompt pairs from strings, with the real SmolLM2 tokenizer: the errors a researcher meets first."""

import pytest
import torch

import actpatch as ap

pytestmark = pytest.mark.smollm

CLEAN = "When John and Mary went to the store, John gave a drink to"
CORRUPT = "When Tom and Anna went to the store, Paul gave a drink to"


def test_strings_become_aligned_token_ids(smollm):
    pairs = ap.PromptPairs.from_strings(
        smollm, [CLEAN], [CORRUPT], [" Mary"], [" John"], positions={"IO": [3]}
    )
    assert pairs.clean.shape == pairs.corrupt.shape == (1, 14)
    assert smollm.tokenizer.decode(pairs.answers) == " Mary"
    assert smollm.tokenizer.decode(pairs.clean[0, pairs.positions["IO"]]) == " Mary"
    assert pairs.clean_text == (CLEAN,)


@pytest.mark.parametrize(
    "clean, corrupt, answer, wrong, message",
    [
        (
            [CLEAN],
            ["When Tom and Anna went to the shopping mall, Paul gave a drink to"],
            " Mary",
            " John",
            r"prompt 0: clean has 14 tokens and corrupt has \d+.*same number of tokens",
        ),
        (
            [CLEAN],
            [CORRUPT],
            "Maryanne-Louise",
            " John",
            r"answer 'Maryanne-Louise'.*leading space",
        ),
        (
            [CLEAN],
            [CORRUPT],
            " Maryanne-Louise",
            " John",
            r"answer ' Maryanne-Louise' is \d+ tokens",
        ),
        ([CLEAN], [CORRUPT], " Mary", " Johnathan-James", r"wrong answer .* tokens"),
        ([""], [CORRUPT], " Mary", " John", r"clean prompt 0 is empty"),
        ([], [], None, None, r"no prompts given"),
        (
            [CLEAN, CLEAN + " the"],
            [CORRUPT, CORRUPT + " the"],
            " Mary",
            " John",
            r"different token lengths \[14, 15\]",
        ),
        (CLEAN, CORRUPT, " Mary", " John", r"lists of prompts, not a single string"),
    ],
)
def test_bad_pairs_say_what_to_fix(smollm, clean, corrupt, answer, wrong, message):
    n = len(clean) if isinstance(clean, list) else 1
    answers = [answer] * n if answer else []
    wrongs = [wrong] * n if wrong else []
    with pytest.raises(ap.PairsError, match=message):
        ap.PromptPairs.from_strings(smollm, clean, corrupt, answers, wrongs)


def test_mismatched_counts_are_named(smollm):
    with pytest.raises(ap.PairsError, match=r"'answers': 2"):
        ap.PromptPairs.from_strings(smollm, [CLEAN], [CORRUPT], [" Mary", " Mary"], [" John"])


def test_ioi_named_positions_point_at_the_names(smollm):
    pairs = ap.ioi_pairs(smollm, n=6, seed=3)
    for row in range(len(pairs)):
        token = lambda name, row=row: smollm.tokenizer.decode(
            pairs.clean[row, pairs.positions[name][row]]
        )
        assert token("IO") == smollm.tokenizer.decode(pairs.answers[row])
        assert token("S1") == token("S2") == smollm.tokenizer.decode(pairs.wrong[row])
        assert int(pairs.positions["END"][row]) == pairs.seq_len - 1
    assert not torch.equal(pairs.clean, pairs.corrupt)

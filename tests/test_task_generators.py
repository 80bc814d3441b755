"""Factual recall, greater-than, induction, pairs from files and symmetric token replacement: each
generator's named positions point at the tokens they name (checked by decoding them), and each
corruption changes exactly the tokens it says, under SmolLM2's tokenizer (digits one by one) and a
GPT-2-style byte-level one (two-digit number tokens), with and without a BOS token."""

import re

import pytest
import torch

import actpatch as ap
from actpatch.corrupt import replacements, symmetric_token_replacement, token_span
from actpatch.tasks.factual import RELATIONS
from actpatch.tasks.ioi import CLASSIC, NAMES
from task_files import ROWS, write_csv, write_jsonl
from word_tokenizer import gpt2_style_model

ATTRIBUTE = {
    (r.name, subject): attribute for r in RELATIONS.values() for subject, attribute in r.facts
}


@pytest.fixture(
    scope="module",
    params=[pytest.param("smollm2", marks=pytest.mark.smollm), "gpt2-style", "gpt2-bos"],
)
def model(request):
    if request.param == "smollm2":
        return request.getfixturevalue("smollm")
    return gpt2_style_model(bos=request.param == "gpt2-bos")


@pytest.fixture(scope="module")
def words():
    """The GPT-2-style model, for checks that do not depend on the tokenizer."""
    return gpt2_style_model()


def text(model, ids) -> str:
    return model.tokenizer.decode(ids if isinstance(ids, list) else ids.tolist())


def changed(pairs, row) -> set[int]:
    return set(torch.nonzero(pairs.clean[row] != pairs.corrupt[row]).flatten().tolist())


def bos_count(model) -> int:
    return len(model.tokenizer("")["input_ids"])


def relation_of(prompt: str) -> str:
    (name,) = [
        r.name
        for r in RELATIONS.values()
        if re.fullmatch(re.escape(r.template).replace(re.escape("{subject}"), ".+"), prompt)
    ]
    return name


# --- factual recall -----------------------------------------------------------------------------


def test_factual_recall_replaces_the_subject_by_one_of_its_relation(model):
    pairs = ap.tasks.factual_recall(model, n=12, seed=1)
    assert pairs.corruption == "str" and pairs.clean.shape == pairs.corrupt.shape
    for row in range(len(pairs)):
        first, last = (
            int(pairs.positions["SUBJ_FIRST"][row]),
            int(pairs.positions["SUBJ_LAST"][row]),
        )
        relation = RELATIONS[relation_of(pairs.clean_text[row])]
        subject = text(model, pairs.clean[row, first : last + 1]).strip()
        other = text(model, pairs.corrupt[row, first : last + 1]).strip()
        assert (
            text(model, pairs.answers[row : row + 1]) == " " + ATTRIBUTE[(relation.name, subject)]
        )
        assert text(model, pairs.wrong[row : row + 1]) == " " + ATTRIBUTE[(relation.name, other)]
        assert pairs.answers[row] != pairs.wrong[row]
        assert pairs.corrupt_text[row] == relation.template.format(subject=other)
        diff = changed(pairs, row)
        assert diff and diff <= set(range(first, last + 1)), (
            pairs.clean_text[row],
            pairs.corrupt_text[row],
        )
        assert int(pairs.positions["END"][row]) == pairs.seq_len - 1
    assert bool((pairs.clean[:, : bos_count(model)] == pairs.corrupt[:, : bos_count(model)]).all())


@pytest.mark.parametrize("relation", RELATIONS)
def test_factual_recall_by_relation_keeps_multi_token_subjects_aligned(model, relation):
    pairs = ap.tasks.factual_recall(model, n=6, seed=0, relations=[relation])
    template = RELATIONS[relation].template
    for row in range(len(pairs)):
        first, last = (
            int(pairs.positions["SUBJ_FIRST"][row]),
            int(pairs.positions["SUBJ_LAST"][row]),
        )
        assert pairs.clean_text[row] == template.format(
            subject=text(model, pairs.clean[row, first : last + 1]).strip()
        )
        assert changed(pairs, row) <= set(range(first, last + 1))


def test_factual_recall_mixes_relations_of_one_length(words):
    pairs = ap.tasks.factual_recall(words, n=32, seed=0)
    assert {relation_of(t) for t in pairs.clean_text} == {
        "country_capital",
        "country_language",
    }  # both 7 tokens


# --- greater-than -------------------------------------------------------------------------------


def test_greater_than_answers_a_later_decade_and_corrupts_yy_to_01(model):
    pairs = ap.tasks.greater_than(model, n=16, seed=3)
    assert pairs.corruption == "01"
    digit_tokens = set()
    for row in range(len(pairs)):
        yy = int(re.search(r"year 17(\d\d) to", pairs.clean_text[row]).group(1))
        first, last = int(pairs.positions["YY_FIRST"][row]), int(pairs.positions["YY"][row])
        assert text(model, pairs.clean[row, first : last + 1]) == f"{yy:02d}"
        assert text(model, pairs.corrupt[row, first : last + 1]) == "01"
        assert changed(pairs, row) == set(range(first, last + 1))
        answer, wrong = (
            text(model, pairs.answers[row : row + 1]),
            text(model, pairs.wrong[row : row + 1]),
        )
        digit_tokens.add(len(answer))
        # a token of one digit stands for its whole decade: "4" begins 1740-49
        assert int(answer.ljust(2, "0")) > yy and int(wrong.ljust(2, "9")) <= yy, (
            yy,
            answer,
            wrong,
        )
        assert pairs.clean_text[row].endswith("to the year 17")
        assert int(pairs.positions["END"][row]) == pairs.seq_len - 1
    expected = (
        1 if model.name.startswith("SmolLM2") else 2
    )  # SmolLM2 splits digits; GPT-2 keeps two
    assert digit_tokens == {expected}


def test_greater_than_years_never_end_in_01s_digit(words):
    pairs = ap.tasks.greater_than(words, n=64, seed=0)
    years = {int(re.search(r"17(\d\d) to", t).group(1)) for t in pairs.clean_text}
    assert len(years) > 10 and all(10 <= y <= 89 and y % 10 != 1 for y in years)


# --- induction ----------------------------------------------------------------------------------


def test_induction_repeats_the_sequence_and_corrupts_the_previous_answer(model):
    length, repeat = 12, 5
    pairs = ap.tasks.induction(model, n=6, length=length, repeat=repeat, seed=2)
    offset = bos_count(model)
    assert pairs.seq_len == offset + length + repeat
    for row in range(len(pairs)):
        clean, corrupt = pairs.clean[row], pairs.corrupt[row]
        sequence = clean[offset : offset + length]
        assert len(set(sequence.tolist())) == length
        assert torch.equal(clean[offset + length :], sequence[:repeat])
        at = {
            name: int(pairs.positions[name][row]) for name in ("PREV_CURRENT", "PREV_ANSWER", "END")
        }
        assert at["END"] == pairs.seq_len - 1 and clean[at["END"]] == clean[at["PREV_CURRENT"]]
        assert at["PREV_ANSWER"] == at["PREV_CURRENT"] + 1
        assert (
            clean[at["PREV_ANSWER"]] == pairs.answers[row]
            and corrupt[at["PREV_ANSWER"]] == pairs.wrong[row]
        )
        assert changed(pairs, row) == {at["PREV_ANSWER"]}
        assert pairs.wrong[row] not in clean.tolist()
        assert re.fullmatch(r"( [a-z]{3,})+", pairs.clean_text[row])


def test_induction_starts_with_bos_where_the_tokenizer_adds_one():
    model = gpt2_style_model(bos=True)
    pairs = ap.tasks.induction(model, n=2, length=6, repeat=3)
    assert bool((pairs.clean[:, 0] == model.tokenizer.bos_token_id).all())
    assert pairs.positions["PREV_ANSWER"].tolist() == [4, 4]  # BOS, then t0 t1 t2


# --- every generator ----------------------------------------------------------------------------

GENERATORS = {
    "factual_recall": ap.tasks.factual_recall,
    "greater_than": ap.tasks.greater_than,
    "induction": ap.tasks.induction,
}


@pytest.mark.parametrize("name", GENERATORS)
def test_generators_are_deterministic_given_the_seed(words, name):
    first, again, other = (GENERATORS[name](words, n=8, seed=s) for s in (5, 5, 6))
    assert torch.equal(first.clean, again.clean) and torch.equal(first.corrupt, again.corrupt)
    assert torch.equal(first.answers, again.answers) and torch.equal(first.wrong, again.wrong)
    assert not (torch.equal(first.clean, other.clean) and torch.equal(first.corrupt, other.corrupt))


# --- symmetric token replacement ----------------------------------------------------------------


def test_symmetric_replacement_of_a_named_position_changes_only_that_token(model):
    ioi = ap.tasks.ioi(model, n=6, seed=0, order="abba", templates=CLASSIC)
    pairs = symmetric_token_replacement(model, ioi, "S2", NAMES, seed=1)
    assert pairs.corruption == "str"
    assert torch.equal(pairs.clean, ioi.clean) and torch.equal(pairs.answers, ioi.answers)
    assert torch.equal(pairs.wrong, ioi.wrong)
    for row in range(len(pairs)):
        s2 = int(pairs.positions["S2"][row])
        assert changed(pairs, row) == {s2}
        assert text(model, pairs.corrupt[row, s2 : s2 + 1]).strip() in NAMES
    assert list(model.tokenizer(list(pairs.corrupt_text))["input_ids"]) == pairs.corrupt.tolist()


def test_symmetric_replacement_from_strings_with_a_candidate_mapping(model):
    landmarks = {subject: " " + city for subject, city in RELATIONS["landmark_city"].facts}
    length = lambda subject: len(model.tokenizer(" " + subject)["input_ids"])
    subjects = [s for s in landmarks if length(s) == length("Eiffel Tower")][
        :4
    ]  # a batch has one length
    clean = [f"The {s} is located in the city of" for s in subjects]
    pairs = symmetric_token_replacement(
        model,
        clean,
        "SUBJ_LAST",
        landmarks,
        first="SUBJ_FIRST",
        words=subjects,
        answers=[landmarks[s] for s in subjects],
        seed=0,
    )
    for row, subject in enumerate(subjects):
        first, last = (
            int(pairs.positions["SUBJ_FIRST"][row]),
            int(pairs.positions["SUBJ_LAST"][row]),
        )
        assert text(model, pairs.clean[row, first : last + 1]).strip() == subject
        other = text(model, pairs.corrupt[row, first : last + 1]).strip()
        assert other in landmarks and landmarks[other] != landmarks[subject]
        assert text(model, pairs.wrong[row : row + 1]) == landmarks[other]
        assert changed(pairs, row) <= set(range(first, last + 1)) and changed(pairs, row)


def test_replacements_keep_only_candidates_of_the_same_token_length(model):
    clean = "The Eiffel Tower is located in the city of"
    span = token_span(model, clean, "Eiffel Tower")
    candidates = [
        "Louvre",
        "Colosseum",
        "Big Ben",
        "Brandenburg Gate",
        "Eiffel Tower",
        "Tower of London",
    ]
    length = lambda word: len(model.tokenizer(" " + word, add_special_tokens=False)["input_ids"])
    kept = [r.word for r in replacements(model, clean, span, candidates)]
    assert kept == [
        c for c in candidates if c != "Eiffel Tower" and length(c) == length("Eiffel Tower")
    ]
    assert kept  # every tokenizer here has some landmark of the Eiffel Tower's length


def test_token_span_finds_whole_words_with_their_space(words):
    span = token_span(words, "When Mary and John went to the store, John gave", "Mary")
    assert (span.first, span.last, span.lead, span.word) == (1, 1, " ", "Mary")
    assert token_span(words, "Mary went", "Mary").first == 0
    with pytest.raises(ap.PairsError, match=r"'John' occurs 2 times.*give a token index"):
        token_span(words, "When Mary and John went to the store, John gave", "John")
    with pytest.raises(ap.PairsError, match=r"'Jo' does not occur as a whole word"):
        token_span(words, "When Mary and John went", "Jo")


# --- pairs from files ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["jsonl", "csv"])
def test_from_file_reads_pairs_and_named_positions(model, tmp_path, kind):
    path = tmp_path / f"ioi.{kind}"
    (write_jsonl if kind == "jsonl" else write_csv)(path, ROWS)
    pairs = ap.tasks.from_file(model, path)
    assert pairs.corruption == f"ioi.{kind}" and len(pairs) == 2
    assert pairs.clean_text == tuple(r["clean"] for r in ROWS)
    for row, fields in enumerate(ROWS):
        assert text(model, pairs.answers[row : row + 1]) == fields["answer"]
        at = {name: int(pairs.positions[name][row]) for name in ("IO", "S2", "END")}
        assert text(model, pairs.clean[row, at["IO"] : at["IO"] + 1]) == fields["answer"]
        assert (
            text(model, pairs.clean[row, at["S2"] : at["S2"] + 1]) == fields["wrong"]
        )  # -5: five from the end
        assert at["END"] == pairs.seq_len - 1


# --- SmolLM2 knows these tasks ------------------------------------------------------------------


@pytest.mark.smollm
@pytest.mark.parametrize("name", GENERATORS)
def test_smollm_prefers_the_answer_in_clean_runs_and_not_in_corrupt_ones(smollm, name):
    pairs = GENERATORS[name](smollm, n=16, seed=0)
    rows = torch.arange(len(pairs))

    def logit_diff(tokens):
        logits = smollm.last_logits(tokens)
        return logits[rows, pairs.answers] - logits[rows, pairs.wrong]

    clean, corrupt = logit_diff(pairs.clean), logit_diff(pairs.corrupt)
    # measured: factual 9.6 vs -9.3, greater-than 4.6 vs -0.7, induction 9.0 vs -9.3
    assert clean.mean() > 2 and clean.mean() > corrupt.mean() + 2
    assert (clean > corrupt).float().mean() > 0.9

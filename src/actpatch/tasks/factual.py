"""Factual recall (Meng et al. 2022): "The Eiffel Tower is located in the city of" -> " Paris".

Facts come from a small bundled list of four relations. The corruption is symmetric token
replacement of the subject (`actpatch.corrupt`): another subject of the same relation, with the
same number of tokens in context and a different attribute, so the corrupt prompt is a true fact
of its own and the wrong answer is that fact's attribute. Named positions, per prompt:
SUBJ_FIRST and SUBJ_LAST (the subject's first and last tokens), END (the last token).

Facts whose attribute is not one token of the model's tokenizer, or whose subject no other
subject can replace, are dropped (and counted in the log). The list is for sweeps, not for
measuring what a model knows: a small model misses some of these facts.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass

from actpatch.corrupt import Replacement, WordSpan, replacements, token_span
from actpatch.models.model import Model, check_model
from actpatch.pairs import PairsError, PromptPairs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Relation:
    """One relation: a template with a {subject} slot, ending where the attribute comes next."""

    name: str
    template: str
    facts: tuple[
        tuple[str, str], ...
    ]  # (subject, attribute); attributes are words, spaced when prompted


RELATIONS: dict[str, Relation] = {
    r.name: r
    for r in (
        Relation(
            "landmark_city",
            "The {subject} is located in the city of",
            (
                ("Eiffel Tower", "Paris"),
                ("Louvre", "Paris"),
                ("Colosseum", "Rome"),
                ("Big Ben", "London"),
                ("Tower of London", "London"),
                ("Brandenburg Gate", "Berlin"),
                ("Kremlin", "Moscow"),
                ("Acropolis", "Athens"),
                ("Parthenon", "Athens"),
                ("Sagrada Familia", "Barcelona"),
                ("Hagia Sophia", "Istanbul"),
                ("Rialto Bridge", "Venice"),
                ("Charles Bridge", "Prague"),
                ("Burj Khalifa", "Dubai"),
                ("Prado Museum", "Madrid"),
                ("Space Needle", "Seattle"),
            ),
        ),
        Relation(
            "country_capital",
            "The capital city of {subject} is called",
            (
                ("France", "Paris"),
                ("Germany", "Berlin"),
                ("Italy", "Rome"),
                ("Spain", "Madrid"),
                ("Japan", "Tokyo"),
                ("Russia", "Moscow"),
                ("Greece", "Athens"),
                ("Canada", "Ottawa"),
                ("Austria", "Vienna"),
                ("Portugal", "Lisbon"),
                ("Norway", "Oslo"),
                ("Sweden", "Stockholm"),
                ("Ireland", "Dublin"),
                ("Kenya", "Nairobi"),
                ("Cuba", "Havana"),
                ("China", "Beijing"),
            ),
        ),
        Relation(
            "country_language",
            "The main language spoken in {subject} is",
            (
                ("France", "French"),
                ("Germany", "German"),
                ("Italy", "Italian"),
                ("Spain", "Spanish"),
                ("Japan", "Japanese"),
                ("Russia", "Russian"),
                ("Portugal", "Portuguese"),
                ("Brazil", "Portuguese"),
                ("Mexico", "Spanish"),
                ("Greece", "Greek"),
                ("Poland", "Polish"),
                ("Netherlands", "Dutch"),
                ("Turkey", "Turkish"),
                ("Egypt", "Arabic"),
                ("Sweden", "Swedish"),
            ),
        ),
        Relation(
            "athlete_sport",
            "{subject} is famous for playing the sport of",
            (
                ("Michael Jordan", "basketball"),
                ("Kobe Bryant", "basketball"),
                ("LeBron James", "basketball"),
                ("Serena Williams", "tennis"),
                ("Roger Federer", "tennis"),
                ("Tiger Woods", "golf"),
                ("Jack Nicklaus", "golf"),
                ("Lionel Messi", "football"),
                ("Cristiano Ronaldo", "football"),
                ("Babe Ruth", "baseball"),
                ("Derek Jeter", "baseball"),
                ("Wayne Gretzky", "hockey"),
                ("Mike Tyson", "boxing"),
                ("Muhammad Ali", "boxing"),
            ),
        ),
    )
}


@dataclass(frozen=True)
class _Fact:
    relation: Relation
    subject: str
    attribute: str
    text: str
    span: WordSpan
    length: int
    others: tuple[Replacement, ...]  # the subjects that can replace this one


def factual_recall(
    model: Model,
    n: int = 32,
    *,
    seed: int = 0,
    relations: Sequence[str] | None = None,
) -> PromptPairs:
    """`n` factual-recall prompt pairs, the subject corrupted by symmetric token replacement.

    Prompts in one batch share a token length, so only the facts of the most common length for
    this tokenizer are used (logged); with few facts of that length, facts repeat, each time with
    a freshly drawn replacement. `relations` picks among `RELATIONS` (default: all)."""
    check_model(model)
    if not isinstance(n, int) or n < 1:
        raise PairsError(f"n must be a positive integer, got {n!r}")
    chosen = list(RELATIONS) if relations is None else list(relations)
    if unknown := [r for r in chosen if r not in RELATIONS]:
        raise PairsError(f"unknown relation {unknown[0]!r}; choose among {sorted(RELATIONS)}")
    facts = [fact for name in chosen for fact in _usable_facts(model, RELATIONS[name])]
    if not facts:
        raise PairsError(
            f"no fact of {chosen} has a one-token attribute and a same-length replacement "
            f"subject for {model.name}"
        )
    facts = _of_most_common_length(facts)
    rng = random.Random(seed)
    order = rng.sample(facts, len(facts))
    if n > len(order):
        log.info(
            "factual recall: %d prompts from %d facts; facts repeat with other replacements",
            n,
            len(order),
        )
    drawn = [order[i % len(order)] for i in range(n)]
    others = [rng.choice(fact.others) for fact in drawn]
    return PromptPairs.from_strings(
        model,
        [f.text for f in drawn],
        [r.text for r in others],
        [" " + f.attribute for f in drawn],
        [" " + dict(f.relation.facts)[r.word] for f, r in zip(drawn, others)],
        positions={
            "SUBJ_FIRST": [f.span.first for f in drawn],
            "SUBJ_LAST": [f.span.last for f in drawn],
            "END": [f.length - 1 for f in drawn],
        },
        corruption="str",
        task="factual",
        seed=seed,
    )


def _usable_facts(model: Model, relation: Relation) -> list[_Fact]:
    """The relation's facts with a one-token attribute and at least one symmetric replacement."""
    one_token = [(s, a) for s, a in relation.facts if len(_ids(model, " " + a)) == 1]
    usable = []
    for subject, attribute in one_token:
        text = relation.template.format(subject=subject)
        span = token_span(model, text, subject)
        others = replacements(model, text, span, [s for s, a in one_token if a != attribute])
        if others:
            usable.append(
                _Fact(
                    relation,
                    subject,
                    attribute,
                    text,
                    span,
                    len(_ids(model, text, special=True)),
                    tuple(others),
                )
            )
    if dropped := len(relation.facts) - len(usable):
        log.info(
            "factual recall: dropped %d of %d %s facts for %s (%d attributes not one token; the rest "
            "without a same-length subject to swap in)",
            dropped,
            len(relation.facts),
            relation.name,
            model.name,
            len(relation.facts) - len(one_token),
        )
    return usable


def _of_most_common_length(facts: list[_Fact]) -> list[_Fact]:
    counts: dict[int, int] = {}
    for fact in facts:
        counts[fact.length] = counts.get(fact.length, 0) + 1
    common = max(counts, key=lambda length: (counts[length], -length))
    kept = [f for f in facts if f.length == common]
    if len(kept) < len(facts):
        log.info(
            "factual recall: using %d of %d facts (those of %d tokens for this tokenizer)",
            len(kept),
            len(facts),
            common,
        )
    return kept


def _ids(model: Model, text: str, *, special: bool = False) -> list[int]:
    return list(model.tokenizer(text, add_special_tokens=special)["input_ids"])


__all__ = ["RELATIONS", "Relation", "factual_recall"]

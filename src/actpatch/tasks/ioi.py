"""Indirect Object Identification (Wang et al. 2022): "When Mary and John went to the store, John
gave a drink to" -> " Mary".

Prompts come from templates in both name orders (ABBA: subject first; BABA: indirect object
first), with names, places and objects kept only where they are single tokens of the model's
tokenizer. The corruption (see `actpatch.corrupt`) decides what a sweep traces. Named positions,
per prompt: S1 and IO (first mentions), S2 (the repeated subject), VERB (the token after S2:
"gave", "decided", ...), END (the last token).
"""

from __future__ import annotations

import logging
import random
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal

from actpatch.corrupt import IOI_CORRUPTIONS, IoiPrompt, ioi_corruption
from actpatch.models.model import Model, check_model
from actpatch.pairs import PairsError, PromptPairs

log = logging.getLogger(__name__)

Order = Literal["mixed", "abba", "baba"]  # ABBA and BABA alternating, or one of them

# {N1} and {N2} are the first two names (S and IO in ABBA order, IO and S in BABA); {S2} repeats S.
TEMPLATES = (
    "Then, {N1} and {N2} went to the {place}. {S2} gave a {object} to",
    "Then, {N1} and {N2} had a lot of fun at the {place}. {S2} gave a {object} to",
    "Then, {N1} and {N2} were working at the {place}. {S2} decided to give a {object} to",
    "Then, {N1} and {N2} were thinking about going to the {place}. {S2} wanted to give a {object} to",
    "After {N1} and {N2} went to the {place}, {S2} gave a {object} to",
    "When {N1} and {N2} got a {object} at the {place}, {S2} decided to give it to",
    "While {N1} and {N2} were working at the {place}, {S2} gave a {object} to",
    "While {N1} and {N2} were commuting to the {place}, {S2} gave a {object} to",
    "After the lunch, {N1} and {N2} went to the {place}. {S2} gave a {object} to",
    "Afterwards, {N1} and {N2} went to the {place}. {S2} gave a {object} to",
    "Friends {N1} and {N2} found a {object} at the {place}. {S2} gave it to",
    "When {N1} and {N2} went to the {place}, {S2} gave a {object} to",
    "When {N1} and {N2} arrived at the {place}, {S2} handed a {object} to",
    "Once {N1} and {N2} reached the {place}, {S2} passed a {object} to",
)
NAMES = (
    "John",
    "Mary",
    "Tom",
    "Anna",
    "James",
    "Sarah",
    "David",
    "Emma",
    "Paul",
    "Laura",
    "Mark",
    "Lucy",
    "Peter",
    "Kate",
    "Michael",
    "Alice",
    "Daniel",
    "Rachel",
    "Jack",
    "Sophie",
    "Ryan",
    "Emily",
    "Adam",
    "Grace",
    "Luke",
    "Hannah",
    "Chris",
    "Amy",
    "Tim",
    "Rose",
    "Ben",
    "Claire",
    "Sam",
    "Helen",
    "Max",
    "Julia",
    "Dan",
    "Ellen",
    "George",
    "Ruth",
)
PLACES = (
    "store",
    "park",
    "office",
    "house",
    "school",
    "garden",
    "restaurant",
    "hospital",
    "station",
    "beach",
    "library",
)
# One template, one name order: every prompt has its names at the same token indices, so a sweep
# over every position reads the same role at each index (what a layer × position table needs).
CLASSIC = ("When {N1} and {N2} went to the {place}, {S2} gave a {object} to",)
OBJECTS = (
    "drink",
    "ball",
    "letter",
    "book",
    "ring",
    "bottle",
    "necklace",
    "snack",
    "gift",
    "computer",
)


def ioi(
    model: Model,
    n: int = 32,
    *,
    corruption: str = "abc",
    seed: int = 0,
    order: Order = "mixed",
    templates: Sequence[str] | None = None,
) -> PromptPairs:
    """`n` IOI prompt pairs under the named corruption, ABBA and BABA alternating (`order="mixed"`).

    Corruptions: "abc" (all three names replaced), "s2" (only the repeated subject), "s1" (only
    the subject's first mention), "io_s_swap" (subject and indirect object trade places),
    "random" (new names, same structure). Prompts in one batch share a token length, so only the
    templates of the most common length for this tokenizer are used (logged), or `templates`.
    Mixed orders and templates put a role at different indices in different prompts: sweep them
    at named positions (`positions=["S1", "IO", "S2", "END"]`). For a sweep over every position,
    use `order="abba", templates=CLASSIC`; for every template, `ioi_groups`."""
    texts, labels = _prompts(
        model,
        n,
        one_length=True,
        corruption=corruption,
        seed=seed,
        order=order,
        templates=templates,
    )
    return PromptPairs.from_strings(model, *texts, task="ioi", **labels)


def ioi_groups(model: Model, n: int = 32, **settings: Any) -> list[PromptPairs]:
    """`n` IOI prompt pairs from every template, as one PromptPairs per token length; `settings`
    are `ioi`'s (`corruption`, `seed`, `order`, `templates`).

    `ap.sweep(model, ioi_groups(model), site, positions=["S2", "END"])` sweeps them all and pools
    the groups exactly; use it when the templates of one length are too few for the variety you want."""
    texts, labels = _prompts(model, n, one_length=False, **settings)
    return PromptPairs.groups_from_strings(model, *texts, task="ioi_groups", **labels)


def _prompts(
    model: Model,
    n: int,
    *,
    one_length: bool,
    corruption: str = "abc",
    seed: int = 0,
    order: Order = "mixed",
    templates: Sequence[str] | None = None,
) -> tuple[list[list[str]], dict[str, Any]]:
    """Clean and corrupt texts, answers and wrong answers; and `from_strings`'s labels: named
    positions, the corruption's name, the seed."""
    check_model(model)
    if order not in ("mixed", "abba", "baba"):
        raise PairsError(f"order must be 'mixed', 'abba' or 'baba', got {order!r}")
    if not isinstance(n, int) or n < 1:
        raise PairsError(f"n must be a positive integer, got {n!r}")
    scheme = ioi_corruption(corruption)
    names, places, objects = (_single_tokens(model, words) for words in (NAMES, PLACES, OBJECTS))
    if len(names) < 6 or not places or not objects:
        raise PairsError(
            f"too few IOI words are single tokens for {model.name}: {len(names)} names, "
            f"{len(places)} places, {len(objects)} objects"
        )
    templates = list(templates or TEMPLATES)
    if one_length:
        templates = _templates_of_one_length(model, templates, names[0], places[0], objects[0])
    # The corruption draws from its own stream: the clean prompts depend only on (n, seed), so two
    # corruptions of one seed corrupt the same clean prompts and can be compared prompt by prompt.
    rng, corrupt_rng = random.Random(seed), random.Random(f"{seed}-corrupt")
    clean, corrupt = [], []
    for i in range(n):
        subject, indirect = rng.sample(names, 2)
        abba = i % 2 == 0 if order == "mixed" else order == "abba"
        prompt = IoiPrompt(
            templates[i % len(templates)],
            subject,
            indirect,
            abba=abba,
            place=rng.choice(places),
            object=rng.choice(objects),
        )
        clean.append(prompt)
        corrupt.append(scheme.corrupt(prompt, names, corrupt_rng))
    positions = {name: [_position(model, p, name) for p in clean] for name in ("S1", "IO", "S2")}
    positions["VERB"] = [
        s2 + 1 for s2 in positions["S2"]
    ]  # every template follows S2 with its verb
    positions["END"] = [len(model.tokenizer(p.text)["input_ids"]) - 1 for p in clean]
    texts = [
        [p.text for p in clean],
        [p.text for p in corrupt],
        [" " + p.indirect for p in clean],
        [" " + p.subject for p in clean],
    ]
    return texts, {"positions": positions, "corruption": scheme.name, "seed": seed}


def _single_tokens(model: Model, words: tuple[str, ...]) -> list[str]:
    kept = [
        w
        for w in words
        if len(model.tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1
    ]
    if dropped := len(words) - len(kept):
        log.info(
            "IOI: dropped %d of %d words that are not single tokens for %s",
            dropped,
            len(words),
            model.name,
        )
    return kept


def _templates_of_one_length(
    model: Model, templates: Sequence[str], name: str, place: str, thing: str
) -> list[str]:
    lengths = {
        t: len(model.tokenizer(IoiPrompt(t, name, name, True, place, thing).text)["input_ids"])
        for t in templates
    }
    common, _ = Counter(lengths.values()).most_common(1)[0]
    chosen = [t for t in templates if lengths[t] == common]
    if len(chosen) < len(templates):
        log.info(
            "IOI: using %d of %d templates (those of %d tokens for this tokenizer)",
            len(chosen),
            len(templates),
            common,
        )
    return chosen


def _position(model: Model, prompt: IoiPrompt, which: str) -> int:
    """Index of a name's token: the last token of the prompt cut just after that name."""
    return len(model.tokenizer(prompt.text_up_to(which))["input_ids"]) - 1


def ioi_pairs(model: Model, n: int = 8, *, seed: int = 0) -> PromptPairs:
    """The classic aligned batch: one template, ABBA, all three names replaced (ABC)."""
    return ioi(model, n, corruption="abc", seed=seed, order="abba", templates=CLASSIC)


__all__ = ["CLASSIC", "IOI_CORRUPTIONS", "TEMPLATES", "ioi", "ioi_groups", "ioi_pairs"]

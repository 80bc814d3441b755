"""Indirect Object Identification (Wang et al. 2022): a small hand-written batch.

"When John and Mary went to the store, John gave a drink to" -> " Mary". The corruption here
replaces all three names with unrelated ones (ABC), which traces everything name-related.
Named positions: S1, IO (first mentions), S2 (the repeated subject), END (the last token)."""
from __future__ import annotations

import random

from actpatch.models.model import Model
from actpatch.pairs import PairsError, PromptPairs

TEMPLATES = (
    "When {A} and {B} went to the store, {C} gave a drink to",
    "When {A} and {B} went to the park, {C} gave a ball to",
    "After {A} and {B} went to the office, {C} handed a letter to",
    "While {A} and {B} were at the house, {C} gave a book to",
)
NAMES = (
    "John", "Mary", "Tom", "Anna", "James", "Sarah", "David", "Emma", "Paul", "Laura",
    "Mark", "Lucy", "Peter", "Kate", "Michael", "Alice",
)


def ioi_pairs(model: Model, n: int = 8, *, seed: int = 0) -> PromptPairs:
    """`n` IOI prompts (ABBA order) with their ABC-corrupted twins, answers, and named positions."""
    if n < 1:
        raise PairsError(f"n must be at least 1, got {n}")
    names = [name for name in NAMES if len(model.tokenizer(" " + name, add_special_tokens=False)["input_ids"]) == 1]
    if len(names) < 5:
        raise PairsError(f"only {len(names)} of the IOI names are single tokens for {model.name}; need at least 5")
    rng = random.Random(seed)
    clean, corrupt, answers, wrong = [], [], [], []
    positions: dict[str, list[int]] = {"S1": [], "IO": [], "S2": [], "END": []}
    for i in range(n):
        template = TEMPLATES[i % len(TEMPLATES)]
        subject, indirect, *others = rng.sample(names, 5)
        clean.append(template.format(A=subject, B=indirect, C=subject))
        corrupt.append(template.format(A=others[0], B=others[1], C=others[2]))
        answers.append(" " + indirect)
        wrong.append(" " + subject)
        filled = {"A": subject, "B": indirect, "C": subject}
        for key, field in (("S1", "A"), ("IO", "B"), ("S2", "C")):
            # A name's index is the last token of the prompt cut just after it.
            prefix = template[: template.index("{" + field + "}")].format(**filled) + filled[field]
            positions[key].append(len(model.tokenizer(prefix)["input_ids"]) - 1)
        positions["END"].append(len(model.tokenizer(clean[-1])["input_ids"]) - 1)
    return PromptPairs.from_strings(model, clean, corrupt, answers, wrong, positions=positions)


"""Greater-than (Hanna et al. 2023): "The war lasted from the year 1732 to the year 17" -> a year
after 32.

The answer is the model's next token after the prompt, whatever the tokenizer makes of a year:
GPT-2 style tokenizers keep "32" as one token, so the next token is two digits; SmolLM2 and
LLaMA-style tokenizers split digits, so the next token is the tens digit alone. One rule serves
both: the answer is the first token of the year a decade later (YY+10: "42", or "4" for 1740-49)
and the wrong answer the first token of the year a decade earlier (YY-10: "22", or "2"). Every
year either token can begin is greater than YY, or not greater, so neither is ambiguous; a
same-decade year ("3" for 1733-39) would be, under digit tokenizers. The paper's metric sums
probabilities over all years on each side; one answer against one wrong answer is the logit
difference every actpatch metric needs.

Corruption "01" (as in the paper): YY becomes 01, a start year after which both answers are
equally plausible. YY is drawn from 10-89 (so YY±10 are two-digit years) and never ends in 1, so
that 01 changes every one of the year's tokens: otherwise, under digit tokenizers, the units digit
would be equal in both runs and a patch at YY a no-op. Named positions: YY_FIRST and YY (the first
and last tokens of the clean year's YY), END.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

from actpatch.models.model import Model, check_model
from actpatch.pairs import PairsError, PromptPairs

log = logging.getLogger(__name__)

TEMPLATE = "The {noun} lasted from the year 17{yy} to the year 17"
CORRUPT_YY = "01"
# From the paper's list of event nouns; kept only where one token (after a space) for the tokenizer,
# so every noun puts the year at the same token indices.
NOUNS = (
    "war",
    "dynasty",
    "reign",
    "siege",
    "trial",
    "voyage",
    "journey",
    "expedition",
    "marriage",
    "rivalry",
    "treaty",
    "plague",
    "campaign",
    "kingdom",
    "pilgrimage",
    "quest",
    "riot",
    "tour",
    "invasion",
    "project",
    "study",
    "program",
    "deal",
    "contract",
    "friendship",
    "romance",
    "illness",
    "epidemic",
    "outbreak",
    "trip",
)
YEARS = tuple(yy for yy in range(10, 90) if yy % 10 != 1)


@dataclass(frozen=True)
class _Year:
    yy: int
    first: int  # the clean year's YY tokens, first..last
    last: int
    answer: str
    wrong: str


def greater_than(model: Model, n: int = 32, *, seed: int = 0) -> PromptPairs:
    """`n` greater-than prompt pairs with YY corrupted to 01; answer and wrong answer a decade
    after and before YY (see the module docstring for why, under either kind of tokenizer)."""
    check_model(model)
    if not isinstance(n, int) or n < 1:
        raise PairsError(f"n must be a positive integer, got {n!r}")
    nouns = [
        w
        for w in NOUNS
        if len(model.tokenizer(" " + w, add_special_tokens=False)["input_ids"]) == 1
    ]
    if len(nouns) < len(NOUNS):
        log.info(
            "greater-than: dropped %d of %d nouns that are not single tokens for %s",
            len(NOUNS) - len(nouns),
            len(NOUNS),
            model.name,
        )
    if not nouns:
        raise PairsError(f"none of the greater-than nouns is a single token for {model.name}")
    years = [y for y in (_year(model, nouns[0], yy) for yy in YEARS) if y is not None]
    if len(years) < len(YEARS):
        log.info(
            "greater-than: dropped %d of %d years whose tokens do not line up with 01's, or whose "
            "answers are not single tokens, for %s",
            len(YEARS) - len(years),
            len(YEARS),
            model.name,
        )
    if not years:
        raise PairsError(
            f"no year 17YY tokenizes so that YY and its corruption 01 take the same tokens "
            f"for {model.name}"
        )
    rng = random.Random(seed)
    drawn = [(rng.choice(nouns), rng.choice(years)) for _ in range(n)]
    clean = [TEMPLATE.format(noun=noun, yy=f"{y.yy:02d}") for noun, y in drawn]
    return PromptPairs.from_strings(
        model,
        clean,
        [TEMPLATE.format(noun=noun, yy=CORRUPT_YY) for noun, _ in drawn],
        [y.answer for _, y in drawn],
        [y.wrong for _, y in drawn],
        positions={
            "YY_FIRST": [y.first for _, y in drawn],
            "YY": [y.last for _, y in drawn],
            "END": [len(_ids(model, text)) - 1 for text in clean],
        },
        corruption="01",
        task="greater_than",
        seed=seed,
    )


def _year(model: Model, noun: str, yy: int) -> _Year | None:
    """YY's tokens and answers, or None where the tokenizer does not let this year be used."""
    prefix = f"The {noun} lasted from the year 17"
    clean = TEMPLATE.format(noun=noun, yy=f"{yy:02d}")
    clean_ids, corrupt_ids = (
        _ids(model, clean),
        _ids(model, TEMPLATE.format(noun=noun, yy=CORRUPT_YY)),
    )
    before, through = _ids(model, prefix), _ids(model, prefix + f"{yy:02d}")
    if (
        clean_ids[: len(before)] != before
        or clean_ids[: len(through)] != through
        or len(through) == len(before)
    ):
        return None  # "17" and YY share a token: YY has no tokens of its own
    first, last = len(before), len(through) - 1
    changed = [i for i, (a, b) in enumerate(zip(clean_ids, corrupt_ids)) if a != b]
    if len(corrupt_ids) != len(clean_ids) or set(changed) != set(range(first, last + 1)):
        return None
    answer, wrong = (
        _next_token(model, clean, f"{yy + 10:02d}"),
        _next_token(model, clean, f"{yy - 10:02d}"),
    )
    if answer is None or wrong is None or min(_years(answer)) <= yy or max(_years(wrong)) > yy:
        return None
    return _Year(yy, first, last, answer, wrong)


def _next_token(model: Model, prompt: str, continuation: str) -> str | None:
    """The token the prompt continues with when followed by `continuation`, if it is digits and
    tokenizes alone to the same id (answers are tokenized alone)."""
    ids, more = _ids(model, prompt), _ids(model, prompt + continuation)
    if more[: len(ids)] != ids or len(more) == len(ids):
        return None
    piece = model.tokenizer.decode([more[len(ids)]])
    if not (piece.isdigit() and len(piece) <= 2):
        return None
    if model.tokenizer(piece, add_special_tokens=False)["input_ids"] != [more[len(ids)]]:
        return None
    return piece


def _years(piece: str) -> range:
    """The two-digit years a token can begin: "42" only 42, "4" any of 40-49."""
    return (
        range(int(piece), int(piece) + 1)
        if len(piece) == 2
        else range(int(piece) * 10, int(piece) * 10 + 10)
    )


def _ids(model: Model, text: str) -> list[int]:
    return list(model.tokenizer(text)["input_ids"])


__all__ = ["NOUNS", "TEMPLATE", "YEARS", "greater_than"]

"""Induction (Olsson et al. 2022): a random token sequence, then its first `repeat` tokens again;
the answer is the token that came next the first time.

    clean:   [BOS] t0 t1 ... t(L-1) t0 ... t(k-1)   -> t(k)
    corrupt: [BOS] t0 ... t(k-1) r t(k+1) ... t(L-1) t0 ... t(k-1)   -> r

The corrupt prompt changes one token: the one after the first occurrence of the current token,
so an induction head that attends there and copies reads r instead of t(k), and the corrupt
run's own induction answer r is the wrong answer. Named positions: PREV_CURRENT (the first
occurrence of the current token), PREV_ANSWER (the token after it, the only one corrupted), END
(the current token, last). BOS is there where the tokenizer adds one by default.

Tokens are drawn, with `random.Random(seed)`, from "ordinary" tokens: a space and three or more
lowercase letters, not special, each its own token alone and in the prompt. Such tokens cannot
merge with their neighbours, so prompts survive the round trip through text that
`PromptPairs.from_strings` makes; every prompt is checked all the same. All tokens in a prompt
are distinct, so each token's first occurrence is unambiguous.
"""

from __future__ import annotations

import logging
import random
import re

from actpatch.models.model import Model, check_model
from actpatch.pairs import PairsError, PromptPairs

log = logging.getLogger(__name__)

_ORDINARY = re.compile(r"^ [a-z]{3,}$")


def induction(
    model: Model, n: int = 32, *, length: int = 20, repeat: int = 10, seed: int = 0
) -> PromptPairs:
    """`n` induction prompt pairs: `length` random tokens, then their first `repeat` again."""
    check_model(model)
    if not isinstance(n, int) or n < 1:
        raise PairsError(f"n must be a positive integer, got {n!r}")
    if not (isinstance(length, int) and isinstance(repeat, int) and 1 <= repeat < length):
        raise PairsError(
            f"need 1 <= repeat < length (the answer is the token at index `repeat` of the "
            f"sequence); got length={length!r}, repeat={repeat!r}"
        )
    pool = ordinary_tokens(model)
    if len(pool) < length + 1:
        raise PairsError(
            f"{model.name}'s tokenizer has {len(pool)} ordinary word tokens; induction with "
            f"length={length} needs {length + 1} distinct ones"
        )
    rng = random.Random(seed)
    offset = len(model.tokenizer("")["input_ids"])  # BOS, where the tokenizer adds one
    clean, corrupt, answers, wrong = [], [], [], []
    for _ in range(n):
        *sequence, other = _draw(model, pool, length + 1, repeat, rng)
        changed = [*sequence[:repeat], other, *sequence[repeat + 1 :]]
        clean.append("".join(sequence + sequence[:repeat]))
        corrupt.append("".join(changed + sequence[:repeat]))
        answers.append(sequence[repeat])
        wrong.append(other)
    return PromptPairs.from_strings(
        model,
        clean,
        corrupt,
        answers,
        wrong,
        positions={
            "PREV_CURRENT": [offset + repeat - 1] * n,
            "PREV_ANSWER": [offset + repeat] * n,
            "END": [offset + length + repeat - 1] * n,
        },
        corruption="induction_prev_answer",
        task="induction",
        seed=seed,
    )


def ordinary_tokens(model: Model) -> list[str]:
    """Word tokens (" " + lowercase letters, 3 or more) that tokenize alone to themselves, by id."""
    tokenizer = model.tokenizer
    special = set(tokenizer.all_special_ids)
    ids = sorted(set(tokenizer.get_vocab().values()) - special)
    pieces = tokenizer.batch_decode([[i] for i in ids])
    words = [(i, piece) for i, piece in zip(ids, pieces) if _ORDINARY.match(piece)]
    return [
        piece
        for i, piece in words
        if tokenizer(piece, add_special_tokens=False)["input_ids"] == [i]
    ]


def _draw(model: Model, pool: list[str], count: int, repeat: int, rng: random.Random) -> list[str]:
    """`count` distinct tokens whose clean and corrupt prompts tokenize back to one token each."""
    for _ in range(100):
        words = rng.sample(pool, count)
        *sequence, other = words
        texts = (
            "".join(sequence + sequence[:repeat]),
            "".join([*sequence[:repeat], other, *sequence[repeat + 1 :], *sequence[:repeat]]),
        )
        expected = (
            [_id(model, w) for w in sequence + sequence[:repeat]],
            [
                _id(model, w)
                for w in [*sequence[:repeat], other, *sequence[repeat + 1 :], *sequence[:repeat]]
            ],
        )
        if all(
            model.tokenizer(t, add_special_tokens=False)["input_ids"] == e
            for t, e in zip(texts, expected)
        ):
            return words
    raise PairsError(
        f"could not draw {count} ordinary tokens of {model.name} that keep their boundaries in a "
        "prompt in 100 tries"
    )


def _id(model: Model, piece: str) -> int:
    (token,) = model.tokenizer(piece, add_special_tokens=False)["input_ids"]
    return token


__all__ = ["induction", "ordinary_tokens"]

"""Corruption schemes: named ways to turn clean prompts into corrupt ones.

The corruption decides what a sweep traces. For IOI: replacing all three names ("abc") traces
everything name-related; replacing only the repeated subject ("s2") traces the duplicate-token
path; swapping subject and indirect object ("io_s_swap") keeps the names but changes their roles.
Each scheme changes only the tokens it names, and keeps every prompt's length (names are single
tokens), which the tests check by diffing token ids.

For any task, `symmetric_token_replacement` replaces one word by another of its class with the same
token length; factual recall corrupts its subjects this way. Generating prompts is not this
module's job: that is `actpatch.tasks`."""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

import torch

from actpatch.models.model import Model
from actpatch.pairs import PairsError, PromptPairs


@dataclass(frozen=True)
class IoiPrompt:
    """One IOI prompt's parts. `abba`: the subject is named first ("When S and IO ..., S gave")."""

    template: str
    subject: str
    indirect: str
    abba: bool
    place: str
    object: str
    s1: str | None = None  # the subject's first mention, when a corruption makes it differ
    s2: str | None = None  # the repeated subject, when a corruption makes it differ

    @property
    def fields(self) -> dict[str, str]:
        first = self.s1 or self.subject
        n1, n2 = (first, self.indirect) if self.abba else (self.indirect, first)
        return {
            "N1": n1,
            "N2": n2,
            "S2": self.s2 or self.subject,
            "place": self.place,
            "object": self.object,
        }

    @property
    def text(self) -> str:
        return self.template.format(**self.fields)

    def text_up_to(self, which: str) -> str:
        """The prompt cut just after the named position's word: S1, IO or S2."""
        slot = {"S1": "N1" if self.abba else "N2", "IO": "N2" if self.abba else "N1", "S2": "S2"}[
            which
        ]
        cut = self.template.index("{" + slot + "}")
        return self.template[:cut].format(**self.fields) + self.fields[slot]


@dataclass(frozen=True)
class Corruption:
    """A named corruption: what it changes, and the function that changes it."""

    name: str
    changes: str
    corrupt: Callable[[IoiPrompt, list[str], random.Random], IoiPrompt]


def _fresh(names: list[str], used: set[str], rng: random.Random, k: int) -> list[str]:
    return rng.sample([n for n in names if n not in used], k)


def _abc(p: IoiPrompt, names, rng) -> IoiPrompt:
    a, b, c = _fresh(names, {p.subject, p.indirect}, rng, 3)
    return replace(p, subject=a, indirect=b, s2=c)


def _s2(p: IoiPrompt, names, rng) -> IoiPrompt:
    (c,) = _fresh(names, {p.subject, p.indirect}, rng, 1)
    return replace(p, s2=c)


def _s1(p: IoiPrompt, names, rng) -> IoiPrompt:
    (c,) = _fresh(names, {p.subject, p.indirect}, rng, 1)
    return replace(p, s1=c)


def _io_s_swap(p: IoiPrompt, names, rng) -> IoiPrompt:
    return replace(p, subject=p.indirect, indirect=p.subject)


def _random(p: IoiPrompt, names, rng) -> IoiPrompt:
    a, b = _fresh(names, {p.subject, p.indirect}, rng, 2)
    return replace(p, subject=a, indirect=b)


IOI_CORRUPTIONS: dict[str, Corruption] = {
    c.name: c
    for c in (
        Corruption("abc", "S1, IO and S2 each replaced by an unrelated name", _abc),
        Corruption(
            "s2", "only S2, the repeated subject, replaced: traces duplicate-token detection", _s2
        ),
        Corruption("s1", "only S1, the subject's first mention, replaced", _s1),
        Corruption(
            "io_s_swap",
            "subject and indirect object exchanged everywhere: same names, roles swapped",
            _io_s_swap,
        ),
        Corruption(
            "random", "subject and indirect object replaced by new names, structure kept", _random
        ),
    )
}


def ioi_corruption(name: str) -> Corruption:
    """The IOI corruption called `name`; the error lists the ones there are."""
    if name not in IOI_CORRUPTIONS:
        raise PairsError(
            f"unknown IOI corruption {name!r}; choose one of: "
            + "; ".join(f"{c.name} ({c.changes})" for c in IOI_CORRUPTIONS.values())
        )
    return IOI_CORRUPTIONS[name]


# Symmetric token replacement (Zhang & Nanda 2024): a word is replaced by another of its class
# (a subject by a subject, a name by a name) that takes the same number of tokens, so that the
# corrupt prompt is in distribution and every other position keeps its token. Replacements are
# tested in context, by tokenizing the whole corrupt prompt: a candidate that merges with a
# neighbour or shifts a boundary is not symmetric, whatever its length alone.


@dataclass(frozen=True)
class WordSpan:
    """A word's place in a prompt: characters [start, end), its leading whitespace included, and
    tokens first..last (inclusive)."""

    start: int
    end: int
    first: int
    last: int
    lead: str  # the whitespace the word's first token carries, " " for byte-level word tokens
    word: str  # the word itself, without `lead`


@dataclass(frozen=True)
class Replacement:
    """One candidate standing in for a word: the corrupt prompt, its token ids, the word put in."""

    word: str
    text: str
    ids: tuple[int, ...]


def symmetric_token_replacement(
    model: Model,
    clean: PromptPairs | Sequence[str],
    position: str,
    candidates: Sequence[str] | Mapping[str, str],
    *,
    first: str | None = None,
    words: Sequence[str] | None = None,
    answers: Sequence[str] | None = None,
    wrong: Sequence[str] | None = None,
    seed: int = 0,
    corruption: str = "str",
) -> PromptPairs:
    """Prompt pairs whose corrupt prompts replace one word by a same-class candidate of the same
    token length, and differ from the clean ones only at that word's tokens.

    From `PromptPairs`: the word ends at the named `position` and starts at the named `first`
    (default: the same token, so a one-token word); clean prompts, answers and positions are kept.
    From clean strings: `words` names the word of each prompt (it must occur once, as a whole
    word) and `answers` the clean answers; the result names the word's last token `position` and,
    if given, its first token `first`.

    `candidates` as a mapping gives each candidate's own answer, which becomes the wrong answer
    (the corrupt prompt's correct answer); candidates whose answer is the clean answer are skipped.
    As a plain list, wrong answers are kept from the pairs or taken from `wrong`. A candidate is
    chosen per prompt with `random.Random(seed)` among those that fit."""
    rng = random.Random(seed)
    if isinstance(clean, PromptPairs):
        return _replace_in_pairs(
            model, clean, position, first or position, candidates, wrong, rng, corruption
        )
    return _replace_in_strings(
        model, list(clean), position, first, candidates, words, answers, wrong, rng, corruption
    )


def token_span(model: Model, text: str, word: str) -> WordSpan:
    """The tokens of `word`'s one occurrence in `text`, as a whole word with its leading space.

    Raises if the word is missing, occurs more than once (say which by token index instead), or
    does not begin and end on token boundaries (it is part of a longer token)."""
    word = word.strip()
    if not word:
        raise PairsError("the word to find is empty")
    pattern = (
        (r"(?<!\w)" if word[0].isalnum() else "")
        + re.escape(word)
        + (r"(?!\w)" if word[-1].isalnum() else "")
    )
    found = [m.start() for m in re.finditer(pattern, text)]
    if len(found) != 1:
        how = "does not occur" if not found else f"occurs {len(found)} times"
        raise PairsError(
            f"{word!r} {how} as a whole word in {text!r}; it must occur exactly once"
            + (" (give a token index instead)" if found else "")
        )
    start, end = found[0], found[0] + len(word)
    lead = " " if start > 0 and text[start - 1] == " " else ""
    start -= len(lead)
    return _span(model, text, start, end, lead, word)


def replacements(
    model: Model, text: str, span: WordSpan, candidates: Iterable[str]
) -> list[Replacement]:
    """Every candidate that can stand in for the word at `span` changing only the word's tokens.

    Kept in the order given; the word itself and candidates of another token length (in this
    context) are left out."""
    clean_ids = _ids(model, text)
    kept = []
    for candidate in candidates:
        word = candidate.strip()
        if not word or word == span.word:
            continue
        corrupt = text[: span.start] + span.lead + word + text[span.end :]
        ids = _ids(model, corrupt)
        if len(ids) != len(clean_ids):
            continue
        changed = [i for i, (a, b) in enumerate(zip(clean_ids, ids)) if a != b]
        if changed and span.first <= changed[0] and changed[-1] <= span.last:
            kept.append(Replacement(candidate, corrupt, tuple(ids)))
    return kept


def _replace_in_pairs(
    model, pairs: PromptPairs, position, first, candidates, wrong, rng, corruption
) -> PromptPairs:
    if pairs.clean_text is None:
        raise PairsError(
            "symmetric token replacement needs the prompts' text: build the pairs with "
            "PromptPairs.from_strings"
        )
    for name in {position, first}:
        if name not in pairs.positions:
            raise PairsError(
                f"no named position {name!r} in these pairs; they have {sorted(pairs.positions)}"
            )
    chosen, wrong_ids = [], []
    for row, text in enumerate(pairs.clean_text):
        ids = pairs.clean[row].tolist()
        span = _span_at(
            model,
            text,
            ids,
            int(pairs.positions[first][row]),
            int(pairs.positions[position][row]),
            row,
        )
        answer = [int(pairs.answers[row])]
        replacement = _choose(model, text, span, candidates, answer, rng, row)
        chosen.append(replacement)
        if isinstance(candidates, Mapping):
            wrong_ids.append(_single_token(model, candidates[replacement.word], row))
        elif wrong is not None:
            wrong_ids.append(_single_token(model, wrong[row], row))
        else:
            wrong_ids.append(int(pairs.wrong[row]))
    return replace(
        pairs,
        corrupt=torch.tensor([r.ids for r in chosen]),
        corrupt_text=tuple(r.text for r in chosen),
        wrong=torch.tensor(wrong_ids),
        corruption=corruption,
        corrupt_noise=None,  # the corrupt run is these tokens now, not the clean run plus noise
    )


def _replace_in_strings(
    model, clean, position, first, candidates, words, answers, wrong, rng, corruption
) -> PromptPairs:
    if words is None or answers is None:
        raise PairsError(
            "from strings, symmetric token replacement needs `words` (the word to replace in "
            "each prompt) and `answers` (each clean prompt's answer)"
        )
    if wrong is None and not isinstance(candidates, Mapping):
        raise PairsError(
            "wrong answers are missing: pass `wrong=`, or candidates as a mapping from each "
            "candidate to its own answer"
        )
    if len({len(clean), len(words), len(answers), len(wrong if wrong is not None else clean)}) != 1:
        raise PairsError(
            f"need one word, answer and wrong answer per prompt; got {len(clean)} prompts, "
            f"{len(words)} words, {len(answers)} answers"
        )
    spans = [token_span(model, text, word) for text, word in zip(clean, words)]
    chosen = [
        _choose(model, text, span, candidates, _ids(model, answer, special=False), rng, row)
        for row, (text, span, answer) in enumerate(zip(clean, spans, answers))
    ]
    wrongs = (
        [candidates[r.word] for r in chosen] if isinstance(candidates, Mapping) else list(wrong)
    )
    positions = {position: [s.last for s in spans]}
    if first is not None:
        positions[first] = [s.first for s in spans]
    return PromptPairs.from_strings(
        model,
        clean,
        [r.text for r in chosen],
        answers,
        wrongs,
        positions=positions,
        corruption=corruption,
    )


def _choose(model, text, span, candidates, answer_ids, rng, row) -> Replacement:
    fitting = replacements(model, text, span, candidates)
    if isinstance(candidates, Mapping):
        fitting = [
            r for r in fitting if _ids(model, candidates[r.word], special=False) != answer_ids
        ]
    if not fitting:
        raise PairsError(
            f"prompt {row}: no candidate can replace {span.word!r} ({span.last - span.first + 1} tokens) in "
            f"{text!r} changing only its tokens"
            + (" and the answer" if isinstance(candidates, Mapping) else "")
            + f"; tried {len(candidates)}. Add candidates of the same class and token length."
        )
    return rng.choice(fitting)


def _span(model, text, start, end, lead, word) -> WordSpan:
    ids = _ids(model, text)
    before, through = _ids(model, text[:start]), _ids(model, text[:end])
    if (
        ids[: len(before)] != before
        or ids[: len(through)] != through
        or len(through) <= len(before)
    ):
        raise PairsError(
            f"{word!r} in {text!r} does not begin and end on token boundaries "
            "(it shares a token with its neighbours); choose a whole word"
        )
    return WordSpan(start, end, len(before), len(through) - 1, lead, word)


def _span_at(model, text, ids, first, last, row) -> WordSpan:
    """The span of tokens first..last, found in the text by decoding them and checking each occurrence."""
    piece = model.tokenizer.decode(ids[first : last + 1])
    word = piece.lstrip()
    for match in re.finditer(re.escape(piece), text):
        start, end = match.start(), match.end()
        if len(_ids(model, text[:start])) == first and _ids(model, text[:end]) == ids[: last + 1]:
            return WordSpan(start, end, first, last, piece[: len(piece) - len(word)], word)
    raise PairsError(
        f"prompt {row}: tokens {first}..{last} ({piece!r}) cannot be found as text in {text!r}"
    )


def _ids(model: Model, text: str, *, special: bool = True) -> list[int]:
    return list(model.tokenizer(text, add_special_tokens=special)["input_ids"])


def _single_token(model: Model, text: str, row: int) -> int:
    ids = _ids(model, text, special=False)
    if len(ids) != 1:
        raise PairsError(f"prompt {row}: wrong answer {text!r} is {len(ids)} tokens, not one")
    return ids[0]

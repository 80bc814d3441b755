"""Corruption schemes: named ways to turn clean prompts into corrupt ones.

The corruption decides what a sweep traces. For IOI: replacing all three names ("abc") traces
everything name-related; replacing only the repeated subject ("s2") traces the duplicate-token
path; swapping subject and indirect object ("io_s_swap") keeps the names but changes their roles.
Each scheme changes only the tokens it names, and keeps every prompt's length (names are single
tokens), which the tests check by diffing token ids."""
from __future__ import annotations

import random
from dataclasses import dataclass, replace
from typing import Callable

from actpatch.pairs import PairsError


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
        return {"N1": n1, "N2": n2, "S2": self.s2 or self.subject, "place": self.place, "object": self.object}

    @property
    def text(self) -> str:
        return self.template.format(**self.fields)

    def text_up_to(self, which: str) -> str:
        """The prompt cut just after the named position's word: S1, IO or S2."""
        slot = {"S1": "N1" if self.abba else "N2", "IO": "N2" if self.abba else "N1", "S2": "S2"}[which]
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


IOI_CORRUPTIONS: dict[str, Corruption] = {c.name: c for c in (
    Corruption("abc", "S1, IO and S2 each replaced by an unrelated name", _abc),
    Corruption("s2", "only S2, the repeated subject, replaced: traces duplicate-token detection", _s2),
    Corruption("s1", "only S1, the subject's first mention, replaced", _s1),
    Corruption("io_s_swap", "subject and indirect object exchanged everywhere: same names, roles swapped", _io_s_swap),
    Corruption("random", "subject and indirect object replaced by new names, structure kept", _random),
)}


def ioi_corruption(name: str) -> Corruption:
    """The IOI corruption called `name`; the error lists the ones there are."""
    if name not in IOI_CORRUPTIONS:
        raise PairsError(f"unknown IOI corruption {name!r}; choose one of: " +
                         "; ".join(f"{c.name} ({c.changes})" for c in IOI_CORRUPTIONS.values()))
    return IOI_CORRUPTIONS[name]

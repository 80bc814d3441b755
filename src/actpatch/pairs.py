"""Prompt pairs: clean and corrupt prompts of equal length, with the answer each should produce.

Validation lives here so that every engine can trust its input: equal token lengths (a position
must mean the same thing in both runs), single-token answers, nothing empty."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from actpatch.models.model import Model
from actpatch.run import Run as Run  # re-exported: Run lived here before it moved to actpatch.run


class PairsError(ValueError):
    """Prompt pairs that cannot be patched as given; the message says how to fix them."""


@dataclass(frozen=True)
class PromptPairs:
    """Clean and corrupt token ids (batch, pos) with per-prompt answer and wrong-answer ids (batch,).

    `positions` names token positions per prompt (e.g. "IO" -> (batch,) indices) so that
    results and sites can say `pos="IO"` instead of an index."""

    clean: Tensor
    corrupt: Tensor
    answers: Tensor
    wrong: Tensor
    clean_text: tuple[str, ...] | None = None
    corrupt_text: tuple[str, ...] | None = None
    positions: dict[str, Tensor] = field(default_factory=dict)
    corruption: str | None = None  # the scheme that made the corrupt prompts, when one did
    # (batch, pos, d_model) added to the first layer's input of every corrupt run: the Gaussian-noise
    # corruption, whose corrupt tokens are the clean ones (see actpatch.noise).
    corrupt_noise: Tensor | None = None
    task: str | None = None  # the generator that made them ("ioi", "factual", ...), for provenance
    seed: int | None = None  # its seed

    def __post_init__(self) -> None:
        _validate_ids(self)

    def __len__(self) -> int:
        return self.clean.shape[0]

    def __getitem__(self, index: int | slice | Sequence[int] | Tensor) -> PromptPairs:
        """The pairs at `index` (`pairs[:4]`, `pairs[[0, 2]]`, `pairs[3]`), named positions, text and
        input noise included; always a batch, so `pairs[3]` is one pair."""
        rows = torch.arange(len(self))[index].reshape(-1)
        if rows.numel() == 0:
            raise PairsError(f"pairs[{index!r}] selects no prompts; these pairs hold {len(self)}")
        picked = [int(i) for i in rows]

        def texts(values: tuple[str, ...] | None) -> tuple[str, ...] | None:
            return None if values is None else tuple(values[i] for i in picked)

        return dataclasses.replace(
            self,
            clean=self.clean[rows],
            corrupt=self.corrupt[rows],
            answers=self.answers[rows],
            wrong=self.wrong[rows],
            clean_text=texts(self.clean_text),
            corrupt_text=texts(self.corrupt_text),
            positions={name: where[rows] for name, where in self.positions.items()},
            corrupt_noise=None if self.corrupt_noise is None else self.corrupt_noise[rows],
        )

    def __repr__(self) -> str:
        about = [f"{len(self)} prompts × {self.seq_len} tokens"]
        about += [
            f"{name}={value!r}"
            for name, value in (("task", self.task), ("corruption", self.corruption))
            if value
        ]
        if self.positions:
            about.append(f"positions=[{', '.join(self.positions)}]")
        if self.corrupt_noise is not None:
            about.append("input noise on the corrupt run")
        lines = [f"PromptPairs({', '.join(about)})"]
        if self.clean_text:
            lines += [
                f"  clean[0]:   {self.clean_text[0]!r}",
                f"  corrupt[0]: {self.corrupt_text[0]!r}",
            ]
        return "\n".join(lines)

    @property
    def seq_len(self) -> int:
        return self.clean.shape[1]

    @property
    def clean_run(self) -> Run:
        """The clean prompts as a `Run` (what `capture`, `patch` and `hooks.last_logits` take)."""
        return Run(self.clean, None, self.positions, "clean")

    @property
    def corrupt_run(self) -> Run:
        """The corrupt prompts as a `Run`: with a noise corruption, the clean tokens plus their input noise."""
        return Run(self.corrupt, self.corrupt_noise, self.positions, "corrupt")

    @classmethod
    def groups_from_strings(
        cls,
        model: Model,
        clean: Sequence[str],
        corrupt: Sequence[str],
        answers: Sequence[str],
        wrong: Sequence[str],
        *,
        positions: dict[str, Sequence[int]] | None = None,
        **labels: str | int | None,
    ) -> list[PromptPairs]:
        """Prompts of different token lengths as one PromptPairs per length (shortest first, order
        kept within each), for `sweep`, which pools the groups exactly at named positions.
        `labels` (`corruption`, `task`, `seed`) are `from_strings`'s, given to every group."""
        clean_ids, _ = _checked_tokens(model, clean, corrupt, answers, wrong)
        for what, words in (("answer", answers), ("wrong answer", wrong)):
            for i, word in enumerate(
                words
            ):  # here, so that errors name the prompt's index in the input
                _single_token(model, word, what, i)
        lengths = [len(ids) for ids in clean_ids]
        groups = []
        for length in sorted(set(lengths)):
            members = [i for i, n in enumerate(lengths) if n == length]

            def pick(values: Sequence, members: list[int] = members) -> list:
                return [values[i] for i in members]

            groups.append(
                cls.from_strings(
                    model,
                    pick(clean),
                    pick(corrupt),
                    pick(answers),
                    pick(wrong),
                    positions={
                        name: pick(list(where)) for name, where in (positions or {}).items()
                    },
                    **labels,
                )
            )
        return groups

    @classmethod
    def from_strings(
        cls,
        model: Model,
        clean: Sequence[str],
        corrupt: Sequence[str],
        answers: Sequence[str],
        wrong: Sequence[str],
        *,
        positions: dict[str, Sequence[int]] | None = None,
        corruption: str | None = None,
        task: str | None = None,
        seed: int | None = None,
    ) -> PromptPairs:
        """Tokenize with the model's tokenizer defaults; answers must be single tokens (mind the leading space)."""
        clean_ids, corrupt_ids = _checked_tokens(model, clean, corrupt, answers, wrong)
        if len({len(a) for a in clean_ids}) != 1:
            lengths = sorted({len(a) for a in clean_ids})
            raise PairsError(
                f"prompts have different token lengths {lengths}; a batch needs one length. "
                "Use PromptPairs.groups_from_strings, which groups them by length for a sweep at named positions."
            )
        return cls(
            clean=torch.tensor(clean_ids),
            corrupt=torch.tensor(corrupt_ids),
            answers=torch.tensor(
                [_single_token(model, a, "answer", i) for i, a in enumerate(answers)]
            ),
            wrong=torch.tensor(
                [_single_token(model, w, "wrong answer", i) for i, w in enumerate(wrong)]
            ),
            clean_text=tuple(clean),
            corrupt_text=tuple(corrupt),
            positions={
                k: torch.as_tensor(v, dtype=torch.long) for k, v in (positions or {}).items()
            },
            corruption=corruption,
            task=task,
            seed=seed,
        )


def _checked_tokens(
    model: Model, clean, corrupt, answers, wrong
) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of every prompt, after checking the lists line up and each pair has one length."""
    if isinstance(clean, str) or isinstance(corrupt, str):
        raise PairsError(
            "clean and corrupt must be lists of prompts, not a single string: wrap it in [...]"
        )
    counts = {
        "clean": len(clean),
        "corrupt": len(corrupt),
        "answers": len(answers),
        "wrong": len(wrong),
    }
    if len(set(counts.values())) != 1:
        raise PairsError(
            f"need one clean, corrupt, answer and wrong answer per prompt; got {counts}"
        )
    if not clean:
        raise PairsError("no prompts given: pass at least one clean/corrupt pair")
    for name, texts in (
        ("clean", clean),
        ("corrupt", corrupt),
        ("answer", answers),
        ("wrong answer", wrong),
    ):
        if odd := [i for i, t in enumerate(texts) if not isinstance(t, str)]:
            raise PairsError(
                f"{name} {odd[0]} is {type(texts[odd[0]]).__name__} {texts[odd[0]]!r}, not a string; "
                "pass text here (PromptPairs(...) takes token ids)"
            )
    for name, texts in (("clean", clean), ("corrupt", corrupt)):
        if empty := [i for i, t in enumerate(texts) if not t.strip()]:
            raise PairsError(f"{name} prompt {empty[0]} is empty")
    for name, words in (("answer", answers), ("wrong answer", wrong)):  # both read after the prompt
        for i, (word, prompt) in enumerate(zip(words, clean)):
            if (spaced := unspaced_answer(model, prompt, word)) is not None:
                raise PairsError(f"prompt {i}: {name} {word!r} {missing_space(prompt, spaced)}")
    clean_ids = [_tokens(model, t) for t in clean]
    corrupt_ids = [_tokens(model, t) for t in corrupt]
    for i, (a, b) in enumerate(zip(clean_ids, corrupt_ids)):
        if len(a) != len(b):
            raise PairsError(
                f"prompt {i}: clean has {len(a)} tokens and corrupt has {len(b)}: {clean[i]!r} vs {corrupt[i]!r}. "
                "Positions must mean the same thing in both runs: pick a corruption whose replacement "
                "tokenizes to the same number of tokens (e.g. a name that is one token, like the original)."
            )
    return clean_ids, corrupt_ids


# After these, a word follows a space: "...gave a drink to" is followed by " Mary", not "Mary".
_SPACED_AFTER = ",.;:!?)"


def unspaced_answer(model: Model, prompt: str, answer: str) -> str | None:
    """`answer` with its leading space, when it was given without one and surely meant with it.

    A word after a prompt that ends in a word or punctuation is the word's space-prefixed token for
    byte-level tokenizers (" Mary"); the bare form ("Mary") is another token the model rarely
    predicts there, so every normalised number would trace the wrong token. Digits after digits
    ("17" → "32"), words after a newline, a quote or an opening bracket, and prompts ending in a
    space are left alone: there the bare form can be meant."""
    if not answer or not answer[0].isalpha() or not prompt or model.tokenizer is None:
        return None
    if not (prompt[-1].isalnum() or prompt[-1] in _SPACED_AFTER):
        return None
    spaced = " " + answer
    ids = model.tokenizer(spaced, add_special_tokens=False)["input_ids"]
    return spaced if len(ids) == 1 else None


def missing_space(prompt: str, spaced: str) -> str:
    """The reason and the fix, for an error about an answer given without its leading space."""
    tail = " ".join(prompt.split()[-3:])
    return (
        f"has no leading space, but after {tail!r} the next word is {spaced!r} (one token, "
        f"its space included): write {spaced!r}"
    )


def _tokens(model: Model, text: str) -> list[int]:
    if model.tokenizer is None:
        raise PairsError(
            f"{model.name} has no tokenizer: build PromptPairs from token ids instead of strings"
        )
    return list(model.tokenizer(text)["input_ids"])


def _single_token(model: Model, text: str, what: str, index: int) -> int:
    ids = model.tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) != 1:
        pieces = [model.tokenizer.decode([i]) for i in ids]
        hint = (
            " (answers usually need their leading space, e.g. ' Mary')"
            if not text.startswith(" ")
            else ""
        )
        raise PairsError(
            f"prompt {index}: {what} {text!r} is {len(ids)} tokens {pieces}, not one{hint}; "
            "choose an answer that is a single token of this tokenizer."
        )
    return ids[0]


def _validate_ids(pairs: PromptPairs) -> None:
    for name in ("clean", "corrupt"):
        ids = getattr(pairs, name)
        if not isinstance(ids, Tensor) or ids.dtype != torch.long or ids.ndim != 2:
            got = (
                f"a {ids.ndim}-d {ids.dtype} tensor"
                if isinstance(ids, Tensor)
                else type(ids).__name__
            )
            raise PairsError(
                f"{name} must be a (batch, pos) tensor of token ids (torch.long), got {got}; "
                "e.g. torch.tensor(ids, dtype=torch.long), or PromptPairs.from_strings for text"
            )
        if ids.numel() == 0:
            raise PairsError(f"{name} is empty: pass at least one prompt of at least one token")
    if pairs.clean.shape != pairs.corrupt.shape:
        raise PairsError(
            f"clean {tuple(pairs.clean.shape)} and corrupt {tuple(pairs.corrupt.shape)} token ids differ in shape; "
            "each pair needs the same number of tokens so positions line up."
        )
    batch = pairs.clean.shape[0]
    for name in ("answers", "wrong"):
        ids = getattr(pairs, name)
        if not isinstance(ids, Tensor) or ids.shape != (batch,):
            raise PairsError(f"{name} must hold one token id per prompt, shape ({batch},)")
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise PairsError(
                f"{name} must be integer token ids (torch.long), not {ids.dtype}: a float id is not a token"
            )
    noise = pairs.corrupt_noise
    if noise is not None and (
        not isinstance(noise, Tensor)
        or not noise.is_floating_point()
        or noise.ndim != 3
        or noise.shape[:2] != pairs.clean.shape
    ):
        raise PairsError(
            f"corrupt_noise must be a float tensor (batch, pos, d_model) matching the prompts' "
            f"{tuple(pairs.clean.shape)}; make it with actpatch.noise.gaussian_noise"
        )
    if noise is not None and not bool(torch.isfinite(noise).all()):
        raise PairsError(
            "corrupt_noise holds NaN or inf, which would make every corrupt run NaN; "
            "make it with actpatch.noise.gaussian_noise, whose noise is finite"
        )
    for name, where in pairs.positions.items():
        prompts = f"{batch} prompt{'s' if batch != 1 else ''}"
        if where.shape != (batch,):
            count = where.numel()
            given = f"{count} ind{'ex' if count == 1 else 'ices'}"
            if where.ndim > 1:
                given = f"shape {tuple(where.shape)}"
            example = ", ".join(["3"] * min(batch, 3)) + (", ..." if batch > 3 else "")
            raise PairsError(
                f"named position {name!r} has {given} for {prompts}: give one index "
                f"in 0..{pairs.seq_len - 1} per prompt, e.g. "
                f"{{{name!r}: [{example}]}}"
            )
        if bad := [(i, int(v)) for i, v in enumerate(where.tolist()) if not 0 <= v < pairs.seq_len]:
            (prompt, index), last = bad[0], pairs.seq_len - 1
            raise PairsError(
                f"named position {name!r} is {index} for prompt {prompt}, outside its "
                f"{pairs.seq_len} tokens: give one index in 0..{last} per prompt"
            )

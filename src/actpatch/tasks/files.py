"""Prompt pairs from a file of your own: JSON Lines (`.jsonl`) or CSV (`.csv`, with a header).

Each row (a JSON object per line; blank lines are skipped) has the fields

    clean, corrupt    the two prompts; they must have the same number of tokens
    answer, wrong     one token each for the model's tokenizer (mind the leading space: " Paris")
    pos:NAME          optional named positions, e.g. "pos:IO": a token index into the clean prompt
                      (an integer; negative counts from the end, -1 is the last token), or a word
                      that occurs once in the clean prompt as a whole word, meaning its last token

    {"clean": "The Eiffel Tower is in", "corrupt": "The Colosseum is in", "answer": " Paris",
     "wrong": " Rome", "pos:SUBJ": "Tower", "pos:END": -1}

A CSV cell for a position that is an integer (`3`, `-1`) is an index; anything else is a word.
Every row must name the same positions, and every prompt must have the same token length (a
batch has one length: split a file by length). Each row is checked as it is read; an error names
the file, the row (and its line), the field and what is wrong.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Iterator
from pathlib import Path

from actpatch.corrupt import token_span
from actpatch.models.model import Model, check_model
from actpatch.pairs import PairsError, PromptPairs, missing_space, unspaced_answer

REQUIRED = ("clean", "corrupt", "answer", "wrong")
POSITION_PREFIX = "pos:"


def from_file(model: Model, path: str | Path, *, corruption: str | None = None) -> PromptPairs:
    """Prompt pairs from a JSONL or CSV file (format in the module docstring), checked row by row.

    `corruption` names the scheme in the results' provenance; by default, the file's name."""
    check_model(model)
    path = Path(path)
    if path.suffix.lower() not in (".jsonl", ".csv"):
        raise PairsError(
            f"{path}: unknown file type {path.suffix!r}; use .jsonl (one JSON object per line) or .csv"
        )
    if not path.is_file():
        raise PairsError(f"{path}: no such file")
    rows = _csv_rows(path) if path.suffix.lower() == ".csv" else _jsonl_rows(path)
    columns: dict[str, list[str]] = {field: [] for field in REQUIRED}
    positions: dict[str, list[int]] = {}
    length = None
    for row, (number, line, fields) in enumerate(rows):
        where = f"{path}, row {number} (line {line})"
        tokens, named = _check_row(model, where, fields)
        if length is None:
            length = tokens
        elif tokens != length:
            raise PairsError(
                f"{where}, field 'clean': {tokens} tokens, but row 1 has {length}; "
                "a batch has one token length: put prompts of other lengths in another file"
            )
        if row and set(named) != set(positions):
            raise PairsError(
                f"{where}: names positions {sorted(named)}, but row 1 names {sorted(positions)}; "
                "every row must name the same positions"
            )
        for name, index in named.items():
            positions.setdefault(name, []).append(index)
        for field, column in columns.items():
            column.append(fields[field])
    if not columns["clean"]:
        raise PairsError(f"{path}: no rows; each row needs {', '.join(REQUIRED)}")
    return PromptPairs.from_strings(
        model,
        *columns.values(),  # clean, corrupt, answers, wrong: REQUIRED's order
        positions=positions,
        corruption=corruption or path.name,
        task=f"file:{path.name}",
    )


def _jsonl_rows(path: Path) -> Iterator[tuple[int, int, dict]]:
    number = 0
    with path.open(encoding="utf-8") as lines:
        for line, text in enumerate(lines, start=1):
            if not text.strip():
                continue
            number += 1
            try:
                fields = json.loads(text)
            except json.JSONDecodeError as error:
                raise PairsError(
                    f"{path}, row {number} (line {line}): not valid JSON ({error.msg}, column "
                    f"{error.colno})"
                ) from None
            if not isinstance(fields, dict):
                raise PairsError(
                    f"{path}, row {number} (line {line}): a row must be a JSON object with fields "
                    f"{', '.join(REQUIRED)}, not {type(fields).__name__}"
                )
            yield number, line, fields


def _csv_rows(path: Path) -> Iterator[tuple[int, int, dict]]:
    with path.open(encoding="utf-8", newline="") as file:
        reader = csv.DictReader(file)
        for number, fields in enumerate(reader, start=1):
            if None in fields:
                raise PairsError(
                    f"{path}, row {number} (line {reader.line_num}): more cells than the header has "
                    f"columns ({', '.join(reader.fieldnames or [])})"
                )
            yield (
                number,
                reader.line_num,
                {k: _csv_value(k, v) for k, v in fields.items() if v is not None},
            )


def _csv_value(key: str, value: str) -> str | int:
    if key.startswith(POSITION_PREFIX) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    return value


def _check_row(model: Model, where: str, fields: dict) -> tuple[int, dict[str, int]]:
    """The clean prompt's token count and the row's named positions, once every field is checked."""
    for key in fields:
        if key not in REQUIRED and not (
            key.startswith(POSITION_PREFIX) and len(key) > len(POSITION_PREFIX)
        ):
            raise PairsError(
                f"{where}: unknown field {key!r}; fields are {', '.join(REQUIRED)} and "
                f"{POSITION_PREFIX}NAME for named positions"
            )
    for key in REQUIRED:
        if key not in fields:
            raise PairsError(f"{where}, field {key!r}: missing")
        if not isinstance(fields[key], str) or not fields[key].strip():
            raise PairsError(
                f"{where}, field {key!r}: must be a non-empty string, got {fields[key]!r}"
            )
    clean_ids = _ids(model, fields["clean"])
    corrupt_ids = _ids(model, fields["corrupt"])
    if len(corrupt_ids) != len(clean_ids):
        raise PairsError(
            f"{where}, field 'corrupt': {len(corrupt_ids)} tokens, but clean has {len(clean_ids)}; "
            "positions must mean the same thing in both runs: corrupt with a replacement of the "
            "same token length"
        )
    for key in ("answer", "wrong"):
        if (spaced := unspaced_answer(model, fields["clean"], fields[key])) is not None:
            reason = missing_space(fields["clean"], spaced)
            raise PairsError(f"{where}, field {key!r}: {fields[key]!r} {reason}")
        ids = _ids(model, fields[key], special=False)
        if len(ids) != 1:
            pieces = [model.tokenizer.decode([i]) for i in ids]
            hint = (
                " (words usually need their leading space, e.g. ' Paris')"
                if not fields[key].startswith(" ")
                else ""
            )
            raise PairsError(
                f"{where}, field {key!r}: {fields[key]!r} is {len(ids)} tokens {pieces}, not one{hint}"
            )
    positions = {
        key[len(POSITION_PREFIX) :]: _position(
            model, where, key, value, fields["clean"], len(clean_ids)
        )
        for key, value in fields.items()
        if key.startswith(POSITION_PREFIX)
    }
    return len(clean_ids), positions


def _position(model: Model, where: str, key: str, value, clean: str, length: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise PairsError(
            f"{where}, field {key!r}: a position is a token index or a word, not {value!r}"
        )
    if isinstance(value, int):
        if not -length <= value < length:
            raise PairsError(
                f"{where}, field {key!r}: token index {value} is outside the clean prompt's "
                f"{length} tokens (0..{length - 1}, or -{length}..-1 from the end)"
            )
        return value % length
    try:
        return token_span(model, clean, value).last
    except PairsError as error:
        raise PairsError(f"{where}, field {key!r}: {error}") from None


def _ids(model: Model, text: str, *, special: bool = True) -> list[int]:
    return list(model.tokenizer(text, add_special_tokens=special)["input_ids"])


__all__ = ["POSITION_PREFIX", "REQUIRED", "from_file"]

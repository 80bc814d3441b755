"""Task files as a user writes them (tasks/files.py reads them): two IOI rows in the file format,
and writers for JSONL and CSV."""

from __future__ import annotations

import csv
import json

ROWS = [
    {
        "clean": "When Mary and John went to the store, John gave a drink to",
        "corrupt": "When Anna and Tom went to the store, Paul gave a drink to",
        "answer": " Mary",
        "wrong": " John",
        "pos:IO": "Mary",
        "pos:S2": -5,
        "pos:END": -1,
    },
    {
        "clean": "When Lucy and Mark went to the store, Mark gave a drink to",
        "corrupt": "When Kate and Adam went to the store, Sam gave a drink to",
        "answer": " Lucy",
        "wrong": " Mark",
        "pos:IO": "Lucy",
        "pos:S2": -5,
        "pos:END": -1,
    },
]


def write_jsonl(path, rows, raw_lines=()):
    path.write_text("\n".join([json.dumps(r) for r in rows] + list(raw_lines)) + "\n")
    return path


def write_csv(path, rows):
    with path.open("w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path

"""A tiny model saved as a checkpoint folder, so the command line can load it with --model PATH.

The command line loads models by path or name only; this writes tests/word_tokenizer.py's
two-layer GPT-2 (its word-level tokenizer knows every word of the bundled tasks) with
`save_pretrained`, as any Hugging Face checkpoint folder is written."""

from __future__ import annotations

from pathlib import Path

from word_tokenizer import gpt2_style_model


def save_tiny_checkpoint(folder: Path) -> Path:
    """Write the tiny GPT-2 and its tokenizer into `folder`; return it."""
    model = gpt2_style_model()
    model.hf.save_pretrained(folder)
    model.tokenizer.save_pretrained(folder)
    return folder

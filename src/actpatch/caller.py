"""Where a warning points: the user's line, not ours.

A fixed `stacklevel` is right only until a decorator or helper adds a frame between the user and the
function that warns (an old-keyword wrapper did exactly that). A leaf: imports nothing from
actpatch."""

from __future__ import annotations

import os
import sys
from pathlib import Path

_PACKAGE = str(Path(__file__).resolve().parent) + os.sep


def stacklevel() -> int:
    """The `stacklevel` that makes `warnings.warn`, called by the function that calls this one,
    name the first frame outside actpatch, however many of our frames lie between."""
    frame, level = sys._getframe(1), 1
    while frame.f_back is not None and str(Path(frame.f_code.co_filename).resolve()).startswith(
        _PACKAGE
    ):
        frame, level = frame.f_back, level + 1
    return level

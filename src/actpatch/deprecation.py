"""Old spellings, kept working for one release: each warns (`DeprecationWarning`) naming the new one.

The one place keywords and values are renamed, so that public signatures hold only the current
names (tests/test_structure.py scans them for the old ones); README.md lists every old spelling.
Every layer may use it; it imports only `actpatch.caller` (where its warnings point)."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from actpatch import caller

F = TypeVar("F", bound=Callable[..., Any])


def warn(old: str, new: str) -> None:
    """Say that `old` is deprecated, and what to write instead, at the user's line."""
    warnings.warn(
        f"{old} is deprecated and will be removed in the next release: use {new}",
        DeprecationWarning,
        stacklevel=caller.stacklevel(),
    )


def renamed(**new_names: str) -> Callable[[F], F]:
    """A decorator: each old keyword (`renamed(boot_seed="seed")`) is passed on under its new name,
    with a warning; both at once are refused, as Python refuses a keyword given twice."""

    def decorate(function: F) -> F:
        @functools.wraps(function)
        def wrapper(*args: Any, **keywords: Any) -> Any:
            return function(*args, **keywords_renamed(keywords, new_names, function.__name__))

        return wrapper  # type: ignore[return-value]

    return decorate


def keywords_renamed(
    keywords: dict[str, Any], new_names: Mapping[str, str], caller: str
) -> dict[str, Any]:
    """`keywords` with each old name in `new_names` replaced by its new one, warning once each."""
    for old, new in new_names.items():
        if old not in keywords:
            continue
        if new in keywords:
            raise TypeError(f"{caller}() got {old}= and {new}=: {old} is the old name of {new}")
        warn(f"{caller}({old}=...)", f"{caller}({new}=...)")
        keywords[new] = keywords.pop(old)
    return keywords


def renamed_value(parameter: str, value: Any, new_values: Mapping[Any, Any], caller: str) -> Any:
    """`value`, or its new spelling if it is an old one (`engine="fast"` → `"batched"`), warning."""
    if isinstance(value, str) and value in new_values:
        new = new_values[value]
        warn(f"{caller}({parameter}={value!r})", f"{parameter}={new!r}, the same")
        return new
    return value

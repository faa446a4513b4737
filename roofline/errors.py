"""The error family the CLI turns into one line and exit code 2.

A RooflineError means the user's input was wrong (a spec, a file, a shape, a profile); anything else
escaping the CLI is our bug and keeps its traceback.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["RooflineError", "close_matches", "positive_int"]


class RooflineError(Exception):
    """Bad input: the message names the bad value and what is accepted."""


def close_matches(word: str, choices: Iterable[str], n: int = 3) -> str:
    """' (did you mean: a, b?)' when there are close matches, else ''."""
    matches = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.6)
    return f" (did you mean: {', '.join(matches)}?)" if matches else ""


def positive_int(what: str, value: object) -> int:
    """`value` if it is an integer of at least 1; else an error naming `what` (a size of 0 gives tables of zeros)."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RooflineError(f"{what} must be a positive integer, got {value!r}")
    return value

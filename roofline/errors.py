"""The error family the CLI turns into one line and exit code 2.

A RooflineError means the user's input was wrong (a spec, a file, a shape, a profile); anything else
escaping the CLI is our bug and keeps its traceback.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable

__all__ = ["RooflineError", "close_matches"]


class RooflineError(Exception):
    """Bad input: the message names the bad value and what is accepted."""


def close_matches(word: str, choices: Iterable[str], n: int = 3) -> str:
    """' (did you mean: a, b?)' when there are close matches, else ''."""
    matches = difflib.get_close_matches(word, list(choices), n=n, cutoff=0.6)
    return f" (did you mean: {', '.join(matches)}?)" if matches else ""

"""Errors told on one line, the same way wherever a user's input is refused: a model's
validation errors (pydantic's own text spans lines) and a file that is not UTF-8."""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from pydantic import ValidationError

__all__ = ["not_utf8", "one_line"]


def one_line(exc: ValidationError, names: Mapping[str, str] | None = None, limit: int = 3) -> str:
    """``loc: msg; ...`` for the first ``limit`` errors, then ``(and N more)``. ``names``
    renames a field as the user gave it (e.g. a CLI option); an error of the whole model
    is ``value: msg``."""
    names = names or {}
    problems = []
    for e in exc.errors():
        loc = [str(p) for p in e["loc"]]
        if loc:
            loc[0] = names.get(loc[0], loc[0])
        problems.append(f"{'.'.join(loc) or 'value'}: {e['msg']}")
    more = f" (and {len(problems) - limit} more)" if len(problems) > limit else ""
    return "; ".join(problems[:limit]) + more


def not_utf8(exc: UnicodeDecodeError) -> str:
    """What is wrong with a file that did not decode (the caller names the file)."""
    return f"not UTF-8 text (byte {exc.start})"

"""Lazy re-exports for package ``__init__`` modules (PEP 562).

A package lists which module defines each name it re-exports; a name's module is
imported on first access only, so importing the package (or one client-side module of
it) never loads the others (servers, databases, Docker)::

    _EXPORTS = {"evaluate_info": "agentfleet.evaluation.client", ...}
    __all__ = sorted(_EXPORTS)
    __getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

and, for type checkers, the same names imported from the same modules under
``if TYPE_CHECKING:`` (a test holds the two together).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(
    package: str, exports: Mapping[str, str]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """``__getattr__`` and ``__dir__`` for ``package``, which re-exports each name of
    ``exports`` from the module it maps to. A value, once imported, is stored in the
    package's namespace, so later lookups never come back here."""

    def __getattr__(name: str) -> Any:
        module = exports.get(name)
        if module is None:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        setattr(sys.modules[package], name, value)
        return value

    def __dir__() -> list[str]:
        return sorted({*vars(sys.modules[package]), *exports})

    return __getattr__, __dir__

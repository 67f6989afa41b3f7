"""Token prices ($ per million tokens) and the run-level cost budget.

A :class:`PriceTable` maps a model name to ``(input $/Mtok, output $/Mtok)``. It is the
fallback when the server does not report a call's cost itself (OpenRouter does, in
``usage.cost``). An unknown model costs 0.0, with one warning per name: never a crash.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Price:
    input_per_mtok: float
    output_per_mtok: float

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            prompt_tokens * self.input_per_mtok + completion_tokens * self.output_per_mtok
        ) / 1e6


# Approximate list prices (USD per million tokens); override with a YAML file.
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o": (2.50, 10.00),
    "gpt-4o-mini": (0.15, 0.60),
    "gpt-4.1": (2.00, 8.00),
    "gpt-4.1-mini": (0.40, 1.60),
    "gpt-4.1-nano": (0.10, 0.40),
    "o3-mini": (1.10, 4.40),
    "o4-mini": (1.10, 4.40),
    "claude-3.5-sonnet": (3.00, 15.00),
    "claude-3.5-haiku": (0.80, 4.00),
    "claude-sonnet-4": (3.00, 15.00),
    "deepseek-chat": (0.27, 1.10),
    "mock-oracle": (0.0, 0.0),  # agentfleet's mock LLM server
}

_warned: set[str] = set()
_warned_lock = threading.Lock()


def _warn_once(model: str) -> None:
    with _warned_lock:
        if model in _warned:
            return
        _warned.add(model)
    log.warning("no price known for model %r: its calls are counted as costing $0", model)


PriceLike = Price | tuple[float, float] | list[float] | Mapping[str, float]


def _to_price(name: str, value: Any) -> Price:
    if isinstance(value, Price):
        return value
    if isinstance(value, Mapping):
        try:
            return Price(float(value["input"]), float(value["output"]))
        except KeyError as exc:
            raise ValueError(f"price of {name!r} needs 'input' and 'output' ($/Mtok)") from exc
    if isinstance(value, list | tuple) and len(value) == 2:
        return Price(float(value[0]), float(value[1]))
    raise ValueError(
        f"price of {name!r} must be [input, output] or {{input: X, output: Y}} ($/Mtok); "
        f"got {value!r}"
    )


class PriceTable(Mapping[str, Price]):
    """Model name -> :class:`Price`. Lookups also try the name without a provider prefix
    (``openai/gpt-4o`` -> ``gpt-4o``); names ending in ``:free`` cost nothing."""

    def __init__(self, prices: Mapping[str, Any] | None = None) -> None:
        self._prices: dict[str, Price] = {
            name: _to_price(name, value) for name, value in (prices or {}).items()
        }

    @classmethod
    def default(cls) -> PriceTable:
        return cls(DEFAULT_PRICES)

    @classmethod
    def from_yaml(cls, path: str | Path, *, with_defaults: bool = True) -> PriceTable:
        """Read ``{model: [input, output]}`` or ``{model: {input: X, output: Y}}``
        (optionally under a top-level ``prices:`` key). Sync: call outside the event loop."""
        data = yaml.safe_load(Path(path).read_text()) or {}
        if isinstance(data, dict) and isinstance(data.get("prices"), dict):
            data = data["prices"]
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a mapping of model name -> price")
        base: dict[str, Any] = dict(DEFAULT_PRICES) if with_defaults else {}
        base.update(data)
        return cls(base)

    # Mapping -------------------------------------------------------------------------
    def __getitem__(self, name: str) -> Price:
        return self._prices[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._prices)

    def __len__(self) -> int:
        return len(self._prices)

    # lookups -------------------------------------------------------------------------
    def lookup(self, model: str) -> Price | None:
        """The price of ``model``, or None when unknown."""
        if model in self._prices:
            return self._prices[model]
        if model.endswith(":free"):
            return Price(0.0, 0.0)
        base = model.split(":", 1)[0]
        for candidate in (base, base.rsplit("/", 1)[-1]):
            if candidate in self._prices:
                return self._prices[candidate]
        return None

    def cost(self, model: str, prompt_tokens: int, completion_tokens: int) -> float:
        """Cost of one call in USD; 0.0 (with a one-time warning) for an unknown model."""
        price = self.lookup(model)
        if price is None:
            _warn_once(model)
            return 0.0
        return price.cost(prompt_tokens, completion_tokens)


class RunBudget:
    """A cost budget shared by every model of a run.

    Models charge each call's cost; once ``spent >= total_cost_limit`` the next query of
    any model raises ``ModelError(..., "RunCostLimitExceeded")``. Calls already in flight
    finish, so a run can overshoot by at most the cost of its concurrent calls.
    """

    def __init__(self, total_cost_limit: float | None) -> None:
        self.total_cost_limit = total_cost_limit
        self.spent = 0.0
        self.calls = 0
        self._lock = threading.Lock()  # charge() may come from several loops/threads

    def __getstate__(self) -> dict[str, Any]:  # picklable (Ray ships configs): no lock
        return {k: v for k, v in self.__dict__.items() if k != "_lock"}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def charge(self, cost: float) -> None:
        with self._lock:
            self.spent += cost
            self.calls += 1

    @property
    def exceeded(self) -> bool:
        return self.total_cost_limit is not None and self.spent >= self.total_cost_limit

    @property
    def remaining(self) -> float | None:
        if self.total_cost_limit is None:
            return None
        return max(0.0, self.total_cost_limit - self.spent)

    def __repr__(self) -> str:
        return f"RunBudget(spent={self.spent:.4f}, limit={self.total_cost_limit})"

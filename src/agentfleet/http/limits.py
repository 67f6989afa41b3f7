"""Pool limits (presets, ``LIMIT/PER_HOST``) and per-call timeouts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "DEFAULT_TIMEOUTS",
    "EVAL_TIMEOUTS",
    "LLM_TIMEOUTS",
    "PRESETS",
    "PoolLimits",
    "Timeouts",
    "exec_timeouts",
    "preset_for_fleet",
    "resolve_limits",
]


@dataclass(frozen=True)
class PoolLimits:
    limit: int
    limit_per_host: int


PRESETS: dict[str, PoolLimits] = {
    "small": PoolLimits(100, 50),
    "medium": PoolLimits(200, 100),
    "large": PoolLimits(500, 200),
}


def preset_for_fleet(n_agents: int) -> PoolLimits:
    """The origin's advice: 100/50 up to 10 agents, 200/100 up to 50, 500/200 above."""
    if n_agents <= 10:
        return PRESETS["small"]
    if n_agents <= 50:
        return PRESETS["medium"]
    return PRESETS["large"]


def resolve_limits(limits: PoolLimits | str | None) -> PoolLimits:
    """A preset name, ``"LIMIT/PER_HOST"`` (e.g. ``"300/150"``), or PoolLimits as is."""
    if limits is None:
        return PRESETS["small"]
    if isinstance(limits, PoolLimits):
        return _checked(limits)
    name = limits.strip().lower()
    if name in PRESETS:
        return PRESETS[name]
    if "/" in name:
        total, _, per_host = name.partition("/")
        try:
            parsed = PoolLimits(int(total), int(per_host))
        except ValueError:
            pass
        else:
            return _checked(parsed)
    raise ValueError(
        f"unknown pool preset {limits!r}: choose {', '.join(PRESETS)} "
        "or give LIMIT/PER_HOST (e.g. 300/150)"
    )


def _checked(limits: PoolLimits) -> PoolLimits:
    if not 1 <= limits.limit_per_host <= limits.limit:
        raise ValueError(
            f"pool limits {limits.limit}/{limits.limit_per_host}: need "
            "1 <= per-host limit <= total limit"
        )
    return limits


@dataclass(frozen=True)
class Timeouts:
    """Per-call timeouts. ``total=None`` means bounded by ``sock_read`` only."""

    total: float | None = None
    connect: float | None = 60.0
    sock_connect: float | None = 30.0
    sock_read: float | None = 300.0

    def client_timeout(self) -> aiohttp.ClientTimeout:
        import aiohttp  # loaded with the pool, which calls this

        return aiohttp.ClientTimeout(
            total=self.total,
            connect=self.connect,
            sock_connect=self.sock_connect,
            sock_read=self.sock_read,
        )


EVAL_TIMEOUTS = Timeouts(total=3600, connect=60, sock_read=300)
LLM_TIMEOUTS = Timeouts(total=None, connect=60, sock_read=600)
DEFAULT_TIMEOUTS = Timeouts(total=300, connect=60, sock_read=300)


def exec_timeouts(command_timeout: float, margin: float = 30.0) -> Timeouts:
    """A sandbox exec: the command's own timeout (the caller resolves its default) plus a
    margin for the round trip."""
    budget = command_timeout + margin
    return Timeouts(total=budget, connect=60, sock_read=budget)

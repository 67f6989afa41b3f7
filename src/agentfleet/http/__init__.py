"""Pooled HTTP: one aiohttp session per event loop, safe retries, metrics."""

from agentfleet.http.pool import (
    DEFAULT_TIMEOUTS,
    EVAL_TIMEOUTS,
    LLM_TIMEOUTS,
    NO_RETRY,
    PRESETS,
    HttpError,
    HttpPool,
    HttpStatusError,
    PoolLimits,
    Response,
    RetryPolicy,
    Timeouts,
    exec_timeouts,
    preset_for_fleet,
    resolve_limits,
)

__all__ = [
    "DEFAULT_TIMEOUTS",
    "EVAL_TIMEOUTS",
    "LLM_TIMEOUTS",
    "NO_RETRY",
    "PRESETS",
    "HttpError",
    "HttpPool",
    "HttpStatusError",
    "PoolLimits",
    "Response",
    "RetryPolicy",
    "Timeouts",
    "exec_timeouts",
    "preset_for_fleet",
    "resolve_limits",
]

"""Pooled HTTP: one aiohttp session per event loop, safe retries, metrics."""

from agentfleet.http.errors import (
    HttpConnectionError,
    HttpError,
    HttpStatusError,
    HttpTimeoutError,
    Response,
)
from agentfleet.http.limits import (
    DEFAULT_TIMEOUTS,
    EVAL_TIMEOUTS,
    LLM_TIMEOUTS,
    PRESETS,
    PoolLimits,
    Timeouts,
    exec_timeouts,
    preset_for_fleet,
    resolve_limits,
)
from agentfleet.http.metrics import (
    PoolCollector,
    pool_metrics_collector,
    register_pool_metrics,
    render_prometheus,
)
from agentfleet.http.pool import HttpPool
from agentfleet.http.retry import (
    NO_RETRY,
    RetryPolicy,
    is_idempotent,
    json_object,
    parse_retry_after,
)

__all__ = [
    "DEFAULT_TIMEOUTS",
    "EVAL_TIMEOUTS",
    "LLM_TIMEOUTS",
    "NO_RETRY",
    "PRESETS",
    "HttpConnectionError",
    "HttpError",
    "HttpPool",
    "HttpStatusError",
    "HttpTimeoutError",
    "PoolCollector",
    "PoolLimits",
    "Response",
    "RetryPolicy",
    "Timeouts",
    "exec_timeouts",
    "is_idempotent",
    "json_object",
    "parse_retry_after",
    "pool_metrics_collector",
    "preset_for_fleet",
    "register_pool_metrics",
    "render_prometheus",
    "resolve_limits",
]

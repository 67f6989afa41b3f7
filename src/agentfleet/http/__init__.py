"""Pooled HTTP: one aiohttp session per event loop, safe retries, metrics.

Names are imported on first use (PEP 562): ``from agentfleet.http import HttpError``
(what the evaluation client needs to import) loads neither the pool nor aiohttp.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from agentfleet._lazy import lazy_exports
from agentfleet.http import limits as _limits  # no aiohttp: its names are the map's

if TYPE_CHECKING:
    from agentfleet.http.errors import (
        HttpConnectionError as HttpConnectionError,
        HttpTimeoutError as HttpTimeoutError,
    )
    from agentfleet.http.limits import (
        DEFAULT_TIMEOUTS as DEFAULT_TIMEOUTS,
        EVAL_TIMEOUTS as EVAL_TIMEOUTS,
        LLM_TIMEOUTS as LLM_TIMEOUTS,
        PRESETS as PRESETS,
        PoolLimits as PoolLimits,
        Timeouts as Timeouts,
        exec_timeouts as exec_timeouts,
        preset_for_fleet as preset_for_fleet,
        resolve_limits as resolve_limits,
    )
    from agentfleet.http.metrics import (
        PoolCollector as PoolCollector,
        pool_metrics_collector as pool_metrics_collector,
        register_pool_metrics as register_pool_metrics,
        render_prometheus as render_prometheus,
    )
    from agentfleet.http.pool import HttpPool as HttpPool
    from agentfleet.http.response import (
        HttpError as HttpError,
        HttpStatusError as HttpStatusError,
        Response as Response,
    )
    from agentfleet.http.retry import (
        NO_RETRY as NO_RETRY,
        RetryPolicy as RetryPolicy,
        is_idempotent as is_idempotent,
        json_object as json_object,
        parse_retry_after as parse_retry_after,
    )

_EXPORTS: dict[str, str] = {
    **dict.fromkeys(("HttpConnectionError", "HttpTimeoutError"), "agentfleet.http.errors"),
    **dict.fromkeys(_limits.__all__, "agentfleet.http.limits"),
    **dict.fromkeys(
        ("PoolCollector", "pool_metrics_collector", "register_pool_metrics", "render_prometheus"),
        "agentfleet.http.metrics",
    ),
    **dict.fromkeys(("HttpPool",), "agentfleet.http.pool"),
    **dict.fromkeys(("HttpError", "HttpStatusError", "Response"), "agentfleet.http.response"),
    **dict.fromkeys(
        ("NO_RETRY", "RetryPolicy", "is_idempotent", "json_object", "parse_retry_after"),
        "agentfleet.http.retry",
    ),
}

__all__ = sorted(_EXPORTS)

__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)

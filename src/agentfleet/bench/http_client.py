"""One client pattern of ``agentfleet bench http``, run in its own process.

``python -m agentfleet.bench.http_client '<json config>'`` runs ``n`` agents, each making
``rounds`` sequential evaluations against ``url``, with one pattern, and prints a JSON result
(wall time, successes, errors, CPU seconds and peak RSS of this process).

Patterns:

- ``blocking``: the origin's "before": ``requests.post(/evaluate)`` inside ``async def``;
  the agents run under ``asyncio.gather`` but the loop stands still for every call.
- ``per-call``: the origin's "after": a new ``aiohttp.ClientSession`` (own connector,
  ``limit=100, limit_per_host=50``) for every call, ``POST /evaluate``.
- ``threads``: the origin's alternative: ``requests.post(/evaluate)`` from a
  ``ThreadPoolExecutor(max_workers=n)``.
- ``agentfleet``: ``evaluate_info`` (submit + long-poll) over the loop's shared ``HttpPool``
  sized by ``preset_for_fleet(n)``.
- ``agentfleet-blocking``: the shared pool, but the blocking ``POST /evaluate`` form.
- ``sync-threads``: ``n`` threads calling ``evaluate_info_sync``: every call runs on the
  process's one background loop and its pool (sized by ``preset_for_fleet(n)``).
- ``run-threads``: the seed's pattern: ``n`` threads, each call in its own
  ``asyncio.run(evaluate_info(...))`` (a new loop, pool and connection per call).
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from agentfleet.bench.common import child_main, cpu_seconds, peak_rss_mib

PATTERNS = (
    "blocking",
    "per-call",
    "threads",
    "agentfleet",
    "agentfleet-blocking",
    "sync-threads",
    "run-threads",
)


def _body(agent: int, rnd: int) -> dict[str, Any]:
    return {
        "exit_status": "Submitted",
        "result": None,
        "container_id": f"container_{agent}",
        "instance_id": f"task_{agent}_{rnd}",
        "dataset_name": "test",
        "split": "test",
    }


class Tally:
    def __init__(self) -> None:
        self.ok = 0
        self.errors: Counter[str] = Counter()

    def record(self, fn: Callable[[], Any]) -> None:
        try:
            fn()
        except Exception as exc:
            self.errors[type(exc).__name__] += 1
        else:
            self.ok += 1

    async def arecord(self, make: Callable[[], Awaitable[Any]]) -> None:
        try:
            await make()
        except Exception as exc:
            self.errors[type(exc).__name__] += 1
        else:
            self.ok += 1


def _check_answer(data: Any) -> None:
    if not isinstance(data, dict) or float(data.get("reward", 0.0)) != 1.0:
        raise ValueError(f"unexpected answer {str(data)[:200]}")


async def _agents(
    n: int, rounds: int, tally: Tally, call: Callable[[int, int], Awaitable[Any]]
) -> None:
    """``n`` agents at once, each making ``rounds`` calls ``call(agent, round)`` one after
    the other; each call tallied."""

    async def agent(i: int) -> None:
        for r in range(rounds):
            await tally.arecord(lambda i=i, r=r: call(i, r))  # type: ignore[misc]

    await asyncio.gather(*(agent(i) for i in range(n)))


# patterns --------------------------------------------------------------------------------
def run_blocking(url: str, n: int, rounds: int, tally: Tally) -> dict[str, Any]:
    import requests

    def post(agent: int, rnd: int) -> None:
        resp = requests.post(f"{url}/evaluate", json=_body(agent, rnd), timeout=3600)
        resp.raise_for_status()
        _check_answer(resp.json())

    async def evaluate_info(agent: int, rnd: int) -> None:
        post(agent, rnd)  # the origin's bug: a blocking call inside ``async def``

    asyncio.run(_agents(n, rounds, tally, evaluate_info))
    return {}


def run_per_call(url: str, n: int, rounds: int, tally: Tally) -> dict[str, Any]:
    import aiohttp

    async def evaluate_info(agent: int, rnd: int) -> None:
        timeout = aiohttp.ClientTimeout(total=3600, connect=60, sock_read=300)
        connector = aiohttp.TCPConnector(limit=100, limit_per_host=50)
        async with (
            aiohttp.ClientSession(timeout=timeout, connector=connector) as session,
            session.post(f"{url}/evaluate", json=_body(agent, rnd)) as resp,
        ):
            resp.raise_for_status()
            _check_answer(await resp.json())

    asyncio.run(_agents(n, rounds, tally, evaluate_info))
    return {}


def run_threads(url: str, n: int, rounds: int, tally: Tally) -> dict[str, Any]:
    import requests

    def agent(i: int) -> None:
        for r in range(rounds):

            def call(i: int = i, r: int = r) -> None:
                resp = requests.post(f"{url}/evaluate", json=_body(i, r), timeout=3600)
                resp.raise_for_status()
                _check_answer(resp.json())

            tally.record(call)

    with ThreadPoolExecutor(max_workers=n) as pool:
        list(pool.map(agent, range(n)))
    return {"threads": n}


def run_agentfleet(
    url: str, n: int, rounds: int, tally: Tally, *, blocking_form: bool
) -> dict[str, Any]:
    from agentfleet.evaluation.client import evaluate_info
    from agentfleet.http import EVAL_TIMEOUTS, HttpPool, preset_for_fleet

    limits = preset_for_fleet(n)
    HttpPool.configure_default(limits)
    stats: dict[str, Any] = {}

    async def one(i: int, r: int) -> None:
        if blocking_form:
            resp = await HttpPool.for_loop().request(
                "POST", f"{url}/evaluate", json=_body(i, r), timeout=EVAL_TIMEOUTS
            )
            _check_answer(resp.raise_for_status().json())
            return
        b = _body(i, r)
        reward, _speedup, _info = await evaluate_info(
            b["exit_status"],
            b["result"],
            b["container_id"],
            b["instance_id"],
            b["dataset_name"],
            b["split"],
            url,
        )
        if reward != 1.0:
            raise ValueError(f"reward {reward}")

    async def main() -> None:
        await _agents(n, rounds, tally, one)
        totals = HttpPool.for_loop().stats()["totals"]
        stats.update(
            {
                "pool_limits": {"limit": limits.limit, "per_host": limits.limit_per_host},
                "client_connections_opened": totals.get("connections_created"),
                "client_connections_reused": totals.get("connections_reused"),
                "client_requests": totals.get("requests"),
                "client_queue_wait_s": totals.get("queue_wait_s"),
                "client_latency_s": totals.get("latency_s"),
            }
        )

    asyncio.run(main())
    return stats


def run_sync_threads(
    url: str, n: int, rounds: int, tally: Tally, *, background: bool
) -> dict[str, Any]:
    """Thread workers: ``evaluate_info_sync`` (background loop), else ``asyncio.run``."""
    from agentfleet.evaluation.client import evaluate_info, evaluate_info_sync
    from agentfleet.http import HttpPool, preset_for_fleet
    from agentfleet.http.background import background_loop

    limits = preset_for_fleet(n)
    HttpPool.configure_default(limits)

    def call(i: int, r: int) -> None:
        b = _body(i, r)
        args = (b["exit_status"], b["result"], b["container_id"], b["instance_id"])
        more = (b["dataset_name"], b["split"], url)
        if background:
            reward = evaluate_info_sync(*args, *more)[0]
        else:
            reward = asyncio.run(evaluate_info(*args, *more))[0]
        if reward != 1.0:
            raise ValueError(f"reward {reward}")

    def agent(i: int) -> None:
        for r in range(rounds):
            tally.record(lambda i=i, r=r: call(i, r))  # type: ignore[misc]

    with ThreadPoolExecutor(max_workers=n) as ex:
        list(ex.map(agent, range(n)))
    out: dict[str, Any] = {"threads": n}
    if background:
        totals = background_loop().pool().stats()["totals"]
        out["pool_limits"] = {"limit": limits.limit, "per_host": limits.limit_per_host}
        out["client_connections_opened"] = totals.get("connections_created")
    return out


def _preimport(pattern: str) -> None:
    import importlib

    mods = {
        "blocking": ["requests"],
        "threads": ["requests"],
        "per-call": ["aiohttp"],
        "agentfleet": ["agentfleet.evaluation.client", "agentfleet.http.pool"],
        "agentfleet-blocking": ["agentfleet.evaluation.client", "agentfleet.http.pool"],
        "sync-threads": ["agentfleet.evaluation.client", "agentfleet.http.background"],
        "run-threads": ["agentfleet.evaluation.client", "agentfleet.http.pool"],
    }.get(pattern, [])
    for mod in mods:
        importlib.import_module(mod)


def handle(config: dict[str, Any]) -> dict[str, Any]:
    import logging

    logging.disable(logging.WARNING)  # one error line per failed call would skew CPU time
    pattern = config["pattern"]
    url, n, rounds = config["url"], int(config["n"]), int(config["rounds"])
    _preimport(pattern)  # imports are not part of the measurement
    # nor is collecting what they left: every pattern starts with the import-time objects
    # out of the collector's generations (else a larger heap, e.g. pydantic's, pays a full
    # collection in the middle of the burst)
    gc.collect()
    gc.freeze()
    tally = Tally()
    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    if pattern == "blocking":
        extra = run_blocking(url, n, rounds, tally)
    elif pattern == "per-call":
        extra = run_per_call(url, n, rounds, tally)
    elif pattern == "threads":
        extra = run_threads(url, n, rounds, tally)
    elif pattern in ("agentfleet", "agentfleet-blocking"):
        extra = run_agentfleet(url, n, rounds, tally, blocking_form=pattern != "agentfleet")
    elif pattern in ("sync-threads", "run-threads"):
        extra = run_sync_threads(url, n, rounds, tally, background=pattern == "sync-threads")
    else:
        raise SystemExit(f"unknown pattern {pattern!r} (choose from {', '.join(PATTERNS)})")
    wall = time.perf_counter() - t0
    return {
        "pattern": pattern,
        "n": n,
        "rounds": rounds,
        "wall_s": wall,
        "ok": tally.ok,
        "errors": sum(tally.errors.values()),
        "error_kinds": dict(tally.errors),
        "client_cpu_s": cpu_seconds() - cpu0,
        "client_peak_rss_mib": peak_rss_mib(),
        **extra,
    }


if __name__ == "__main__":
    child_main(handle)

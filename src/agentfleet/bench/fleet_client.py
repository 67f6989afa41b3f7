"""The runner side of ``agentfleet bench fleet``, run in its own process.

Every agent gets a sandbox (set-up phase, timed apart), then does ``steps`` steps of
"model" (fixed latency ``delay``) + one exec on the sandbox server, the last exec being the
submit sentinel; then the sandboxes are deleted (tear-down, timed apart).

Runners (``config["runner"]``):

- ``agentfleet``: ``LightAgent`` + ``ScriptedModel(delay_s=delay)`` + ``RemoteDockerEnvironment``
  over ``SandboxClient`` (the loop's shared ``HttpPool``, ``preset_for_fleet(n)``), every
  agent a task of one event loop.
- ``threads``: built like mini-swe-agent's batch runner: ``ThreadPoolExecutor(workers)``, each
  agent blocking ``time.sleep(delay)`` for the model and ``requests`` ``POST .../exec`` for each
  command (a ``requests.Session`` per agent, closed at its end: the origin's fixed env).
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from agentfleet.bench.common import child_main, cpu_seconds, peak_rss_mib


def scripted_replies(steps: int) -> list[str]:
    from agentfleet.models.offline import SUBMIT_SENTINEL, bash_reply

    return [bash_reply(f"step {i}", "true") for i in range(steps - 1)] + [
        bash_reply("done", f"echo {SUBMIT_SENTINEL}")
    ]


async def _create(url: str, n: int, token: str | None) -> list[str]:
    from agentfleet.sandbox.base import CreateSandbox
    from agentfleet.sandbox.client import SandboxClient

    client = SandboxClient(url, token=token)
    infos = await asyncio.gather(*(client.create(CreateSandbox(run="bench")) for _ in range(n)))
    return [i.sandbox_id for i in infos]


async def _delete(url: str, ids: list[str], token: str | None) -> None:
    from agentfleet.sandbox.client import SandboxClient

    client = SandboxClient(url, token=token)
    await asyncio.gather(*(client.delete(sid) for sid in ids), return_exceptions=True)


def _agentfleet(config: dict[str, Any]) -> dict[str, Any]:
    from agentfleet.agent.light import AgentConfig, LightAgent
    from agentfleet.http import HttpPool, preset_for_fleet
    from agentfleet.models.offline import ScriptedModel
    from agentfleet.sandbox.client import SandboxClient
    from agentfleet.sandbox.env import RemoteDockerEnvironment
    from agentfleet.tasks import Task

    url, n, steps, delay = config["url"], int(config["n"]), int(config["steps"]), config["delay"]
    token = config.get("token")
    limits = preset_for_fleet(n)
    HttpPool.configure_default(limits)
    task = Task(
        id="bench",
        dataset="bench",
        prompt="Benchmark task: run the scripted commands.",
        test_cmd="true",
        workload_cmd="true",
        task_dir=Path("."),
    )
    agent_cfg = AgentConfig(step_limit=steps + 5, time_limit_s=3600)
    replies = scripted_replies(steps)
    out: dict[str, Any] = {}

    async def main() -> None:
        t0 = time.perf_counter()
        ids = await _create(url, n, token)
        out["setup_s"] = time.perf_counter() - t0
        client = SandboxClient(url, token=token)
        statuses: dict[str, int] = {}

        async def agent(sid: str) -> None:
            model = ScriptedModel(replies, delay_s=delay)
            env = RemoteDockerEnvironment(sid, sandboxes=client)
            try:
                res = await LightAgent(model, env, task, agent_cfg).run()
                status = res.exit_status
            except Exception as exc:
                status = type(exc).__name__
            statuses[status] = statuses.get(status, 0) + 1

        cpu0 = cpu_seconds()
        t0 = time.perf_counter()
        await asyncio.gather(*(agent(sid) for sid in ids))
        out["wall_s"] = time.perf_counter() - t0
        out["runner_cpu_s"] = cpu_seconds() - cpu0
        out["statuses"] = statuses
        t0 = time.perf_counter()
        await _delete(url, ids, token)
        out["teardown_s"] = time.perf_counter() - t0
        totals = HttpPool.for_loop().stats()["totals"]
        out["pool_limits"] = {"limit": limits.limit, "per_host": limits.limit_per_host}
        out["client_connections_opened"] = totals.get("connections_created")

    asyncio.run(main())
    return out


def _threads(config: dict[str, Any]) -> dict[str, Any]:
    import requests

    import agentfleet.sandbox.client  # noqa: F401  (imports are not set-up time)
    from agentfleet.models.offline import SUBMIT_SENTINEL

    url, n, steps, delay = config["url"], int(config["n"]), int(config["steps"]), config["delay"]
    workers = int(config["workers"])
    token = config.get("token")
    out: dict[str, Any] = {}
    t0 = time.perf_counter()
    ids = asyncio.run(_create(url, n, token))
    out["setup_s"] = time.perf_counter() - t0

    def agent(sid: str) -> str:
        session = requests.Session()
        if token:
            session.headers["Authorization"] = f"Bearer {token}"
        try:
            for step in range(steps):
                time.sleep(delay)  # the model call
                cmd = "true" if step < steps - 1 else f"echo {SUBMIT_SENTINEL}"
                resp = session.post(
                    f"{url}/sandboxes/{sid}/exec", json={"command": cmd, "timeout": 60}, timeout=90
                )
                resp.raise_for_status()
                if resp.json()["output"].strip() == SUBMIT_SENTINEL:
                    return "Submitted"
            return "LimitsExceeded"
        except Exception as exc:
            return type(exc).__name__
        finally:
            session.close()

    cpu0 = cpu_seconds()
    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(agent, ids))
    out["wall_s"] = time.perf_counter() - t0
    out["runner_cpu_s"] = cpu_seconds() - cpu0
    statuses: dict[str, int] = {}
    for r in results:
        statuses[r] = statuses.get(r, 0) + 1
    out["statuses"] = statuses
    t0 = time.perf_counter()
    asyncio.run(_delete(url, ids, token))
    out["teardown_s"] = time.perf_counter() - t0
    return out


def handle(config: dict[str, Any]) -> dict[str, Any]:
    import logging

    logging.disable(logging.WARNING)
    if config["runner"] == "agentfleet":
        res = _agentfleet(config)
    elif config["runner"] == "threads":
        res = _threads(config)
    else:
        raise SystemExit(f"unknown runner {config['runner']!r}")
    res["runner_peak_rss_mib"] = peak_rss_mib()
    return res


if __name__ == "__main__":
    child_main(handle)

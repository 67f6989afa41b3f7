"""The sandbox and evaluation servers a run embeds when its config names none."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from typing import NamedTuple

from agentfleet.evaluation.client import EvalClient, EvalClientError
from agentfleet.evaluation.evaluator import Evaluator
from agentfleet.evaluation.pinning import CpuSet, auto_workers, available_cpus, plan_cpu_sets
from agentfleet.evaluation.server import create_app as eval_app
from agentfleet.fleet.config import FleetConfig, eval_config
from agentfleet.http.retry import TRANSPORT_STATUSES, RetryPolicy
from agentfleet.sandbox.base import DEFAULT_MAX_EXECS
from agentfleet.sandbox.client import SandboxClient
from agentfleet.sandbox.server import create_app as sandbox_app, make_backend
from agentfleet.serving import serve_in_loop
from agentfleet.tasks import load_dataset

# a server started just before the run has a few seconds to come up (0.5 + 1 + 2 s)
_PROBE_RETRY = RetryPolicy(attempts=4, wait_min=0.5, wait_max=2.0)


class ServerUnreachable(Exception):
    """A server the run was pointed at does not answer: nothing is started."""


async def check_eval_server(url: str, token: str | None) -> None:
    """``ServerUnreachable`` unless an evaluation server answers ``/healthz`` at ``url``
    (an answer that is an error still counts: the server is there). Evaluations ride over
    a server restarting for minutes; a wrong ``--eval-url`` is said at once instead."""
    try:
        await EvalClient(url, token=token).health(retry=_PROBE_RETRY)
    except EvalClientError as exc:
        if exc.status_code is None or exc.status_code in TRANSPORT_STATUSES:
            raise ServerUnreachable(
                f"--eval-url {url}: no evaluation server answers ({exc.message})"
            ) from exc


class Servers(NamedTuple):
    sandbox_url: str
    eval_url: str
    sandbox_token: str | None  # the sandbox server's (None: $AGENTFLEET_SANDBOX_TOKEN)


def agent_cpus(cfg: FleetConfig) -> CpuSet | None:
    """The CPUs the agents' sandbox commands run on when this run embeds the evaluation
    server: those no pinned evaluation worker owns. None (agents not pinned) when the run
    uses another evaluation server, or when its workers take every CPU (``auto``)."""
    if cfg.eval_url is not None:
        return None
    have = available_cpus()
    sets = plan_cpu_sets(cfg.eval_workers or auto_workers(1, have), 1, have)
    if not sets:
        return None
    taken = {c for s in sets for c in s}
    return tuple(c for c in have if c not in taken) or None


@asynccontextmanager
async def embedded_servers(cfg: FleetConfig) -> AsyncIterator[Servers]:
    """The sandbox and evaluation servers the config does not point at, on free loopback ports;
    an embedded sandbox server requires a token of its own, made here."""
    # the servers load the bundled datasets and the one this run names, nothing else
    roots = [(await asyncio.to_thread(load_dataset, cfg.dataset)).path]
    async with AsyncExitStack() as stack:
        sandbox_url, token = cfg.sandbox_url, cfg.sandbox_token
        if sandbox_url is None:
            token = secrets.token_urlsafe(32)
            # our own agents only: the exec cap never throttles them (one command each)
            max_execs = max(DEFAULT_MAX_EXECS, 4 * cfg.workers)
            backend = None  # the process backend under cfg.sandbox_root
            if cfg.sandbox_backend == "docker":  # image tasks
                backend = make_backend(
                    "docker", root=cfg.sandbox_root, image_naming=cfg.image_naming, pull=cfg.pull
                )
            app = sandbox_app(
                backend,
                root=cfg.sandbox_root,
                token=token,
                max_execs=max_execs,
                dataset_roots=roots,
            )
            server = await stack.enter_async_context(serve_in_loop(app))
            sandbox_url = server.url
        eval_url = cfg.eval_url
        if eval_url is None:
            evaluator = Evaluator(
                SandboxClient(sandbox_url, token=token),
                eval_config(cfg),
                dataset_roots=roots,
            )
            app = eval_app(evaluator, workers=cfg.eval_workers)
            eval_url = (await stack.enter_async_context(serve_in_loop(app))).url
        yield Servers(sandbox_url, eval_url, token)

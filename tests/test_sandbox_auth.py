"""Sandbox server authentication and exec caps, against real servers on 127.0.0.1.

The token: every route but ``/healthz`` needs it (the routes are enumerated from the app, so a
new one cannot slip), a wrong one is 401, the right one works; a non-loopback bind without a
token is refused before anything binds; every caller (client, agent environment, evaluation
server, the runner's embedded servers) sends it. Exec caps: per sandbox and in total, 429
with ``Retry-After`` beyond, surfaced by the client as ``SandboxBusy``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.routing import APIRoute
from starlette.routing import Route

from agentfleet.evaluation.evaluator import EvalConfig
from agentfleet.evaluation.schema import EvalRequest
from agentfleet.evaluation.server import real_evaluator
from agentfleet.fleet.run import RunRequest, build_config
from agentfleet.fleet.runner import FleetConfig, embedded_servers, run_fleet
from agentfleet.http.pool import NO_RETRY, HttpPool, Response
from agentfleet.models import ModelSpec
from agentfleet.sandbox import (
    CreateSandbox,
    ProcessBackend,
    RemoteDockerEnvironment,
    SandboxBusy,
    SandboxClient,
    SandboxService,
    SandboxUnauthorized,
    create_app,
)
from agentfleet.sandbox.base import TOKEN_ENV
from agentfleet.serving import RunningServer, serve_in_loop

TOKEN = "s3cret-token-for-tests"
AGENTFLEET = str(Path(sys.executable).with_name("agentfleet"))


@pytest.fixture(autouse=True)
def _no_token_in_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(TOKEN_ENV, raising=False)


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[RunningServer, Any]]:
    """A process-backend sandbox server that requires ``TOKEN``."""
    app = create_app(SandboxService(ProcessBackend(tmp_path / "sb"), reap_period_s=0), token=TOKEN)
    async with serve_in_loop(app) as running:
        yield running, app


async def raw(
    url: str, method: str, path: str, headers: dict[str, str] | None = None, **kw: Any
) -> Response:
    return await HttpPool.for_loop().request(
        method, url + path, headers=headers, retry=NO_RETRY, idempotent=False, **kw
    )


def _requests(app: Any) -> list[tuple[str, str]]:
    """(method, path) of every route of the app, path parameters filled in."""
    out = []
    for route in app.routes:
        assert isinstance(route, APIRoute | Route), route
        path = route.path.replace("{sandbox_id}", "sb-none").replace("{path}", "x")
        assert "{" not in path, path  # a new kind of parameter: fill it in above
        for method in sorted(route.methods or ()):
            out.append((method, path))
    return out


# --------------------------------------------------------------------------- the token


async def test_every_route_but_healthz_needs_the_token(
    served: tuple[RunningServer, Any],
) -> None:
    running, app = served

    @app.get("/added-later")  # a route added after the app was made is guarded too
    async def added() -> dict[str, str]:
        return {"ok": "yes"}

    routes = _requests(app)
    paths = {p for _, p in routes}
    assert {"/healthz", "/metrics", "/sandboxes", "/openapi.json", "/added-later"} <= paths
    assert len(routes) >= 10
    wrong = [
        {},
        {"Authorization": "Bearer wrong"},
        {"Authorization": f"Bearer {TOKEN}x"},
        {"Authorization": f"Basic {TOKEN}"},
        {"Authorization": TOKEN},
        {"Authorization": f"Bearer {TOKEN[:-1]}"},
    ]
    for method, path in routes:
        for headers in wrong:
            resp = await raw(running.url, method, path, headers)
            if path == "/healthz":
                assert resp.status == 200, (method, path)
                continue
            assert resp.status == 401, (method, path, headers, resp.status)
            assert resp.headers["WWW-Authenticate"] == "Bearer"
            if method != "HEAD":
                assert resp.json() == {"error": "missing or wrong bearer token"}
        ok = await raw(running.url, method, path, {"Authorization": f"Bearer {TOKEN}"})
        assert ok.status != 401, (method, path)
    # a path that exists nowhere is 401 too: nothing about the API leaks
    assert (await raw(running.url, "GET", "/nowhere")).status == 401
    authed = {"Authorization": f"bearer  {TOKEN}"}  # scheme in any case, spaces around
    assert (await raw(running.url, "GET", "/sandboxes", authed)).status == 200


async def test_the_client_and_the_environment_send_the_token(
    served: tuple[RunningServer, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    running, _ = served
    with pytest.raises(SandboxUnauthorized) as e:
        await SandboxClient(running.url).list()
    assert e.value.status == 401 and TOKEN_ENV in str(e.value)
    with pytest.raises(SandboxUnauthorized):
        await SandboxClient(running.url, token="wrong").list()
    assert (await SandboxClient(running.url).healthz())["status"] == "ok"  # open

    client = SandboxClient(running.url, token=TOKEN)
    info = await client.create(CreateSandbox())
    try:
        assert (await client.exec(info.sandbox_id, "echo hi")).output == "hi\n"
        await client.write_file(info.sandbox_id, "f.txt", b"data")
        assert await client.read_file(info.sandbox_id, "f.txt") == b"data"
        assert "agentfleet_sandbox_execs_total" in await client.metrics()
        env = RemoteDockerEnvironment(info.sandbox_id, running.url, token=TOKEN)
        assert (await env.aexecute("echo env")).output == "env\n"
        monkeypatch.setenv(TOKEN_ENV, TOKEN)  # the default of both
        from_env = RemoteDockerEnvironment(info.sandbox_id, running.url)
        assert (await from_env.aexecute("true")).returncode == 0
        assert len(await SandboxClient(running.url).list()) == 1
        with pytest.raises(SandboxUnauthorized):  # an explicit empty token sends none
            await SandboxClient(running.url, token="").list()
    finally:
        await client.delete(info.sandbox_id)


async def test_the_evaluation_server_sends_its_sandbox_token(
    served: tuple[RunningServer, Any],
) -> None:
    running, _ = served
    client = SandboxClient(running.url, token=TOKEN)
    sid = (await client.create(CreateSandbox())).sandbox_id
    req = EvalRequest(
        exit_status="Submitted",
        result=None,
        container_id=sid,
        instance_id="dedupe-pairs",
        dataset_name="perf-lite",
        split="test",
    )
    try:
        async with real_evaluator(running.url, EvalConfig(repeats=1), TOKEN) as ev:
            await ev.check(req)  # runs `true` in the sandbox: authenticated
        async with real_evaluator(running.url, EvalConfig(repeats=1), "wrong") as ev:
            with pytest.raises(SandboxUnauthorized):
                await ev.check(req)
    finally:
        await client.delete(sid)


def _serve_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    return subprocess.run(
        [AGENTFLEET, "serve-sandbox", "--port", "0", *args],
        capture_output=True,
        text=True,
        timeout=60,  # a server that started would serve forever: this fails the test
        env={**base, **(env or {})},
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.mark.parametrize("extra", [[], ["--token", ""]])
def test_non_loopback_bind_without_a_token_is_refused_before_binding(extra: list[str]) -> None:
    proc = _serve_cli("--host", "0.0.0.0", *extra)
    assert proc.returncode == 2, proc.stderr
    out = proc.stdout + proc.stderr
    assert "refusing to serve on non-loopback host '0.0.0.0' without a token" in out
    assert "--token" in out and TOKEN_ENV in out
    assert "Uvicorn running" not in out and "Traceback" not in out


async def test_serve_sandbox_takes_the_token_from_the_environment(tmp_path: Path) -> None:
    from test_sandbox_docker import _free_port, _until_healthy

    port = _free_port()
    proc = await asyncio.create_subprocess_exec(
        AGENTFLEET,
        *("serve-sandbox", "--port", str(port), "--root", str(tmp_path / "sb")),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
        env={**os.environ, TOKEN_ENV: TOKEN},
    )
    try:
        await _until_healthy(proc, port)
        url = f"http://127.0.0.1:{port}"
        assert (await raw(url, "GET", "/metrics")).status == 401
        assert await SandboxClient(url, token=TOKEN).list() == []
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 30)


# --------------------------------------------------------------------------- the runner


def _fleet(tmp_path: Path, **kw: Any) -> FleetConfig:
    from agentfleet.agent import AgentConfig

    return FleetConfig(
        model=ModelSpec("oracle"),
        run_dir=tmp_path / "run",
        task_ids=["dedupe-pairs"],
        workers=1,
        agent=AgentConfig(step_limit=6),
        sandbox_root=tmp_path / "sandboxes",
        eval_repeats=1,
        sample_every_s=0,
        **kw,
    )


async def test_embedded_sandbox_server_requires_a_fresh_token(tmp_path: Path) -> None:
    cfg = _fleet(tmp_path)
    async with embedded_servers(cfg) as first, embedded_servers(cfg) as second:
        assert first.sandbox_token and second.sandbox_token
        assert first.sandbox_token != second.sandbox_token  # one per server, never fixed
        assert len(first.sandbox_token) >= 32
        assert (await raw(first.sandbox_url, "GET", "/sandboxes")).status == 401
        auth = {"Authorization": f"Bearer {second.sandbox_token}"}
        assert (await raw(first.sandbox_url, "GET", "/sandboxes", auth)).status == 401
        client = SandboxClient(first.sandbox_url, token=first.sandbox_token)
        assert await client.list() == []
    assert "sandbox_token" not in repr(cfg)


@pytest.mark.slow
async def test_embedded_run_end_to_end_with_its_token(tmp_path: Path) -> None:
    cfg = _fleet(tmp_path)
    (outcome,) = await run_fleet(cfg)
    assert outcome.exit_status == "Submitted", outcome
    assert outcome.info["status"] == "ok", outcome.info
    assert outcome.reward > 0
    assert cfg.sandbox_root is not None and list(cfg.sandbox_root.iterdir()) == []


@pytest.mark.slow
async def test_run_against_a_token_server(
    served: tuple[RunningServer, Any], tmp_path: Path
) -> None:
    running, _ = served
    req = RunRequest(
        model="oracle",
        tasks=["dedupe-pairs"],
        sandbox_urls=[running.url],
        sandbox_token=TOKEN,
        run_dir=tmp_path / "run",
    )
    cfg, _ = await asyncio.to_thread(build_config, req)  # sync: reads the dataset's files
    assert cfg.sandbox_token == TOKEN and TOKEN not in repr(cfg)
    cfg.eval_repeats, cfg.sample_every_s = 1, 0
    (outcome,) = await run_fleet(cfg)
    assert outcome.exit_status == "Submitted" and outcome.info["status"] == "ok", outcome
    assert TOKEN not in (cfg.run_dir / "config.json").read_text()


# --------------------------------------------------------------------------- exec caps


@pytest.fixture
async def capped(tmp_path: Path) -> AsyncIterator[tuple[str, SandboxService]]:
    service = SandboxService(
        ProcessBackend(tmp_path / "sb"), reap_period_s=0, max_execs=3, max_execs_per_sandbox=2
    )
    async with serve_in_loop(create_app(service)) as running:
        yield running.url, service


async def _until(pred: Any) -> None:
    for _ in range(1500):  # 30 s
        if pred():
            return
        await asyncio.sleep(0.02)
    raise AssertionError("condition never met")


async def _until_running(service: SandboxService, n: int) -> None:
    await _until(lambda: service.execs_running >= n)


def _exec(url: str, sid: str, command: str, key: str | None = None) -> Any:
    headers = {"Idempotency-Key": key} if key else None
    return asyncio.ensure_future(
        raw(url, "POST", f"/sandboxes/{sid}/exec", headers, json={"command": command})
    )


async def test_exec_caps_per_sandbox_and_in_total(
    capped: tuple[str, SandboxService],
) -> None:
    url, service = capped
    client = SandboxClient(url)
    a, b = [(await client.create(CreateSandbox())).sandbox_id for _ in range(2)]
    gate = "while [ ! -e go ]; do sleep 0.05; done; echo done"
    running = [_exec(url, a, gate), _exec(url, a, gate, key="k1")]
    try:
        await _until_running(service, 2)
        busy = await raw(url, "POST", f"/sandboxes/{a}/exec", json={"command": "true"})
        assert busy.status == 429
        assert busy.headers["Retry-After"] == "1"
        body = busy.json()
        assert body["type"] == "SandboxBusy" and body["retry_after"] == 1
        assert "max_execs_per_sandbox" in body["error"] and "2 at most" in body["error"]
        # a retry of a running keyed exec is no new command: it waits for the same one
        running.append(_exec(url, a, gate, key="k1"))
        # another sandbox still has room, up to the total
        running.append(_exec(url, b, gate))
        await _until_running(service, 3)
        busy = await raw(url, "POST", f"/sandboxes/{b}/exec", json={"command": "true"})
        assert busy.status == 429 and "max_execs)" in busy.json()["error"]
        # the client surfaces it as SandboxBusy once its pool's retries are spent
        pool = HttpPool(retry=NO_RETRY)
        try:
            with pytest.raises(SandboxBusy) as e:
                await SandboxClient(url, pool=pool).exec(b, "true")
        finally:
            await pool.aclose()
        assert e.value.status == 429 and e.value.retry_after == 1.0
        for sid in (a, b):
            await client.write_file(sid, "go", b"")
        results = await asyncio.gather(*running)
        assert [r.status for r in results] == [200] * 4
        assert all(r.json()["output"] == "done\n" for r in results)
        assert results[1].json() == results[2].json()  # k1 ran once
        assert service.stats.execs_rejected == 3
        assert service.stats.execs_total == 3
        # everything released: the caps are free again
        assert service._admitted_total == 0 and service._admitted == {}
        assert (await client.exec(a, "echo again")).output == "again\n"
    finally:
        for fut in running:
            fut.cancel()
        await asyncio.gather(*running, return_exceptions=True)
        for sid in (a, b):
            await client.delete(sid)


async def test_an_exec_whose_client_leaves_frees_its_slot(
    capped: tuple[str, SandboxService],
) -> None:
    url, service = capped
    client = SandboxClient(url)
    sid = (await client.create(CreateSandbox())).sandbox_id
    try:
        first = [_exec(url, sid, "sleep 60") for _ in range(2)]
        await _until_running(service, 2)
        for fut in first:
            fut.cancel()  # the client goes away: the server kills the command
        await asyncio.gather(*first, return_exceptions=True)
        await _until(lambda: service._admitted_total == 0)
        assert (await client.exec(sid, "echo free")).output == "free\n"
    finally:
        await client.delete(sid)


def test_serve_sandbox_rejects_bad_caps_and_docker_only_options() -> None:
    from typer.testing import CliRunner

    from agentfleet.cli import app

    for args, message in [
        (["--max-execs", "0"], "--max-execs 0"),
        (["--max-execs-per-sandbox", "0"], "--max-execs-per-sandbox 0"),
        (["--allow-image", "x:1"], "--allow-image: only for --backend docker"),
        (["--backend", "docker", "--allow-image", " "], "--allow-image: empty image name"),
    ]:
        result = CliRunner().invoke(app, ["serve-sandbox", *args])
        assert result.exit_code == 2, result.output
        assert message in result.output

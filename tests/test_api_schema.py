"""What schemathesis found (tests/test_schemathesis.py), each pinned by a plain test against a
real server on 127.0.0.1: limits beyond any machine are 422 (they were 500), a 405 names the
allowed methods, remote worker names that come and go leave no metric series behind, and
each server's OpenAPI schema documents what the server does (the statuses it answers, its
token, its non-JSON bodies, what an exec request may not hold).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agentfleet.evaluation.server import create_app as eval_app
from agentfleet.http.pool import NO_RETRY, HttpPool, Response
from agentfleet.sandbox import ProcessBackend, SandboxService
from agentfleet.sandbox.base import ExecRequest
from agentfleet.sandbox.server import create_app as sandbox_app
from agentfleet.serving import serve_in_loop

TOKEN = "t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@pytest.fixture
async def sandbox_url(tmp_path: Path) -> AsyncIterator[str]:
    """A process-backend server whose operator set no limits at all."""
    backend = ProcessBackend(tmp_path / "sb", memory_mb=None, pids_limit=None, file_size_mb=None)
    app = sandbox_app(SandboxService(backend, reap_period_s=0), token=TOKEN)
    async with serve_in_loop(app) as running:
        yield running.url


async def call(url: str, method: str, path: str, **kw: Any) -> Response:
    return await HttpPool.for_loop().request(
        method, url + path, headers=AUTH, retry=NO_RETRY, idempotent=False, **kw
    )


@pytest.mark.parametrize(
    "fields",
    [
        {"cpus": 1e308},  # was 500: OverflowError (CFS quota of an infinite float)
        {"cpus": 1e12},  # was 500: the cgroup refused the quota (EINVAL)
        {"cpu_time_s": 10**30},  # was 201 with the rlimit wrapped around
        {"memory_mb": 2**62},
        {"pids_limit": 2**40},
        {"file_size_mb": 2**62},
    ],
    ids=lambda f: next(iter(f)),
)
async def test_limits_beyond_any_machine_are_422(
    sandbox_url: str, tmp_path: Path, fields: dict[str, Any]
) -> None:
    resp = await call(sandbox_url, "POST", "/sandboxes", json=fields)
    assert resp.status == 422, resp.text()
    (problem,) = resp.json()["detail"]
    assert problem["loc"] == ["body", next(iter(fields))]
    assert list((tmp_path / "sb").iterdir()) == []  # nothing made
    ok = await call(sandbox_url, "POST", "/sandboxes", json={"cpus": 4096, "cpu_time_s": 3600})
    assert ok.status == 201, ok.text()  # the largest CPU count still works


async def test_a_405_names_the_allowed_methods(sandbox_url: str) -> None:
    resp = await call(sandbox_url, "PATCH", "/sandboxes")
    assert resp.status == 405
    assert set(resp.headers["Allow"].replace(" ", "").split(",")) == {"GET", "POST"}
    assert resp.json() == {"error": "Method Not Allowed"}


def _operations(schema: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {
        f"{method.upper()} {path}": op
        for path, ops in schema["paths"].items()
        for method, op in ops.items()
    }


def _statuses(op: dict[str, Any]) -> set[int]:
    return {int(s) for s in op["responses"]}


def test_sandbox_schema_documents_every_answer(tmp_path: Path) -> None:
    ops = _operations(sandbox_app(root=tmp_path, token=TOKEN).openapi())
    assert _statuses(ops["POST /sandboxes"]) >= {201, 400, 401, 404, 409, 413, 422, 429}
    assert _statuses(ops["POST /sandboxes/{sandbox_id}/exec"]) >= {200, 400, 404, 409, 429}
    for label in ("GET /sandboxes/{sandbox_id}", "DELETE /sandboxes/{sandbox_id}"):
        assert 404 in _statuses(ops[label]), label
    files = ops["GET /sandboxes/{sandbox_id}/files"]["responses"]
    assert list(files["200"]["content"]) == ["application/octet-stream"]
    assert list(files["404"]["content"]) == ["application/json"]  # errors stay JSON
    assert files["404"]["content"]["application/json"]["schema"]["required"] == ["error"]
    put = ops["PUT /sandboxes/{sandbox_id}/files"]["requestBody"]["content"]
    assert put["application/octet-stream"]["schema"]["format"] == "binary"
    assert list(ops["GET /metrics"]["responses"]["200"]["content"]) == ["text/plain"]
    # the token: every operation but /healthz needs it and may answer 401
    for label, op in ops.items():
        guarded = label != "GET /healthz"
        assert (op.get("security") == [{"bearer": []}]) is guarded, label
        assert (401 in _statuses(op)) is guarded, label
    unguarded = _operations(sandbox_app(root=tmp_path).openapi())
    assert all("security" not in op and 401 not in _statuses(op) for op in unguarded.values())


def test_exec_request_schema_says_what_is_refused() -> None:
    schema = ExecRequest.model_json_schema()["properties"]
    assert schema["command"]["pattern"] == schema["cwd"]["pattern"] == "^[^\\u0000]*$"
    names = schema["env"]["propertyNames"]
    assert names["pattern"] == "^(?!BASH_FUNC_)[^=\\u0000]+$"
    assert "BASH_ENV" in names["not"]["enum"]
    assert schema["env"]["additionalProperties"]["pattern"] == "^[^\\u0000]*$"


def test_evaluation_schema_documents_every_answer() -> None:
    ops = _operations(eval_app(test_latency=0.01, token=TOKEN).openapi())
    assert _statuses(ops["POST /evaluations"]) >= {200, 202, 400, 401, 404, 413, 422, 429}
    assert _statuses(ops["GET /evaluations/{job_id}"]) >= {200, 401, 404, 422}
    assert _statuses(ops["POST /evaluate"]) >= {200, 400, 401, 404, 422, 429}
    assert _statuses(ops["POST /workers/lease"]) >= {200, 204, 401, 422}
    assert 410 in _statuses(ops["POST /workers/leases/{lease_id}/heartbeat"])
    assert 410 in _statuses(ops["POST /workers/leases/{lease_id}/release"])
    assert 409 in _statuses(ops["POST /workers/leases/{lease_id}/result"])
    assert list(ops["GET /metrics"]["responses"]["200"]["content"]) == ["text/plain"]
    assert "security" not in ops["GET /healthz"]
    assert all(401 in _statuses(op) for label, op in ops.items() if label != "GET /healthz")


async def test_remote_worker_names_that_come_and_go_leave_no_metric_series() -> None:
    """Every name a lease request gave got its own ``agentfleet_eval_worker_busy`` series,
    kept forever: fuzzed names grew /metrics (and memory) without bound."""
    app = eval_app(test_latency=0.01, token=TOKEN)
    async with serve_in_loop(app) as running:

        async def lease(worker: str) -> None:
            body = {"worker": worker, "wait": 0}
            assert (await call(running.url, "POST", "/workers/lease", json=body)).status == 204

        async def series() -> list[str]:
            text = (await call(running.url, "GET", "/metrics")).text()
            return re.findall(r'agentfleet_eval_worker_busy\{[^}]*worker="(w\d+)"', text)

        for i in range(20):
            await lease(f"w{i}")
        assert len(await series()) == 20
        leases = app.state.jobs.leases
        now = leases.clock
        leases.clock = lambda: now() + 3600  # all of them last seen an hour ago
        await lease("w99")
        assert await series() == ["w99"]

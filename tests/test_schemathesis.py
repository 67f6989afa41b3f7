"""Schemathesis against both servers' OpenAPI schemas, each served for real by its command
(``serve-sandbox`` confined by bubblewrap, ``serve-eval`` in test mode) on 127.0.0.1.

Every operation of each schema is fuzzed twice: with the bearer token (data that fits the
schema and data that does not: never a 5xx, and the status, media type and body are the
documented ones) and without it (401 everywhere but ``/healthz``, never a 5xx). Every
request is bounded in time (a timeout is a hang, and fails). Afterwards the server has
the open files and child processes it had before (a small constant allowed), nothing of
the fuzzing's sandboxes is left, and ``/healthz`` still answers.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypothesis
import psutil
import pytest
import requests
import schemathesis
from conftest import require_tool, sandbox_processes
from hypothesis import HealthCheck, Phase, strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)
from test_cli_servers import AGENTFLEET, stop, wait_healthy

pytestmark = pytest.mark.slow

TOKEN = "schemathesis-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
WITH_TOKEN_EXAMPLES = 40  # cases per operation, valid and invalid data mixed
WITHOUT_TOKEN_EXAMPLES = 5
REQUEST_TIMEOUT_S = 30.0  # no answer by then: a hang
LONG_POLL_CAP_S = 0.2  # the long polls' own ``wait`` (lease, job status) cut to this
EXEC_TIMEOUT_CAP_S = 5.0  # a fuzzed command's ``timeout`` cut to this
FD_SLACK = 3  # open files the server may hold more after the run than before
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
OPEN_PATHS = {"/healthz"}
_URL_LINE = re.compile(rb"Uvicorn running on (http://127\.0\.0\.1:\d+)")


# --------------------------------------------------------------------------- the servers


@dataclass
class Served:
    proc: subprocess.Popen[bytes]
    url: str


@contextmanager
def serve(args: list[str], log: Path) -> Iterator[Served]:
    """``agentfleet <args>`` on 127.0.0.1 port 0 with the token (its output in ``log``,
    its URL read from there); stopped by SIGINT after, and it must exit as it should."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [AGENTFLEET, *args, "--host", "127.0.0.1", "--port", "0", "--token", TOKEN],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        url = _url_from_log(log, proc)
        wait_healthy(url, proc)
        yield Served(proc, url)
    finally:
        stop([proc], signal.SIGINT)
    assert proc.returncode == 128 + signal.SIGINT, log.read_text(errors="replace")[-3000:]


def _url_from_log(log: Path, proc: subprocess.Popen[bytes], timeout: float = 60) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = _URL_LINE.search(log.read_bytes())
        if found:
            return found.group(1).decode()
        assert proc.poll() is None, log.read_text(errors="replace")
        time.sleep(0.1)
    pytest.fail(f"no URL in the server's log: {log.read_text(errors='replace')}")


@dataclass(frozen=True)
class Footprint:
    fds: int
    children: int


def footprint(pid: int) -> Footprint:
    """Open files of the process, and its live child processes (all generations)."""
    children = [
        c
        for c in psutil.Process(pid).children(recursive=True)
        if _status(c) not in (psutil.STATUS_ZOMBIE, None)
    ]
    return Footprint(len(os.listdir(f"/proc/{pid}/fd")), len(children))


def _status(p: psutil.Process) -> str | None:
    try:
        return str(p.status())
    except psutil.Error:
        return None


def settled(pid: int, before: Footprint, timeout: float = 15) -> Footprint:
    """The footprint once it is back within the allowance (closing sockets and reaping
    take a moment), or as it is at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        now = footprint(pid)
        ok = now.fds <= before.fds + FD_SLACK and now.children <= before.children
        if ok or time.monotonic() > deadline:
            return now
        time.sleep(0.2)


# --------------------------------------------------------------------------- the fuzzing


def capped(case: schemathesis.Case) -> None:
    """Long polls and commands may legally take their time: cut what the case asks for
    (a lease's ``wait`` when absent too: its default is 20 s), so that any request still
    slower than REQUEST_TIMEOUT_S is a hang."""
    if isinstance(case.body, dict) and case.path == "/workers/lease":
        case.body.setdefault("wait", LONG_POLL_CAP_S)
    for holder, key, cap in (
        (case.body, "wait", LONG_POLL_CAP_S),
        (case.query, "wait", LONG_POLL_CAP_S),
        (case.body, "timeout", EXEC_TIMEOUT_CAP_S),
    ):
        if isinstance(holder, dict):
            value = holder.get(key)
            if isinstance(value, int | float) and not isinstance(value, bool) and value > cap:
                holder[key] = cap


def strategy(
    op: schemathesis.APIOperation, modes: list[GenerationMode], known: dict[str, list[str]]
) -> st.SearchStrategy[schemathesis.Case]:
    """Cases of ``op`` in ``modes``; a path or query parameter named in ``known`` also takes
    one of those values (a live sandbox, a file in it, a job), so the fuzzing gets past the
    404 to the code behind it."""
    options = [op.as_strategy(generation_mode=m) for m in modes]
    in_path = {p.name for p in op.path_parameters} & known.keys()
    in_query = {p.name for p in op.query} & known.keys()
    for i in range(max((len(known[n]) for n in in_path | in_query), default=0)):
        path = {n: known[n][i % len(known[n])] for n in in_path}
        query = {n: known[n][i % len(known[n])] for n in in_query}
        for m in modes:
            options.append(op.as_strategy(generation_mode=m, path_parameters=path, query=query))
            if path and query:  # and with the query generated
                options.append(op.as_strategy(generation_mode=m, path_parameters=path))
    return st.one_of(options)


def fuzz(
    cases: st.SearchStrategy[schemathesis.Case],
    examples: int,
    call: Callable[[schemathesis.Case], None],
    first: schemathesis.Case | None = None,
) -> None:
    """``call`` on ``examples`` cases drawn from ``cases``, after ``first`` if given."""

    @hypothesis.settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: bounded time
        suppress_health_check=list(HealthCheck),
        print_blob=True,
    )
    @hypothesis.given(case=cases)
    def run(case: schemathesis.Case) -> None:
        call(case)

    if first is not None:
        run = hypothesis.example(case=first)(run)
    run()


@dataclass
class Outcome:
    ops: list[str]  # every operation fuzzed
    failures: list[str]  # what failed, one entry per operation and run
    statuses: dict[str, set[int]]  # statuses seen with the token, per operation

    def reached(self) -> set[str]:
        """Operations that answered a 2xx at least once with the token."""
        return {op for op, seen in self.statuses.items() if any(200 <= s < 300 for s in seen)}


def fuzz_all(url: str, known: dict[str, list[str]], good: dict[str, dict[str, Any]]) -> Outcome:
    """Every operation of ``url``'s schema, with the token, then without. With the token,
    the first case of each operation is a request that works (``good[label]``: what
    ``op.Case`` needs for it; absent: the operation needs nothing, or has no such request),
    then the fuzzing."""
    schema = schemathesis.openapi.from_url(
        f"{url}/openapi.json", headers=AUTH, timeout=REQUEST_TIMEOUT_S
    )
    ops = [result.ok() for result in schema.get_all_operations()]
    # deletions last, so that the ``known`` sandboxes live through the other operations
    ops.sort(key=lambda op: op.method.upper() == "DELETE")
    out = Outcome([op.label for op in ops], [], {op.label: set() for op in ops})
    with requests.Session() as session:

        def with_token(case: schemathesis.Case) -> None:
            capped(case)
            response = case.call(
                base_url=url, session=session, headers=AUTH, timeout=REQUEST_TIMEOUT_S
            )
            out.statuses[case.operation.label].add(response.status_code)
            case.validate_response(response, checks=CHECKS, headers=AUTH)

        def without_token(case: schemathesis.Case) -> None:
            capped(case)
            case.headers = {
                k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"
            }
            response = case.call(base_url=url, session=session, timeout=REQUEST_TIMEOUT_S)
            expected = 200 if case.path in OPEN_PATHS else 401
            assert response.status_code == expected, (case.method, case.path, response.text)
            case.validate_response(response, checks=[not_a_server_error])

        for op in ops:
            modes = [GenerationMode.POSITIVE]
            if op.path_parameters or op.query or op.body:  # something that can be invalid
                modes.append(GenerationMode.NEGATIVE)
            works = None  # an operation with a path parameter needs its value in ``good``
            if op.label in good or not op.path_parameters:
                works = op.Case(**good.get(op.label, {}))
            runs = [
                ("token", strategy(op, modes, known), with_token, WITH_TOKEN_EXAMPLES, works),
                (
                    "no token",
                    strategy(op, modes[:1], {}),
                    without_token,
                    WITHOUT_TOKEN_EXAMPLES,
                    None,
                ),
            ]
            for name, cases, call, examples, first in runs:
                try:
                    fuzz(cases, examples, call, first)
                except Exception as exc:  # every operation is fuzzed; all failures reported
                    out.failures.append(f"{op.label} ({name}): {type(exc).__name__}: {exc}")
    return out


def api(url: str, method: str, path: str, **kw: Any) -> requests.Response:
    resp = requests.request(method, url + path, headers=AUTH, timeout=REQUEST_TIMEOUT_S, **kw)
    assert resp.status_code < 300, (method, path, resp.status_code, resp.text)
    return resp


# --------------------------------------------------------------------------- the tests


def test_sandbox_server_survives_schemathesis(tmp_path: Path) -> None:
    require_tool("bwrap", "fuzzed exec routes run random commands: confined only")
    root = tmp_path / "sb"
    args = ["serve-sandbox", "--root", str(root), "--confine", "required", "--ttl", "120"]
    with serve(args, tmp_path / "server.log") as served:
        url, pid = served.url, served.proc.pid
        # warm-up: one sandbox, one command, one file, then gone; counted from here
        sid = api(url, "POST", "/sandboxes", json={}).json()["sandbox_id"]
        api(url, "POST", f"/sandboxes/{sid}/exec", json={"command": "true"})
        api(url, "PUT", f"/sandboxes/{sid}/files", params={"path": "a"}, data=b"x")
        api(url, "DELETE", f"/sandboxes/{sid}")
        before = footprint(pid)

        known = [
            api(url, "POST", "/sandboxes", json={}).json()["sandbox_id"],
            api(url, "POST", "/sandboxes", json={"task_id": "sku-diff"}).json()["sandbox_id"],
        ]
        for sid in known:
            api(url, "PUT", f"/sandboxes/{sid}/files", params={"path": "f.txt"}, data=b"hi")
        at = {"path_parameters": {"sandbox_id": known[0]}}
        file = {**at, "query": {"path": "f.txt"}}
        good = {
            "POST /sandboxes": {"body": {}},
            "GET /sandboxes/{sandbox_id}": at,
            "POST /sandboxes/{sandbox_id}/exec": {**at, "body": {"command": "echo hi"}},
            "GET /sandboxes/{sandbox_id}/files": file,
            "PUT /sandboxes/{sandbox_id}/files": {
                **file,
                "body": b"hello",
                "media_type": "application/octet-stream",
            },
            "DELETE /sandboxes/{sandbox_id}": {"path_parameters": {"sandbox_id": known[1]}},
        }
        out = fuzz_all(url, {"sandbox_id": known, "path": ["f.txt"]}, good)

        for info in api(url, "GET", "/sandboxes").json():  # what the fuzzing left
            api(url, "DELETE", f"/sandboxes/{info['sandbox_id']}")
        after = settled(pid, before)
        health = api(url, "GET", "/healthz").json()
    assert len(out.ops) == 9, out.ops
    assert out.failures == [], "\n\n".join(out.failures)
    # the token was taken: every operation answered 2xx at least once
    assert out.reached() == set(out.ops), out.statuses
    assert health["sandboxes"] == 0
    assert after.fds <= before.fds + FD_SLACK, (before, after)
    assert after.children <= before.children, (before, after)
    assert sandbox_processes(root) == {}
    assert [p.name for p in root.iterdir() if p.is_dir()] == []


def test_evaluation_server_survives_schemathesis(tmp_path: Path) -> None:
    args = ["serve-eval", "--db", str(tmp_path / "jobs.db"), "--test-latency", "0.01"]
    with serve(args, tmp_path / "server.log") as served:
        url, pid = served.url, served.proc.pid
        body = {"exit_status": "Submitted", "instance_id": "sku-diff", "result": ""}
        job = api(url, "POST", "/evaluate", json=body)  # warm-up: one job, done
        assert job.json()["reward"] == 1.0
        before = footprint(pid)

        queued = api(url, "POST", "/evaluations", json=body).json()["job_id"]
        good = {
            "POST /evaluations": {"body": body},
            "GET /evaluations/{job_id}": {"path_parameters": {"job_id": queued}},
            "POST /evaluate": {"body": body},
            "POST /workers/lease": {"body": {"worker": "w1", "wait": 0}},
        }
        out = fuzz_all(url, {"job_id": [queued]}, good)

        after = settled(pid, before)
        health = api(url, "GET", "/healthz").json()
    assert len(out.ops) == 11, out.ops
    assert out.failures == [], "\n\n".join(out.failures)
    # a lease's heartbeat, release and result need a live lease, which test mode never grants
    leases = {
        f"POST /workers/leases/{{lease_id}}/{end}" for end in ("heartbeat", "release", "result")
    }
    assert out.reached() == set(out.ops) - leases, out.statuses
    assert health["status"] == "ok" and health["queued"] == 0
    assert after.fds <= before.fds + FD_SLACK, (before, after)
    assert after.children <= before.children, (before, after)

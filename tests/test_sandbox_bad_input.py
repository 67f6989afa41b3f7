"""Request bodies the sandbox server cannot echo back, over real HTTP on 127.0.0.1.

A string with a lone surrogate (JSON ``"\\udc80"``) is refused (422) before anything is made:
it used to create the sandbox and then answer 500 (its ``run`` label could not be encoded),
leaving a sandbox that broke ``GET /sandboxes`` for everyone. A refused input holding NaN,
Infinity or 1e309 is quoted in the 422's detail as text (it used to crash the handler: 500).
A surrogate ``cwd`` is a 422 too (it used to reach ``realpath``: 500).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from agentfleet.http.pool import NO_RETRY, HttpPool, Response
from agentfleet.sandbox import ProcessBackend, SandboxService, create_app
from agentfleet.sandbox.base import PathOutsideSandbox
from agentfleet.sandbox.confined import confine
from agentfleet.serving import serve_in_loop

TOKEN = "bad-input-t0ken"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON = {**AUTH, "Content-Type": "application/json"}


@pytest.fixture
async def url(tmp_path: Path) -> AsyncIterator[str]:
    app = create_app(SandboxService(ProcessBackend(tmp_path / "sb"), reap_period_s=0), token=TOKEN)
    async with serve_in_loop(app) as running:
        yield running.url


async def call(url: str, method: str, path: str, **kw: Any) -> Response:
    headers = JSON if "data" in kw else AUTH
    return await HttpPool.for_loop().request(
        method, url + path, headers=headers, retry=NO_RETRY, idempotent=False, **kw
    )


async def assert_none_left(url: str) -> None:
    listed = await call(url, "GET", "/sandboxes")
    assert listed.status == 200, listed.text()
    assert listed.json() == []


@pytest.mark.parametrize(
    "body",
    [
        b'{"run":"\\udc80"}',  # was 201-then-500, the sandbox left behind
        b'{"run":"ok\\ud800"}',
        b'{"task_id":"\\udc80"}',
        b'{"dataset":"\\udfff"}',
        b'{"image":"\\ud800"}',
        b'{"sandbox_id":"sb-\\udc80-x"}',
        b'{"ttl_s":1e309}',  # was 500: the 422 handler could not render the input
        b'{"ttl_s":NaN}',
        b'{"cpus":NaN}',
        b'{"cpus":-Infinity}',
        b'{"run":"\\udc80","cpus":NaN}',
    ],
    ids=lambda b: b.decode(),
)
async def test_create_with_bad_input_is_422_and_makes_nothing(
    url: str, tmp_path: Path, body: bytes
) -> None:
    resp = await call(url, "POST", "/sandboxes", data=body)
    assert resp.status == 422, resp.text()
    answer = resp.json()
    assert answer["error"] == "invalid request"
    assert answer["detail"] and all(p["loc"][0] == "body" for p in answer["detail"])
    await assert_none_left(url)
    assert list((tmp_path / "sb").iterdir()) == []


@pytest.mark.parametrize(
    "body",
    [
        b'{"command":"true","timeout":NaN}',
        b'{"command":"true","timeout":Infinity}',
        b'{"command":"true","timeout":1e309}',
        b'{"command":"ls","cwd":"\\ud800"}',  # was 500: UnicodeEncodeError from realpath
        b'{"command":"ls","cwd":"\\udc80"}',
        b'{"command":"echo \\udc80"}',
        b'{"command":"true","env":{"A":"\\ud800"}}',
        b'{"command":"true","env":{"\\udc80":"x"}}',
    ],
    ids=lambda b: b.decode(),
)
async def test_exec_with_bad_input_is_422(url: str, body: bytes) -> None:
    made = await call(url, "POST", "/sandboxes", json={"run": "bad-input"})
    assert made.status == 201, made.text()
    sid = made.json()["sandbox_id"]
    resp = await call(url, "POST", f"/sandboxes/{sid}/exec", data=body)
    assert resp.status == 422, resp.text()
    assert resp.json()["error"] == "invalid request"
    listed = await call(url, "GET", "/sandboxes")
    assert listed.status == 200, listed.text()
    assert [s["sandbox_id"] for s in listed.json()] == [sid]
    ok = await call(url, "POST", f"/sandboxes/{sid}/exec", json={"command": "echo fine"})
    assert ok.status == 200 and ok.json()["output"].strip() == "fine", ok.text()
    assert (await call(url, "DELETE", f"/sandboxes/{sid}")).status == 204
    await assert_none_left(url)


async def test_the_422_detail_quotes_the_refused_input_as_text(url: str) -> None:
    resp = await call(url, "POST", "/sandboxes", data=b'{"run":"a\\udc80","ttl_s":NaN}')
    assert resp.status == 422, resp.text()
    inputs = {p["loc"][-1]: p["input"] for p in resp.json()["detail"]}
    assert inputs == {"run": repr("a\udc80"), "ttl_s": "nan"}


def test_confine_refuses_a_path_no_file_name_can_hold(tmp_path: Path) -> None:
    with pytest.raises(PathOutsideSandbox):  # was UnicodeEncodeError (a 500 when reached)
        confine(tmp_path, "\ud800")


def test_a_command_over_one_arguments_cap_is_refused_by_the_model() -> None:
    """`bash -c COMMAND` passes the command as one argument, which Linux caps at 128 KiB:
    the request model refuses a longer one for both backends alike (docker answered 200
    with "argument list too long", the process backend 422)."""
    from pydantic import ValidationError

    from agentfleet.sandbox.base import MAX_COMMAND_BYTES, ExecRequest

    assert ExecRequest(command="x" * MAX_COMMAND_BYTES).command
    with pytest.raises(ValidationError, match="write long content with PUT /files"):
        ExecRequest(command="é" * (MAX_COMMAND_BYTES // 2 + 1))  # bytes, not characters


def test_a_file_that_grows_during_its_read_stops_at_the_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The size check comes before the read: a file grown in between (a command appending
    to it) is cut off past the cap with a 413, not read whole."""
    import os
    import types

    from agentfleet.sandbox import confined
    from agentfleet.sandbox.base import SandboxError

    (tmp_path / "grows.log").write_bytes(b"x" * 100)
    real = os.fstat
    monkeypatch.setattr(
        confined.os,
        "fstat",
        lambda fd: types.SimpleNamespace(**{"st_size": 1, "st_mode": real(fd).st_mode}),
    )
    with pytest.raises(SandboxError) as err:
        confined.read_file(tmp_path, "grows.log", 10)
    assert err.value.status == 413

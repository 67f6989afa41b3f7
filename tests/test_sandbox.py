"""Sandbox server: conformance tests over HTTP (per backend) plus process-backend specifics.

Everything goes through a real uvicorn server on 127.0.0.1 and ``SandboxClient``; commands are
real subprocesses. The ``backend`` fixture lists the backends the conformance set runs on.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest
from conftest import require_tool
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from test_sandbox_docker import _free_port, _serve, _until_healthy, skip_without_docker

from agentfleet.http.pool import HttpPool, Timeouts
from agentfleet.sandbox import (
    DEFAULT_OUTPUT_LIMIT,
    CreateSandbox,
    OutputCapture,
    PathOutsideSandbox,
    ProcessBackend,
    RemoteDockerEnvironment,
    SandboxClient,
    SandboxError,
    Sandboxes,
    SandboxNotFound,
    SandboxService,
    create_app,
    gc_all,
)
from agentfleet.sandbox.base import new_sandbox_id
from agentfleet.sandbox.containers import (
    LABEL_HOST,
    LABEL_OWNER,
    LABEL_PID,
    LABEL_PID_STARTED,
    LABEL_PID_TICKS,
    is_orphan,
)
from agentfleet.sandbox.docker import DockerBackend
from agentfleet.sandbox.folders import (
    MARKER,
    SANDBOX_ENV,
    owner_alive,
    process_start_ticks,
    reap_orphans,
)
from agentfleet.serving import serve_in_loop

# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def dataset(tmp_path: Path) -> str:
    ds = tmp_path / "ds"
    repo = ds / "t1" / "repo"
    (repo / "pkg").mkdir(parents=True)
    (ds / "dataset.yaml").write_text("name: sbtest\nsplits:\n  test: [t1]\n")
    (ds / "t1" / "task.yaml").write_text(
        "prompt: make it fast\ntest_cmd: python3 -m pytest -q\nworkload_cmd: python3 main.py\n"
    )
    (repo / "main.py").write_text("print('hello')\n")
    (repo / "pkg" / "util.py").write_text("def f():\n    return 1\n")
    return str(ds)


@dataclass
class Served:
    url: str
    client: SandboxClient
    service: SandboxService
    backend: Any
    dataset: str

    async def create(self, **kw: Any) -> str:
        kw.setdefault("task_id", "t1")
        kw.setdefault("dataset", self.dataset)
        info = await self.client.create(CreateSandbox(**kw))
        return info.sandbox_id

    async def raw(self, method: str, path: str, **kw: Any) -> Any:
        return await HttpPool.for_loop().request(method, self.url + path, **kw)


def make_backend(name: str, root: Path, **kw: Any) -> Any:
    if name == "process":
        return ProcessBackend(root, **kw)
    if name == "process-unconfined":
        return ProcessBackend(root, confine=False, **kw)
    if name == "docker":
        skip_without_docker()
        return DockerBackend(root=root, **kw)
    raise AssertionError(name)


DOCKER = pytest.param("docker", marks=pytest.mark.docker)


@pytest.fixture(params=["process", DOCKER])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


# Behaviour that depends on how commands are confined: also without bubblewrap, and in docker.
all_modes = pytest.mark.parametrize("backend", ["process", "process-unconfined", DOCKER])

ServerFactory = Callable[..., Any]


@pytest.fixture
async def start_server(backend: str, tmp_path: Path, dataset: str) -> AsyncIterator[ServerFactory]:
    """Start servers (``await start_server(**service_kwargs)``); all stopped at teardown."""
    stack: list[Any] = []

    async def start(
        backend_kw: dict[str, Any] | None = None, app_kw: dict[str, Any] | None = None, **kw: Any
    ) -> Served:
        be = make_backend(backend, tmp_path / f"sandboxes{len(stack)}", **(backend_kw or {}))
        kw.setdefault("dataset_roots", [dataset])
        service = SandboxService(be, **kw)
        app = create_app(service, **(app_kw or {}))
        cm = serve_in_loop(app)
        running = await cm.__aenter__()
        stack.append(cm)
        return Served(running.url, SandboxClient(running.url), service, be, dataset)

    yield start
    for cm in reversed(stack):
        await cm.__aexit__(None, None, None)


@pytest.fixture
async def server(start_server: ServerFactory) -> Served:
    served: Served = await start_server()
    return served


def _procs_with_arg(arg: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info.get("cmdline") or []
        if arg in cmd:
            found.append(p)
    return found


async def _wait_gone(arg: str, within: float = 5.0) -> list[psutil.Process]:
    deadline = time.monotonic() + within
    while True:
        left = await asyncio.to_thread(_procs_with_arg, arg)
        if not left or time.monotonic() > deadline:
            return left
        await asyncio.sleep(0.1)


def _unique_seconds() -> str:
    return f"{900 + uuid.uuid4().int % 99}.{uuid.uuid4().int % 10**6:06d}"


# --------------------------------------------------------------------------- conformance


@all_modes
async def test_create_exec_and_git_diff(server: Served) -> None:
    info = await server.client.create(CreateSandbox(task_id="t1", dataset=server.dataset))
    assert info.sandbox_id.startswith("sb-") and len(info.sandbox_id) == 15
    assert info.task_id == "t1" and info.expires_at > info.created_at
    sid = info.sandbox_id

    r = await server.client.exec(sid, "ls")
    assert r.returncode == 0 and not r.timed_out
    assert set(r.output.split()) == {"main.py", "pkg"}

    await server.client.exec(sid, "mkdir -p .cache __pycache__ && touch .cache/x __pycache__/m.pyc")
    r = await server.client.exec(sid, "git status --porcelain")
    assert (r.returncode, r.output) == (0, "")  # caches are ignored

    r = await server.client.exec(sid, "echo 'x = 2' >> main.py && python3 main.py")
    assert r.returncode == 0 and r.output == "hello\n"
    r = await server.client.exec(sid, "git diff")
    assert "+x = 2" in r.output and "main.py" in r.output

    r = await server.client.exec(sid, "pwd", cwd="pkg")
    assert r.output.strip().endswith("/pkg")
    r = await server.client.exec(sid, "echo $FOO; exit 3", env={"FOO": "bar"})
    assert (r.returncode, r.output) == (3, "bar\n")

    assert [s.sandbox_id for s in await server.client.list()] == [sid]
    assert (await server.client.get(sid)).workdir == info.workdir


def test_protocols() -> None:
    assert isinstance(SandboxClient("http://x"), Sandboxes)
    assert isinstance(SandboxService(ProcessBackend("/nonexistent")), Sandboxes)


async def test_empty_sandbox(server: Served) -> None:
    info = await server.client.create(CreateSandbox())
    r = await server.client.exec(info.sandbox_id, "git log --oneline | wc -l; ls -A")
    assert r.output.split() == ["1", ".git"]


async def test_file_round_trip(server: Served) -> None:
    sid = await server.create()
    data = bytes(range(256)) * 100
    await server.client.write_file(sid, "new/dir/blob.bin", data)
    assert await server.client.read_file(sid, "new/dir/blob.bin") == data
    assert await server.client.read_file(sid, "pkg/util.py") == b"def f():\n    return 1\n"
    await server.client.write_file(sid, "main.py", b"print('changed')\n")
    r = await server.client.exec(sid, "python3 main.py && wc -c < new/dir/blob.bin")
    assert r.output.split() == ["changed", "25600"]
    with pytest.raises(SandboxError) as e:
        await server.client.read_file(sid, "nope.txt")
    assert e.value.status == 404
    with pytest.raises(SandboxError) as e:
        await server.client.read_file(sid, "pkg")
    assert e.value.status == 400


@all_modes
async def test_paths_outside_the_sandbox_are_refused(server: Served) -> None:
    sid = await server.create()
    r = await server.client.exec(sid, "ln -s /etc etc_link && ln -s /etc/passwd pw")
    assert r.returncode == 0, r.output
    for path in ("../../etc/passwd", "/etc/passwd", "etc_link/passwd", "pw", "pkg/../../x"):
        with pytest.raises(PathOutsideSandbox) as e:
            await server.client.read_file(sid, path)
        assert e.value.status == 400
        with pytest.raises(PathOutsideSandbox):
            await server.client.write_file(sid, path, b"owned")
    resp = await server.raw("GET", f"/sandboxes/{sid}/files", params={"path": "/etc/passwd"})
    assert resp.status == 400 and "outside" in resp.json()["error"]
    with pytest.raises(PathOutsideSandbox):
        await server.client.exec(sid, "pwd", cwd="../..")
    # an absolute path inside the workdir is fine
    workdir = (await server.client.get(sid)).workdir
    assert await server.client.read_file(sid, f"{workdir}/main.py") == b"print('hello')\n"


async def test_unknown_sandbox_is_404(server: Served) -> None:
    with pytest.raises(SandboxNotFound):
        await server.client.exec("sb-000000000000", "ls")
    with pytest.raises(SandboxNotFound):
        await server.client.read_file("sb-000000000000", "x")
    with pytest.raises(SandboxNotFound):
        await server.client.write_file("sb-000000000000", "x", b"")
    with pytest.raises(SandboxNotFound):
        await server.client.delete("sb-000000000000")
    with pytest.raises(SandboxNotFound):
        await server.client.get("sb-000000000000")
    for method, path in [
        ("POST", "/sandboxes/sb-nope/exec"),
        ("GET", "/sandboxes/sb-nope/files?path=x"),
        ("DELETE", "/sandboxes/sb-nope"),
    ]:
        kw: dict[str, Any] = {"json": {"command": "ls"}} if method == "POST" else {}
        resp = await server.raw(method, path, **kw)
        assert resp.status == 404 and "sb-nope" in resp.json()["error"], (method, resp.body)


async def test_unknown_task_is_404(server: Served) -> None:
    with pytest.raises(SandboxError) as e:
        await server.create(task_id="t99")
    assert e.value.status == 404 and "t99" in str(e.value)
    with pytest.raises(SandboxError) as e:
        await server.create(dataset="/no/such/dataset")
    assert e.value.status == 404
    assert await server.client.list() == []


async def test_bad_requests_get_json_errors(server: Served) -> None:
    bad = await server.raw(
        "POST", "/sandboxes", data=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert bad.status in (400, 422) and "error" in bad.json()
    sid = await server.create()
    missing = await server.raw("POST", f"/sandboxes/{sid}/exec", json={"cwd": "x"})
    assert missing.status == 422 and "error" in missing.json() and missing.json()["detail"]
    neg = await server.raw("POST", f"/sandboxes/{sid}/exec", json={"command": "ls", "timeout": -1})
    assert neg.status == 422
    nopath = await server.raw("GET", f"/sandboxes/{sid}/files")
    assert nopath.status == 422 and "error" in nopath.json()
    notfound = await server.raw("GET", "/nowhere")
    assert notfound.status == 404 and "error" in notfound.json()
    assert (await server.client.healthz())["status"] == "ok"


@all_modes
async def test_timeout_kills_the_process_group(server: Served) -> None:
    sid = await server.create()
    secs = _unique_seconds()
    started = time.monotonic()
    r = await server.client.exec(sid, f"sleep {secs} & sleep {secs}; echo never", timeout=1)
    assert time.monotonic() - started < 6
    assert r.timed_out and r.returncode == 124
    assert "never" not in r.output and "timed out after 1 s" in r.output
    assert await _wait_gone(secs) == []


@all_modes
async def test_background_children_do_not_outlive_the_exec(server: Served) -> None:
    sid = await server.create()
    secs = _unique_seconds()
    started = time.monotonic()
    r = await server.client.exec(sid, f"sleep {secs} & echo started", timeout=30)
    assert (r.returncode, r.output, r.timed_out) == (0, "started\n", False)
    assert time.monotonic() - started < 6
    assert await _wait_gone(secs) == []


@all_modes
async def test_output_is_capped_head_and_tail(server: Served) -> None:
    sid = await server.create()
    r = await server.client.exec(
        sid, "python3 -c \"import sys; sys.stdout.write('HEAD' + 'x' * 10_000_000 + 'TAIL')\""
    )
    assert r.returncode == 0 and r.truncated
    assert "[agentfleet: output truncated," in r.output
    assert len(r.output) <= DEFAULT_OUTPUT_LIMIT + 100
    assert r.output.startswith("HEADxxx") and r.output.endswith("xxxTAIL")
    small = await server.client.exec(sid, "echo ok; echo err >&2")
    assert not small.truncated and small.output == "ok\nerr\n"


async def test_endless_output_with_timeout(server: Served) -> None:
    sid = await server.create()
    r = await server.client.exec(sid, "yes agentfleet", timeout=1)
    assert r.timed_out and r.truncated and r.returncode == 124
    assert r.output.startswith("agentfleet\nagentfleet\n")
    assert len(r.output) <= DEFAULT_OUTPUT_LIMIT + 200


async def test_concurrent_execs_run_in_parallel(server: Served) -> None:
    ids = await asyncio.gather(*(server.create() for _ in range(20)))
    started = time.monotonic()
    results = await asyncio.gather(*(server.client.exec(s, "sleep 1; echo $PWD") for s in ids))
    elapsed = time.monotonic() - started
    assert all(r.returncode == 0 for r in results)
    assert len({r.output for r in results}) == 20  # each in its own workdir
    assert elapsed < 10, elapsed


async def test_delete(server: Served) -> None:
    sid = await server.create()
    await server.client.delete(sid)
    with pytest.raises(SandboxNotFound):
        await server.client.exec(sid, "ls")
    with pytest.raises(SandboxNotFound):
        await server.client.delete(sid)
    assert (await server.client.healthz())["sandboxes"] == 0


@all_modes
async def test_delete_kills_running_commands(server: Served) -> None:
    sid = await server.create()
    secs = _unique_seconds()
    running = asyncio.create_task(server.client.exec(sid, f"sleep {secs}; echo", timeout=60))
    assert await _wait_for(lambda: bool(_procs_with_arg(secs)))
    await server.client.delete(sid)
    # an error, not the killed command's exit code passed off as its result
    with pytest.raises(SandboxNotFound, match="deleted while the command ran"):
        await asyncio.wait_for(running, 10)
    assert await _wait_gone(secs) == []


async def test_client_disconnect_kills_the_command(server: Served) -> None:
    sid = await server.create()
    secs = _unique_seconds()
    with pytest.raises(asyncio.TimeoutError):
        await HttpPool.for_loop().request(
            "POST",
            f"{server.url}/sandboxes/{sid}/exec",
            json={"command": f"sleep {secs}; echo", "timeout": 60},
            timeout=Timeouts(total=1.5),
        )
    assert await _wait_gone(secs) == []


async def test_ttl_expiry(start_server: ServerFactory) -> None:
    served: Served = await start_server(reap_period_s=0.1)
    sid = await served.create(ttl_s=0.3)
    keep = await served.create()
    assert await _wait_for(lambda: sid not in [i.sandbox_id for i in served.service.list()])
    with pytest.raises(SandboxNotFound):
        await served.client.exec(sid, "ls")
    assert (await served.client.exec(keep, "echo ok")).output == "ok\n"


async def test_too_many_sandboxes_is_429(start_server: ServerFactory) -> None:
    served: Served = await start_server(max_sandboxes=2)
    await served.create()
    await served.create()
    with pytest.raises(SandboxError) as e:
        await served.create()
    assert e.value.status == 429


async def test_size_caps_are_413(start_server: ServerFactory) -> None:
    served: Served = await start_server(
        backend_kw={"max_file_bytes": 1000}, app_kw={"max_body_bytes": 5000}
    )
    sid = await served.create()
    await served.client.write_file(sid, "ok.bin", b"x" * 1000)
    with pytest.raises(SandboxError) as e:
        await served.client.write_file(sid, "big.bin", b"x" * 2000)
    assert e.value.status == 413
    with pytest.raises(SandboxError) as e:
        await served.client.write_file(sid, "huge.bin", b"x" * 6000)
    assert e.value.status == 413
    resp = await served.raw("POST", f"/sandboxes/{sid}/exec", json={"command": "x" * 6000})
    assert resp.status == 413 and "error" in resp.json()
    assert (await served.client.healthz())["status"] == "ok"


async def test_healthz_and_metrics(server: Served) -> None:
    health = await server.client.healthz()
    limits = health.pop("limits")  # what each is, and what enforces it: test_process_limits
    assert health == {"status": "ok", "backend": server.service.backend_name, "sandboxes": 0}
    assert set(limits) == {"memory_mb", "pids_limit", "cpus", "file_size_mb", "cpu_time_s"}
    sid = await server.create()
    await server.client.exec(sid, "true")
    await server.client.exec(sid, "sleep 5", timeout=0.2)
    text = await server.client.metrics()
    assert "agentfleet_sandboxes_active" in text
    assert "agentfleet_sandboxes_created_total 1.0" in text
    assert "agentfleet_sandbox_execs_total 2.0" in text
    assert "agentfleet_sandbox_exec_timeouts_total 1.0" in text
    assert "agentfleet_sandbox_exec_seconds_bucket" in text


async def test_remote_environment_from_sync_code(server: Served) -> None:
    def agent_thread() -> list[dict[str, Any]]:
        env = RemoteDockerEnvironment.create_for_task(
            "t1", server.dataset, base_url=server.url, timeout=30
        )
        with env:
            out = [env.execute("python3 main.py"), env.execute("exit 7"), env.execute("pwd", "pkg")]
            env.write_file("notes.txt", "hi")
            out.append({"read": env.read_file("notes.txt")})
            out.append(env.get_template_vars())
        return out

    results = await asyncio.to_thread(agent_thread)
    ok = {"timed_out": False, "truncated": False}
    assert results[0] == {"output": "hello\n", "returncode": 0, **ok}
    assert results[1] == {"output": "", "returncode": 7, **ok}
    assert results[2]["output"].strip().endswith("/pkg")
    assert results[3] == {"read": b"hi"}
    sid = results[4]["sandbox_id"]
    assert sid not in [i.sandbox_id for i in await server.client.list()]  # cleanup deleted it


async def test_remote_environment_async_and_in_loop_guard(server: Served) -> None:
    sid = await server.create()
    env = RemoteDockerEnvironment(sid, server.url, cwd="pkg", env={"X": "1"})
    out = await env.aexecute("echo $X; ls")  # the typed ExecResult
    assert (out.output, out.returncode, out.timed_out, out.truncated) == (
        "1\nutil.py\n",
        0,
        False,
        False,
    )
    slow = await env.aexecute("echo start; sleep 5", timeout=0.5)  # LightAgent reads timed_out
    assert slow.timed_out and slow.returncode == 124 and not slow.truncated
    big = await env.aexecute("head -c 300000 /dev/zero | tr '\\0' x")
    assert big.truncated and not big.timed_out and big.returncode == 0
    with pytest.raises(RuntimeError, match="aexecute"):
        env.execute("ls")
    await env.aclose()  # not the owner: the sandbox stays
    assert (await server.client.get(sid)).sandbox_id == sid
    owned = await RemoteDockerEnvironment.acreate("t1", server.dataset, sandboxes=server.client)
    async with owned:
        assert (await owned.aexecute("cat main.py")).output == "print('hello')\n"
    assert owned.sandbox_id not in [i.sandbox_id for i in await server.client.list()]


def test_remote_environment_with_server_in_another_thread(tmp_path: Path, dataset: str) -> None:
    """Plain sync caller (no loop in this thread), server on its own loop in a thread."""
    ready = threading.Event()
    stop = threading.Event()
    box: dict[str, Any] = {}

    def serve() -> None:
        async def main() -> None:
            app = create_app(ProcessBackend(tmp_path / "sb"), dataset_roots=[dataset])
            async with serve_in_loop(app) as running:
                box["url"] = running.url
                ready.set()
                await asyncio.to_thread(stop.wait)

        asyncio.run(main())

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert ready.wait(20)
        env = RemoteDockerEnvironment.create_for_task("t1", dataset, base_url=box["url"])
        try:
            assert env.execute("echo one")["output"] == "one\n"
            assert env.execute("echo two")["output"] == "two\n"
            sandbox_dir = tmp_path / "sb" / env.sandbox_id
            assert sandbox_dir.is_dir()
        finally:
            env.cleanup()
        assert not sandbox_dir.exists()
    finally:
        stop.set()
        thread.join(20)


# --------------------------------------------------------------------------- process backend


async def test_process_layout_delete_and_shutdown(tmp_path: Path, dataset: str) -> None:
    root = tmp_path / "root"
    backend = ProcessBackend(root)
    app = create_app(backend, dataset_roots=[dataset])
    async with serve_in_loop(app) as running:
        client = SandboxClient(running.url)
        a = (await client.create(CreateSandbox(task_id="t1", dataset=dataset))).sandbox_id
        b = (await client.create(CreateSandbox(task_id="t1", dataset=dataset))).sandbox_id
        folder = backend.sandbox_dir(a)
        assert folder.parent == root.resolve()
        meta = json.loads((folder / MARKER).read_text())
        assert meta["pid"] == os.getpid() and meta["instance"] == backend.instance_id
        assert (folder / "work" / "main.py").is_file()
        r = await client.exec(a, "ls -A ..; echo tmp=$TMPDIR; ls /tmp")
        assert MARKER not in r.output or not backend.confined
        await client.delete(a)
        assert not folder.exists()
        folder_b = backend.sandbox_dir(b)
    assert not folder_b.exists()  # the server's shutdown deleted what it owned


async def test_confined_commands_cannot_write_outside(tmp_path: Path, dataset: str) -> None:
    backend = ProcessBackend(tmp_path / "root")
    async with SandboxService(backend, dataset_roots=[dataset]) as service:
        require_tool("bwrap", "commands confined by bubblewrap", available=backend.confined)
        sid = (await service.create(CreateSandbox(task_id="t1", dataset=dataset))).sandbox_id
        outside = tmp_path / "outside.txt"
        await service.exec(sid, f"echo hi > {outside}")
        assert not outside.exists()
        r = await service.exec(sid, "echo hi > /usr/agentfleet-probe; echo rc=$?")
        assert "rc=1" in r.output and "Read-only" in r.output
        r = await service.exec(sid, "echo keep > /tmp/t; ls /tmp")
        assert "t" in r.output.split()
        assert (await service.exec(sid, "cat /tmp/t")).output == "keep\n"  # /tmp persists
        other = (await service.create(CreateSandbox())).sandbox_id
        r = await service.exec(sid, f"ls {backend.root}")
        assert other not in r.output
        connect = "import socket; socket.create_connection(('1.1.1.1', 80), 2)"
        r = await service.exec(sid, f'python3 -c "{connect}"')
        assert r.returncode != 0


async def test_orphans_of_dead_servers_are_reaped_at_start(tmp_path: Path) -> None:
    root = tmp_path / "root"
    dead = await asyncio.create_subprocess_exec("true")
    await dead.wait()

    def make(name: str, meta: dict[str, Any] | None) -> Path:
        folder = root / name
        (folder / "work").mkdir(parents=True)
        if meta is not None:
            (folder / MARKER).write_text(json.dumps(meta))
        return folder

    orphan = make("sb-dead00000000", {"instance": "gone", "pid": dead.pid})
    live = make("sb-live00000000", {"instance": "other", "pid": os.getpid()})
    stranger = make("not-a-sandbox", None)
    backend = ProcessBackend(root)
    await backend.start()
    try:
        assert not orphan.exists()
        assert live.exists() and stranger.exists()
    finally:
        await backend.aclose()
    assert await asyncio.to_thread(gc_all, root) == ["sb-live00000000"]
    assert stranger.exists() and not live.exists()


@dataclass
class Zombie:
    pid: int
    started: float


@pytest.fixture
def zombie() -> Iterator[Zombie]:
    """A child process that has exited and that nobody has waited for yet (waited at the end)."""
    child = subprocess.Popen(["true"])
    try:
        proc = psutil.Process(child.pid)
        deadline = time.monotonic() + 10
        while proc.status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the child did not exit"
            time.sleep(0.01)
        yield Zombie(child.pid, proc.create_time())
    finally:
        child.wait()


def test_a_zombie_owner_is_not_alive(zombie: Zombie) -> None:
    me = psutil.Process()
    assert owner_alive(me.pid, me.create_time()) and owner_alive(me.pid)
    assert not owner_alive(zombie.pid, zombie.started) and not owner_alive(zombie.pid)
    # the docker backend's test of a container's owner (same host) uses the same function
    host = socket.gethostname()
    labels = {LABEL_OWNER: "gone", LABEL_HOST: host}
    alive = {LABEL_PID: str(me.pid), LABEL_PID_STARTED: f"{me.create_time():.3f}"}
    dead = {LABEL_PID: str(zombie.pid), LABEL_PID_STARTED: f"{zombie.started:.3f}"}
    check = {"instance_id": "me", "host": host, "now": time.time()}
    assert not is_orphan({**labels, **alive}, **check)
    assert is_orphan({**labels, **dead}, **check)


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc (Linux)")
async def test_a_step_of_the_wall_clock_leaves_live_owners_alive(
    tmp_path: Path, step_clock: Callable[[float], None]
) -> None:
    """Owners are named by their start in ticks since boot: a live server's sandbox folders
    and containers are not taken for orphans when the clock steps (they were, by epoch)."""
    me = psutil.Process()
    started, ticks = me.create_time(), await asyncio.to_thread(process_start_ticks, me.pid)
    host = socket.gethostname()
    labels = {LABEL_OWNER: "other", LABEL_HOST: host, LABEL_PID: str(me.pid)}
    labels |= {LABEL_PID_STARTED: f"{started:.3f}", LABEL_PID_TICKS: str(ticks)}
    backend = ProcessBackend(tmp_path / "root", confine=False)
    async with SandboxService(backend, reap_period_s=0) as svc:
        info = await svc.create(CreateSandbox())
        step_clock(30)

        def judge() -> None:  # blocking (/proc), as the reapers run it: in a thread
            assert ticks is not None and owner_alive(me.pid, started, ticks=ticks)
            assert not owner_alive(me.pid, started, ticks=ticks + 1)  # another process
            assert not is_orphan(labels, instance_id="me", host=host, now=time.time())
            # another server starting now reaps what it takes for orphans
            assert reap_orphans(tmp_path / "root", "another") == []

        await asyncio.to_thread(judge)
        r = await svc.exec(info.sandbox_id, "echo here")
        assert r.output.strip() == "here", r


async def test_sandboxes_of_a_zombie_owner_are_reaped_at_start(
    zombie: Zombie, tmp_path: Path
) -> None:
    root = tmp_path / "root"
    folder = root / "sb-zombie000000"
    (folder / "work").mkdir(parents=True)
    meta = {"instance": "gone", "pid": zombie.pid, "pid_started": zombie.started}
    (folder / MARKER).write_text(json.dumps(meta))
    backend = ProcessBackend(root, confine=False)
    await backend.start()
    try:
        assert not folder.exists()
    finally:
        await backend.aclose()


def test_output_capture_unit() -> None:
    cap = OutputCapture(10)
    for chunk in (b"abc", b"defghij", b"klmnopqrstuvwxyz"):
        cap.feed(chunk)
    text, truncated = cap.result()
    assert truncated and text.startswith("abcde") and text.endswith("vwxyz")
    assert "16 bytes omitted" in text
    cap = OutputCapture(10)
    cap.feed(b"0123456789")
    assert cap.result() == ("0123456789", False)
    cap = OutputCapture(4)
    cap.feed("ééééé".encode())  # 5 chars, 10 bytes
    text, truncated = cap.result()
    assert truncated and text.startswith("éé") and text.endswith("éé")
    cap = OutputCapture(1000)
    for _ in range(10_000):
        cap.feed(b"y" * 1000)
    assert len(cap.head) + len(cap.tail) <= 4000
    assert cap.result()[1]


async def _wait_for(pred: Callable[[], bool], within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if await asyncio.to_thread(pred):
            return True
        await asyncio.sleep(0.05)
    return False


# --------------------------------------------------------------------------- client-chosen ids


async def test_client_chosen_sandbox_id(server: Served) -> None:
    sid = f"run7-{uuid.uuid4().hex[:8]}"
    info = await server.client.create(CreateSandbox(sandbox_id=sid))
    assert info.sandbox_id == sid
    assert (await server.client.exec(sid, "echo ok")).output == "ok\n"
    with pytest.raises(SandboxError) as e:
        await server.client.create(CreateSandbox(sandbox_id=sid))
    assert e.value.status == 409
    for bad in ("../x", "a", "x" * 65, "sb 1", ".hidden"):
        resp = await server.raw("POST", "/sandboxes", json={"sandbox_id": bad})
        assert resp.status == 422, bad
    await server.client.delete(sid)
    assert await server.client.list() == []


class SlowCreate(ProcessBackend):
    """A process backend whose creations wait for ``go`` (to act while one is in flight)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.entered = asyncio.Event()
        self.go = asyncio.Event()

    async def create(self, sandbox_id: str, source_dir: Path | None, req: CreateSandbox) -> str:
        self.entered.set()
        await self.go.wait()
        return await super().create(sandbox_id, source_dir, req)


async def test_delete_while_being_created_leaves_nothing(tmp_path: Path) -> None:
    backend = SlowCreate(tmp_path / "sb")
    async with SandboxService(backend, reap_period_s=0) as svc:
        creating = asyncio.create_task(svc.create(CreateSandbox(sandbox_id="sb-early")))
        await asyncio.wait_for(backend.entered.wait(), 10)
        deleting = asyncio.create_task(svc.delete("sb-early"))
        await asyncio.sleep(0.1)
        assert not deleting.done()  # it waits for the creation to end
        backend.go.set()
        await asyncio.wait_for(deleting, 10)
        with pytest.raises(SandboxError) as e:
            await creating
        assert e.value.status == 409 and "deleted while being created" in str(e.value)
        assert svc.list() == [] and not (backend.root / "sb-early").exists()


async def test_cancelled_create_over_http_leaves_nothing(tmp_path: Path) -> None:
    """The runner's Ctrl-C path: its create request is cancelled, then it deletes the id."""
    backend = SlowCreate(tmp_path / "sb")
    svc = SandboxService(backend, reap_period_s=0)
    async with serve_in_loop(create_app(svc)) as running:
        client = SandboxClient(running.url)
        creating = asyncio.create_task(client.create(CreateSandbox(sandbox_id="sb-cancelled")))
        await asyncio.wait_for(backend.entered.wait(), 10)
        creating.cancel()
        with pytest.raises(asyncio.CancelledError):
            await creating
        # 404 if the server saw the disconnect first, else it waits for the creation to end
        with contextlib.suppress(SandboxNotFound):
            await client.delete("sb-cancelled")
        backend.go.set()  # had the creation gone on, it would make the folder now
        await asyncio.sleep(0.3)
        assert await client.list() == [] and not (backend.root / "sb-cancelled").exists()
        assert svc.stats.created_total == 0


# --------------------------------------------------------------------------- idempotent exec


async def test_exec_with_the_same_idempotency_key_runs_once(server: Served) -> None:
    sid = await server.create()
    cmd = "echo run >> runs.log; sleep 0.5; wc -l < runs.log"
    first, second = await asyncio.gather(
        server.client.exec(sid, cmd, idempotency_key="k-1"),
        server.client.exec(sid, cmd, idempotency_key="k-1"),
    )
    assert first == second and first.output == "1\n"
    again = await server.client.exec(sid, cmd, idempotency_key="k-1")  # done: stored result
    assert again == first
    assert await server.client.read_file(sid, "runs.log") == b"run\n"
    with pytest.raises(SandboxError) as e:
        await server.client.exec(sid, "echo other", idempotency_key="k-1")
    assert e.value.status == 422
    # new key (the client's default: a new one per call): runs again
    assert (await server.client.exec(sid, cmd)).output == "2\n"
    resp = await server.raw(
        "POST", f"/sandboxes/{sid}/exec", json={"command": "true"}, headers={"Idempotency-Key": ""}
    )
    assert resp.status == 400


async def test_keyed_exec_survives_its_client_then_is_killed_when_abandoned(
    start_server: ServerFactory,
) -> None:
    served: Served = await start_server(detach_grace_s=1.5)
    sid = await served.create()
    url = f"{served.url}/sandboxes/{sid}/exec"

    async def send(key: str, command: str, wait: float) -> Any:
        return await HttpPool.for_loop().request(
            "POST",
            url,
            json={"command": command, "timeout": 60},
            headers={"Idempotency-Key": key},
            timeout=Timeouts(total=wait),
        )

    with pytest.raises(asyncio.TimeoutError):  # the client gives up (a dropped connection)
        await send("retried", "echo x >> n.log; sleep 1; echo done", 0.3)
    resp = await send("retried", "echo x >> n.log; sleep 1; echo done", 30)  # the retry
    assert resp.status == 200 and resp.json()["output"] == "done\n"
    assert await served.client.read_file(sid, "n.log") == b"x\n"

    secs = _unique_seconds()
    with pytest.raises(asyncio.TimeoutError):
        await send("abandoned", f"sleep {secs}", 0.3)
    await asyncio.sleep(0.5)
    assert await asyncio.to_thread(_procs_with_arg, secs)  # still running: within the grace
    assert await _wait_gone(secs, 10) == []  # nobody came back: killed
    late = await send("abandoned", f"sleep {secs}", 10)
    assert late.status == 409 and "killed" in late.json()["error"]


async def test_client_exec_is_retried_with_one_key(tmp_path: Path) -> None:
    """SandboxClient.exec carries an Idempotency-Key, so the pool retries it (same key)."""
    seen: list[str | None] = []
    app = FastAPI()

    @app.post("/sandboxes/{sid}/exec")
    async def flaky(sid: str, request: Request) -> JSONResponse:
        seen.append(request.headers.get("idempotency-key"))
        if len(seen) == 1:
            return JSONResponse({"error": "busy"}, 503, headers={"Retry-After": "0"})
        return JSONResponse({"output": "ok\n", "returncode": 0})

    async with serve_in_loop(app) as running:
        r = await SandboxClient(running.url).exec("sb-x", "true")
    assert r.output == "ok\n"
    assert len(seen) == 2 and seen[0] and seen[0] == seen[1]


# --------------------------------------------------------------------------- orphans after SIGKILL


@pytest.mark.slow
@pytest.mark.parametrize(
    ("confine", "reclaim"), [(False, "restart"), (False, "gc"), (True, "restart")]
)
# `sandbox gc` kills what any dead server's cgroups hold, machine-wide: the gc runs and the
# cases that count a dead server's survivors share one xdist worker (make test: loadgroup)
@pytest.mark.xdist_group("sandbox-gc")
async def test_sigkilled_server_leaves_no_process(
    tmp_path: Path, confine: bool, reclaim: str
) -> None:
    if confine:
        require_tool("bwrap", "the confined SIGKILL case runs commands under bubblewrap")
    root = tmp_path / "sb"
    port = _free_port()
    first = await _serve(root, port, "process", {"confine": confine})
    client = SandboxClient(f"http://127.0.0.1:{port}")
    secs = _unique_seconds()
    try:
        sid = (await client.create(CreateSandbox())).sandbox_id
        # a background child, one that left the group, and the main process
        cmd = f"sleep {secs} & setsid sleep {secs} & sleep {secs}"
        running = asyncio.ensure_future(client.exec(sid, cmd, timeout=1000))
        assert await _wait_for(lambda: len(_procs_with_arg(secs)) == 3)
        first.send_signal(signal.SIGKILL)
        await first.wait()
        with pytest.raises(SandboxError):
            await running
        if not confine:  # what a parent-death signal cannot reach is left for the reaper
            await asyncio.sleep(0.5)
            assert await asyncio.to_thread(_procs_with_arg, secs)
        assert (root / sid).is_dir()
    finally:
        if first.returncode is None:
            first.kill()
            await first.wait()
    if reclaim == "gc":
        gc = await asyncio.create_subprocess_exec(
            str(Path(sys.executable).with_name("agentfleet")),
            *("sandbox", "gc", "--yes", "--no-docker", "--root", str(root)),
            stdout=asyncio.subprocess.PIPE,
        )
        out, _ = await gc.communicate()
        assert gc.returncode == 0 and sid in out.decode()
    else:
        second = await _serve(root, port, "process", {"confine": confine})
        second.send_signal(signal.SIGTERM)
        await asyncio.wait_for(second.wait(), 30)
    assert await _wait_gone(secs) == []
    assert not (root / sid).exists()


# --------------------------------------------------------------------------- CLI


@pytest.mark.xdist_group("sandbox-gc")  # see test_sigkilled_server_leaves_no_process
def test_sandbox_gc_cli(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from agentfleet.cli import app

    root = tmp_path / "sb"
    kept = root / "not-a-sandbox"
    kept.mkdir(parents=True)
    folders = []
    for name in ("sb-000000000001", "sb-000000000002"):
        folder = root / name
        (folder / "work").mkdir(parents=True)
        (folder / MARKER).write_text(json.dumps({"instance": "x", "pid": 1}))
        folders.append(folder)
    secs = _unique_seconds()
    # a command left running in a sandbox: found by its environment
    leftover = subprocess.Popen(
        ["sleep", secs], env={**os.environ, SANDBOX_ENV: str(folders[0].resolve())}
    )
    runner = CliRunner()
    try:
        refused = runner.invoke(app, ["sandbox", "gc", "--root", str(root), "--no-docker"])
        assert refused.exit_code == 2 and "--yes" in refused.output
        assert all(f.exists() for f in folders)
        result = runner.invoke(app, ["sandbox", "gc", "--root", str(root), "--yes", "--no-docker"])
        assert result.exit_code == 0, result.output
        assert all(f.name in result.output for f in folders)
        assert not any(f.exists() for f in folders) and kept.is_dir()
        assert leftover.wait(5) == -signal.SIGKILL
        again = runner.invoke(app, ["sandbox", "gc", "--root", str(root), "--yes", "--no-docker"])
        assert again.exit_code == 0 and "nothing to remove" in again.output
    finally:
        if leftover.poll() is None:
            leftover.kill()
            leftover.wait()


def test_images_build_without_docker_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from typer.testing import CliRunner

    from agentfleet.cli import app

    monkeypatch.setenv("PATH", str(tmp_path))  # no docker, no debootstrap
    result = CliRunner().invoke(app, ["images", "build", "--name", "agentfleet-test:none"])
    assert result.exit_code == 1
    assert "`docker` not found" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--backend", "docker", "--memory", "lots"], "--memory 'lots'"),
        (["--image", "x:1"], "--image: only for --backend docker"),
        (["--file-size", "lots"], "--file-size 'lots'"),
        (["--cpus", "-1"], "--cpus -1"),
        (["--backend", "vm"], "--backend 'vm'"),
        (["--ttl", "0"], "--ttl 0"),
        (["--max-sandboxes", "0"], "--max-sandboxes 0"),
        (["--reap-interval", "-1"], "--reap-interval -1"),
        (["--backend", "docker", "--pids-limit", "-1"], "--pids-limit -1"),
        (["--port", "70000"], "65535"),
    ],
)
def test_serve_sandbox_rejects_bad_options(args: list[str], message: str) -> None:
    from typer.testing import CliRunner

    from agentfleet.cli import app

    result = CliRunner().invoke(app, ["serve-sandbox", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


async def test_serve_sandbox_options_reach_the_service(tmp_path: Path) -> None:
    port = _free_port()
    root = tmp_path / "sb"
    proc = await asyncio.create_subprocess_exec(
        str(Path(sys.executable).with_name("agentfleet")),
        *("serve-sandbox", "--port", str(port), "--root", str(root)),
        *("--max-sandboxes", "1", "--ttl", "1.5", "--reap-interval", "0.2"),
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL,
    )
    try:
        await _until_healthy(proc, port)
        client = SandboxClient(f"http://127.0.0.1:{port}")
        info = await client.create(CreateSandbox())
        assert info.expires_at - info.created_at == pytest.approx(1.5, abs=0.1)
        with pytest.raises(SandboxError) as e:
            await client.create(CreateSandbox())
        assert e.value.status == 429
        assert await _wait_for(lambda: not (root / info.sandbox_id).exists(), 10)  # reaped
        assert (await client.healthz())["sandboxes"] == 0
    finally:
        proc.send_signal(signal.SIGTERM)
        await asyncio.wait_for(proc.wait(), 30)


def _slow_git(bin_dir: Path, started: Path) -> str:
    """A ``git`` that says it started, sleeps, then runs the real one; returns the PATH.
    Like git, it has resolved its folder when it starts and writes by absolute path (git
    recreates leading folders), so one that outlives its folder brings it back."""
    real = subprocess.run(["which", "git"], capture_output=True, text=True, check=True)
    bin_dir.mkdir()
    fake = bin_dir / "git"
    fake.write_text(
        f'#!/bin/sh\nhere="$(pwd)"\ntouch {started}\nsleep 0.6\nmkdir -p "$here/.git"\n'
        f'exec {real.stdout.strip()} "$@"\n'
    )
    fake.chmod(0o755)
    return f"{bin_dir}:{os.environ['PATH']}"


async def test_create_cancelled_during_git_leaves_no_folder(tmp_path: Path) -> None:
    # Ctrl-C while the backend runs `git init`: a git left running would write into the
    # folder after its removal and leave one without a marker, which no reaper claims.
    started = tmp_path / "git-started"
    path = await asyncio.to_thread(_slow_git, tmp_path / "bin", started)
    backend = ProcessBackend(root=tmp_path / "root", confine=False, path=path)
    await backend.start()
    try:
        sandbox_id = new_sandbox_id()
        create = asyncio.create_task(backend.create(sandbox_id, None, CreateSandbox()))
        for _ in range(200):  # until the first (slowed) git runs
            if await asyncio.to_thread(started.exists):
                break
            await asyncio.sleep(0.02)
        assert not create.done()
        create.cancel()
        with pytest.raises(asyncio.CancelledError):
            await create
        await asyncio.sleep(1.0)  # what a surviving git would have written by now
        assert not await asyncio.to_thread((tmp_path / "root" / sandbox_id).exists)
    finally:
        await backend.aclose()


async def test_the_stop_grace_runs_from_the_stop_not_from_each_request(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A request that starts waiting after the stop began gets what is left of the grace:
    here, an hour's grace of which (on the server's clock) the hour has passed, so it is
    over at once; a second signal does not move the deadline."""
    from types import SimpleNamespace

    from agentfleet.sandbox import server

    now = [1000.0]
    monkeypatch.setattr(server, "time", SimpleNamespace(monotonic=lambda: now[0]))
    grace = server.StopGrace(3600)
    grace.begin()
    now[0] += 3600
    grace.begin()
    await asyncio.wait_for(grace.over(), timeout=10)

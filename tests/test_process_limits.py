"""The process backend's per-sandbox limits: processes, memory, file size, CPU time.

Against a real sandbox server (process backend) on 127.0.0.1, real commands, unconfined and
under bubblewrap. Kept small for a shared machine: a 256 MB memory limit, 32 processes,
64 MB files, 1 s of CPU. Every test checks ``/healthz`` says the limit is enforced *before*
it runs anything that would hurt an unlimited machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from conftest import require_tool, sandbox_processes

from agentfleet.http.pool import NO_RETRY, HttpPool, Response
from agentfleet.sandbox import CreateSandbox, SandboxClient, SandboxError, SandboxService
from agentfleet.sandbox.base import ExecRequest
from agentfleet.sandbox.process import ProcessBackend
from agentfleet.sandbox.server import create_app
from agentfleet.serving import serve_in_loop

PIDS = 32
LIMITS: dict[str, Any] = {
    "memory_mb": 256,
    "pids_limit": PIDS,
    "cpus": 1.0,
    "file_size_mb": 64,
    "cpu_time_s": 1,
}
NO_LIMITS = dict.fromkeys(LIMITS)


async def _serve(root: Path, **kw: Any) -> AsyncIterator[tuple[str, ProcessBackend]]:
    backend = ProcessBackend(root, **(LIMITS | kw))
    service = SandboxService(backend, reap_period_s=0)
    async with serve_in_loop(create_app(service)) as running:
        yield running.url, backend


@pytest.fixture(params=["off", "required"])
async def server(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[str, ProcessBackend]]:
    if request.param == "required":
        require_tool("bwrap", "confined commands")
    async for s in _serve(tmp_path / "sb", confine=request.param):
        yield s


@pytest.fixture(params=["off", "required", "off-by-pid", "required-by-pid"])
async def joins(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[tuple[str, ProcessBackend]]:
    """Both ways into the cgroups: born inside (v1), or the pid written while the command
    is held (what v2 does; forced here)."""
    confine, _, by_pid = request.param.partition("-")
    if confine == "required":
        require_tool("bwrap", "confined commands")
    async for url, backend in _serve(tmp_path / "sb", confine=confine):
        if by_pid:
            _have_cgroups(backend)
            backend.enforcer.tree.self_join = False
        yield url, backend


@pytest.fixture
async def unconfined(tmp_path: Path) -> AsyncIterator[tuple[str, ProcessBackend]]:
    async for s in _serve(tmp_path / "sb", confine="off"):
        yield s


async def _health(url: str) -> dict[str, Any]:
    resp = await HttpPool.for_loop().request("GET", url + "/healthz", retry=NO_RETRY)
    assert resp.status == 200
    health: dict[str, Any] = resp.json()
    return health


async def _enforced(url: str, limit: str) -> str:
    """What enforces ``limit`` (fails the test when nothing does: nothing is run then)."""
    how = (await _health(url)).get("limits", {}).get(limit, {}).get("enforced_by")
    assert how, f"{limit} is not enforced: not running the test command"
    return str(how)


async def _until_no_processes(root: Path) -> None:
    """Wait for the killed processes of a sandbox to be gone (they still count a moment)."""
    for _ in range(200):
        if not await asyncio.to_thread(sandbox_processes, root):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("sandbox processes outlived their exec")


async def _until_pids_free(backend: ProcessBackend, sandbox_id: str) -> None:
    """Wait for a sandbox's pids cgroup to be empty: killed processes count until their
    (new) parent reaps them, and meanwhile a command cannot start there (409)."""
    base = backend.enforcer.tree.bases.get("pids")
    if base is None:
        return
    current = base[0] / sandbox_id / "pids.current"
    for _ in range(200):
        if (await asyncio.to_thread(current.read_text)).strip() == "0":
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the sandbox's processes were never reaped")


async def _create(url: str, **fields: Any) -> Response:
    return await HttpPool.for_loop().request(
        "POST", url + "/sandboxes", json=fields, retry=NO_RETRY, idempotent=False
    )


def _have_cgroups(backend: ProcessBackend) -> None:
    if not backend.enforcer.tree.bases:
        pytest.skip("no cgroup this server may write here")


async def test_healthz_says_what_enforces_each_limit(
    unconfined: tuple[str, ProcessBackend],
) -> None:
    url, backend = unconfined
    limits = (await _health(url))["limits"]
    assert limits["memory_mb"]["value"] == 256 and limits["pids_limit"]["value"] == PIDS
    assert limits["file_size_mb"] == {"value": 64, "enforced_by": "rlimit FSIZE (per file)"}
    assert limits["cpu_time_s"] == {"value": 1, "enforced_by": "rlimit CPU (per process)"}
    bases = backend.enforcer.tree.bases
    for name, controller in (("memory_mb", "memory"), ("pids_limit", "pids"), ("cpus", "cpu")):
        how = limits[name]["enforced_by"]
        if controller in bases:
            assert how == f"cgroup {bases[controller][1]} (per sandbox)", limits


async def test_a_default_backend_limits_every_sandbox(tmp_path: Path) -> None:
    """``agentfleet run`` / ``serve-eval`` / ``serve-sandbox`` build ``ProcessBackend()`` with
    its defaults: memory, processes and file size are limited, CPU is not (no quota on the
    evaluation's timed runs)."""
    backend = ProcessBackend(tmp_path / "sb", confine="off")
    async with SandboxService(backend, reap_period_s=0) as svc:
        report = backend.limits_report()
        assert {k: v["value"] for k, v in report.items()} == {
            "memory_mb": 2048,
            "pids_limit": 512,
            "cpus": None,
            "file_size_mb": 1024,
            "cpu_time_s": None,
        }
        assert report["memory_mb"]["enforced_by"] and report["file_size_mb"]["enforced_by"]
        info = await svc.create(CreateSandbox())
        r = await svc.exec(info.sandbox_id, "ulimit -f")
        assert r.output.strip() == str(1024 * 1024), r  # KiB


async def test_the_first_line_already_runs_limited(joins: tuple[str, ProcessBackend]) -> None:
    """Nothing of a command runs before its limits hold (its first line is in the sandbox's
    cgroups, with its rlimits), and bash's line numbers stay right."""
    url, backend = joins
    client = SandboxClient(url)
    info = await client.create(CreateSandbox())
    r = await client.exec(
        info.sandbox_id, "cat /proc/$$/cgroup; ulimit -f; ulimit -t\necho $LINENO"
    )
    assert r.returncode == 0, r
    lines = r.output.split()
    assert lines[-3:] == [str(64 * 1024), "1", "2"], r.output  # bash: 1 KiB blocks
    if backend.enforcer.tree.bases:
        assert f"/{info.sandbox_id}\n" in r.output, r.output
    r = await client.exec(info.sandbox_id, "true\nnosuchcommand")
    assert "line 2: nosuchcommand" in r.output and r.returncode == 127, r


async def test_a_fork_loop_is_contained(joins: tuple[str, ProcessBackend]) -> None:
    url, backend = joins
    await _enforced(url, "pids_limit")
    client = SandboxClient(url)
    info = await client.create(CreateSandbox())
    # a bounded fork loop: 200 children if nothing stops it
    loop = (
        "import os, time\n"
        "n = 0\n"
        "for _ in range(200):\n"
        "    try:\n"
        "        pid = os.fork()\n"
        "    except OSError:\n"
        "        break\n"
        "    if pid == 0:\n"
        "        time.sleep(60)\n"
        "        os._exit(0)\n"
        "    n += 1\n"
        "print('forked', n, flush=True)\n"
    )
    await client.write_file(info.sandbox_id, "loop.py", loop.encode())
    r = await client.exec(info.sandbox_id, "python3 loop.py", timeout=60)
    forked = int(r.output.split("forked")[1].split()[0])
    assert forked < PIDS, r.output  # the command itself counts too
    assert (await _health(url))["status"] == "ok"
    await _until_no_processes(backend.root)
    await _until_pids_free(backend, info.sandbox_id)
    r = await client.exec(info.sandbox_id, "echo still here")
    assert r.output.strip() == "still here"


async def test_a_fork_bomb_leaves_the_server_serving(
    server: tuple[str, ProcessBackend],
) -> None:
    url, backend = server
    await _enforced(url, "pids_limit")
    client = SandboxClient(url)
    info = await client.create(CreateSandbox())
    await client.exec(info.sandbox_id, "bomb() { bomb | bomb & }; bomb", timeout=3)
    assert (await _health(url))["status"] == "ok"
    await _until_no_processes(backend.root)
    await _until_pids_free(backend, info.sandbox_id)
    r = await client.exec(info.sandbox_id, "echo alive")
    assert r.returncode == 0 and r.output.strip() == "alive"


async def test_an_allocation_over_the_memory_limit_fails(
    server: tuple[str, ProcessBackend],
) -> None:
    url, _ = server
    await _enforced(url, "memory_mb")
    client = SandboxClient(url)
    info = await client.create(CreateSandbox())
    alloc = "python3 -c \"b = b'x' * (512 << 20); print('allocated', len(b))\""
    r = await client.exec(info.sandbox_id, alloc, timeout=60)
    assert r.returncode != 0 and "allocated" not in r.output, r
    small = "python3 -c \"b = b'x' * (64 << 20); print('allocated', len(b))\""
    r = await client.exec(info.sandbox_id, small, timeout=60)
    assert r.returncode == 0 and "allocated" in r.output, r


async def test_a_file_over_the_size_limit_fails(server: tuple[str, ProcessBackend]) -> None:
    url, _ = server
    await _enforced(url, "file_size_mb")
    client = SandboxClient(url)
    info = await client.create(CreateSandbox())
    r = await client.exec(info.sandbox_id, "head -c 200M /dev/zero > big; echo rc=$?")
    assert "rc=0" not in r.output, r
    assert (Path(info.workdir) / "big").stat().st_size <= 64 << 20


@pytest.mark.parametrize(
    "env", [{"BASH_ENV": "x.sh"}, {"SHELLOPTS": "xtrace"}, {"BASH_FUNC_builtin%%": "() { :; }"}]
)
async def test_shell_start_up_variables_cannot_run_code_before_the_limits(
    server: tuple[str, ProcessBackend], env: dict[str, str]
) -> None:
    """BASH_ENV, SHELLOPTS + PS4, an exported ``builtin`` function: each would run before
    the ``ulimit`` on the first line; the request is 422 and nothing runs."""
    url, _ = server
    client = SandboxClient(url)
    info = await client.create(CreateSandbox())
    (Path(info.workdir) / "x.sh").write_text("head -c 100M /dev/zero > escaped\n")
    with pytest.raises(ValueError, match="start-up"):  # the client checks first
        await client.exec(info.sandbox_id, "true", env=env)
    resp = await HttpPool.for_loop().request(
        "POST",
        f"{url}/sandboxes/{info.sandbox_id}/exec",
        json={"command": "true", "env": {**env, "PS4": "$(. ./x.sh)"}},
        retry=NO_RETRY,
        idempotent=False,
    )
    assert resp.status == 422 and "start-up" in resp.text(), resp.text()
    assert not (Path(info.workdir) / "escaped").exists()


async def test_a_cpu_time_loop_is_killed(server: tuple[str, ProcessBackend]) -> None:
    url, _ = server
    await _enforced(url, "cpu_time_s")
    client = SandboxClient(url)
    info = await client.create(CreateSandbox())
    r = await client.exec(info.sandbox_id, 'python3 -c "while True: pass"', timeout=30)
    assert not r.timed_out and r.returncode != 0, r


async def test_a_sandbox_at_its_process_limit_answers_409(tmp_path: Path) -> None:
    backend = ProcessBackend(tmp_path / "sb", confine="off", **(LIMITS | {"pids_limit": 4}))
    async with SandboxService(backend, reap_period_s=0) as svc:
        _have_cgroups(backend)
        info = await svc.create(CreateSandbox())
        pids = backend.enforcer.tree.bases["pids"][0] / info.sandbox_id / "pids.current"
        hold = "sleep 30 & sleep 30 & sleep 30 & wait"  # bash and 3 sleeps: 4
        task = asyncio.ensure_future(svc.exec(info.sandbox_id, hold, timeout=30))
        try:
            for _ in range(400):
                if (await asyncio.to_thread(pids.read_text)).strip() == "4":
                    break
                await asyncio.sleep(0.05)
            with pytest.raises(SandboxError) as e:
                await svc.exec(info.sandbox_id, "echo no room")
            assert e.value.status == 409 and "process limit (pids_limit 4" in str(e.value)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_rlimits_hold_memory_without_cgroups(tmp_path: Path) -> None:
    async for url, _ in _serve(tmp_path / "sb", confine="off", cgroups=False):
        limits = (await _health(url))["limits"]
        assert limits["memory_mb"]["enforced_by"] == "rlimit AS (per process)"
        assert limits["cpus"]["enforced_by"] is None
        client = SandboxClient(url)
        info = await client.create(CreateSandbox())
        alloc = "python3 -c \"b = b'x' * (512 << 20); print('allocated', len(b))\""
        r = await client.exec(info.sandbox_id, alloc, timeout=60)
        assert r.returncode != 0 and "MemoryError" in r.output, r


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"memory_mb": 257}, "memory_mb 257 is over this server's limit of 256"),
        ({"pids_limit": PIDS + 1}, f"pids_limit {PIDS + 1} is over"),
        ({"cpus": 2}, "cpus 2 is over this server's limit of 1"),
        ({"file_size_mb": 65}, "file_size_mb 65 is over"),
        ({"cpu_time_s": 2}, "cpu_time_s 2 is over"),
        ({"image": "busybox"}, "image 'busybox': the process backend runs commands"),
    ],
)
async def test_over_the_limits_or_an_image_is_422(
    unconfined: tuple[str, ProcessBackend], fields: dict[str, Any], message: str
) -> None:
    url, backend = unconfined
    resp = await _create(url, **fields)
    assert resp.status == 422, resp.text()
    assert message in resp.json()["error"]
    assert backend.sandbox_ids() == []


async def test_a_request_may_ask_for_a_limit_the_server_leaves_unset(tmp_path: Path) -> None:
    async for url, _ in _serve(tmp_path / "sb", confine="off", **NO_LIMITS):
        client = SandboxClient(url)
        info = await client.create(CreateSandbox(file_size_mb=1))
        r = await client.exec(info.sandbox_id, "head -c 2M /dev/zero > f; echo rc=$?")
        assert "rc=0" not in r.output, r


async def test_without_limits_commands_run_as_they_did(tmp_path: Path) -> None:
    """All limits off: no gate, the command string is the request's own."""
    backend = ProcessBackend(tmp_path / "sb", confine="off", **NO_LIMITS)
    async with SandboxService(backend, reap_period_s=0) as svc:
        info = await svc.create(CreateSandbox())
        assert not backend.enforcer.limited(info.sandbox_id)
        command = 'printf %s "$BASH_EXECUTION_STRING"'
        r = await svc.exec(info.sandbox_id, command)
        assert r.output == command
        health = backend.limits_report()
        assert all(v == {"value": None, "enforced_by": None} for v in health.values())


async def test_cgroups_are_removed_with_their_sandbox(tmp_path: Path) -> None:
    backend = ProcessBackend(tmp_path / "sb", confine="off", **LIMITS)
    async with SandboxService(backend, reap_period_s=0) as svc:
        _have_cgroups(backend)
        bases = backend.enforcer.tree.bases
        info = await svc.create(CreateSandbox(memory_mb=128))
        dirs = [base / info.sandbox_id for base, _ in bases.values()]
        assert all(d.is_dir() for d in dirs)
        r = await svc.exec(info.sandbox_id, "setsid sleep 30 & echo started")
        assert "started" in r.output
        await svc.delete(info.sandbox_id)
        assert not any(d.exists() for d in dirs)
    assert not any(base.exists() for base, _ in bases.values())


async def test_a_step_of_the_wall_clock_leaves_a_live_servers_cgroups(
    tmp_path: Path, step_clock: Callable[[float], None]
) -> None:
    """The base folder names its server by start ticks: a server starting after the clock
    stepped takes it for a live one, and leaves its sandboxes' (empty) cgroups alone (by
    epoch start time it removed them, and the next command failed with ENODEV)."""
    from agentfleet.sandbox import cgroups as cgroups_mod

    backend = ProcessBackend(tmp_path / "sb", confine="off", **LIMITS)
    async with SandboxService(backend, reap_period_s=0) as svc:
        _have_cgroups(backend)
        info = await svc.create(CreateSandbox(memory_mb=128))
        dirs = [base / info.sandbox_id for base, _ in backend.enforcer.tree.bases.values()]
        step_clock(30)
        assert await asyncio.to_thread(cgroups_mod.reap_stale) == []
        assert all(d.is_dir() for d in dirs)
        r = await svc.exec(info.sandbox_id, "echo here")
        assert r.output.strip() == "here", r


@pytest.mark.parametrize("confine", ["off", "required"])
@pytest.mark.parametrize("by_pid", [False, True])
async def test_a_command_whose_limits_cannot_be_set_does_not_run(
    tmp_path: Path, confine: str, by_pid: bool
) -> None:
    if confine == "required":
        require_tool("bwrap", "confined commands")
    backend = ProcessBackend(tmp_path / "sb", confine=confine, **LIMITS)
    async with SandboxService(backend, reap_period_s=0) as svc:
        _have_cgroups(backend)
        if by_pid:
            backend.enforcer.tree.self_join = False
        info = await svc.create(CreateSandbox())
        for base, _ in backend.enforcer.tree.bases.values():
            (base / info.sandbox_id).rmdir()  # gone behind the backend's back
        with pytest.raises(SandboxError) as e:
            await svc.exec(info.sandbox_id, "echo ran > ran.txt")
        assert e.value.status == 500 and "cannot set the sandbox's limits" in str(e.value)
        await _until_no_processes(backend.root)
        assert not (Path(info.workdir) / "ran.txt").exists()


async def test_two_backends_in_one_process_keep_their_own_cgroups(tmp_path: Path) -> None:
    first = ProcessBackend(tmp_path / "a", confine="off", **LIMITS)
    second = ProcessBackend(tmp_path / "b", confine="off", **LIMITS)
    async with SandboxService(second, reap_period_s=0) as svc:
        _have_cgroups(second)
        info = await svc.create(CreateSandbox())
        async with SandboxService(first, reap_period_s=0) as other:
            await other.create(CreateSandbox())
        r = await svc.exec(info.sandbox_id, "echo fine")
        assert r.returncode == 0 and r.output.strip() == "fine", r


# reap_stale(kill=True) kills what any dead server's cgroups hold, machine-wide: with the
# tests that count a SIGKILLed server's survivors on one xdist worker (make test: loadgroup)
@pytest.mark.xdist_group("sandbox-gc")
async def test_a_dead_servers_cgroup_goes_once_empty_never_killing(tmp_path: Path) -> None:
    """What a dead server left running is the sandbox reaper's to kill (by its folders, as
    without cgroups): a starting server only removes dead servers' *empty* cgroups."""
    from agentfleet.sandbox import cgroups as cgroups_mod

    backend = ProcessBackend(tmp_path / "sb", confine="off", **LIMITS)
    async with SandboxService(backend, reap_period_s=0):
        _have_cgroups(backend)
        base, _ = next(iter(backend.enforcer.tree.bases.values()))
    stale, empty = (base.parent / f"agentfleet-999999999-0-{os.urandom(4).hex()}" for _ in "ab")
    (stale / "sb").mkdir(parents=True)
    (empty / "sb").mkdir(parents=True)
    sleeper = await asyncio.create_subprocess_exec("sleep", "60")
    try:
        (stale / "sb" / "cgroup.procs").write_text(str(sleeper.pid))
        removed = await asyncio.to_thread(cgroups_mod.reap_stale)
        assert empty in removed and not empty.exists()
        assert stale not in removed and stale.is_dir() and sleeper.returncode is None
        # `agentfleet sandbox gc`: kills what is left, removes the rest
        assert stale in await asyncio.to_thread(cgroups_mod.reap_stale, kill=True)
        assert not stale.exists()
        async with asyncio.timeout(10):
            await sleeper.wait()
    finally:
        if sleeper.returncode is None:
            sleeper.kill()
            await sleeper.wait()
        if stale.exists():
            await asyncio.to_thread(cgroups_mod.reap_stale, kill=True)


async def test_concurrent_execs_share_the_sandbox_limits(tmp_path: Path) -> None:
    """Limits are per sandbox: two execs at once count together against its processes."""
    backend = ProcessBackend(tmp_path / "sb", confine="off", **(LIMITS | {"pids_limit": 8}))
    async with SandboxService(backend, reap_period_s=0) as svc:
        _have_cgroups(backend)
        info = await svc.create(CreateSandbox())
        started = Path(info.workdir) / "started"
        hold = "for i in 1 2 3 4; do sleep 3 & done; touch started; wait"
        task = asyncio.ensure_future(svc.exec(info.sandbox_id, hold, timeout=30))
        while not started.exists():  # noqa: ASYNC110 (its processes are all there)
            await asyncio.sleep(0.05)
        r = await backend.exec(
            info.sandbox_id,
            ExecRequest(command="for i in 1 2 3 4 5; do sleep 1 & done; wait; echo done"),
            10000,
        )
        await task
        assert "fork" in r.output, r


def test_serve_settings_give_the_limits_to_the_process_backend() -> None:
    from agentfleet.sandbox.cli import serve_settings

    kw, _ = serve_settings(
        "process", memory="256m", cpus=0.5, pids_limit=10, file_size="64m", cpu_time=5
    )
    assert kw == {
        "memory_mb": 256,
        "cpus": 0.5,
        "pids_limit": 10,
        "file_size_mb": 64,
        "cpu_time_s": 5,
        "confine": "auto",
    }
    off, _ = serve_settings("process", memory="0", cpus=0, pids_limit=0, file_size="0")
    assert off == {
        **dict.fromkeys(("memory_mb", "cpus", "pids_limit", "file_size_mb")),
        "confine": "auto",
    }
    with pytest.raises(ValueError, match="--image: only for --backend docker"):
        serve_settings("process", image="busybox")
    with pytest.raises(ValueError, match="--cpu-time -1"):
        serve_settings("process", cpu_time=-1)

"""The process backend's exec path: the exec guard (kills every command group of a SIGKILLed
server, keeps the group records for the reaper, survives its own death) and the spawn's fds."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path

import psutil
import pytest
from test_sandbox import _unique_seconds, _wait_for
from test_sandbox_docker import _free_port, _serve

from agentfleet.sandbox import CreateSandbox, ProcessBackend, SandboxClient, SandboxError
from agentfleet.sandbox.base import ExecRequest
from agentfleet.sandbox.folders import PGIDS_DIR, kill_leftovers, process_start_ticks


def _with_arg(arg: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline", "status"]):
        if arg in (p.info.get("cmdline") or []) and p.info["status"] != psutil.STATUS_ZOMBIE:
            found.append(p)
    return found


def _group_members(arg: str) -> list[tuple[int, list[str]]]:
    """The processes with ``arg`` that did not leave their group by ``setsid``."""
    found = []
    for p in _with_arg(arg):
        try:
            if os.getsid(p.pid) != p.pid:
                found.append((p.pid, p.info.get("cmdline") or []))
        except OSError:
            continue
    return found


def _guards_of(server_pid: int) -> list[int]:
    try:
        kids = psutil.Process(server_pid).children()
    except psutil.Error:
        return []
    guards = []
    for p in kids:
        try:
            cmdline = p.cmdline()
        except psutil.Error:  # a child that just exited (a zombie), e.g. a host git
            continue
        if "-I" in cmdline and "-S" in cmdline:
            guards.append(p.pid)
    return guards


async def test_group_records_are_written_and_removed(tmp_path: Path) -> None:
    backend = ProcessBackend(tmp_path / "sb", confine="off")
    await backend.start()
    try:
        await backend.create("sb-rec000000001", None, CreateSandbox())
        records = backend.sandbox_dir("sb-rec000000001") / PGIDS_DIR
        run = asyncio.ensure_future(
            backend.exec("sb-rec000000001", ExecRequest(command="sleep 30"), 1000)
        )
        assert await _wait_for(lambda: len(list(records.iterdir())) == 1)
        (record,) = records.iterdir()
        assert psutil.Process(int(record.name)).name() == "sleep"
        # it holds the leader's start (ticks since boot), which tells a reused pid apart
        ticks = await asyncio.to_thread(process_start_ticks, int(record.name))
        assert await asyncio.to_thread(record.read_text) == str(ticks)
        run.cancel()
        with pytest.raises(asyncio.CancelledError):
            await run
        assert await _wait_for(lambda: not list(records.iterdir()))
        # a short command (over within GUARD_AFTER_S) never reaches the guard, nor the disk
        r = await backend.exec("sb-rec000000001", ExecRequest(command="echo hi"), 1000)
        assert r.output == "hi\n" and r.returncode == 0
    finally:
        await backend.aclose()
    assert backend.guard.pid is None


def test_the_reaper_tells_a_recorded_group_by_its_start_ticks(
    tmp_path: Path, step_clock: Callable[[float], None]
) -> None:
    """A group recorded with its leader's start ticks is killed after the wall clock
    stepped (by epoch start time, 30 s after its record, it was taken for a newer process
    and left running); a record whose ticks name another start is left alone."""
    folder = tmp_path / "sb-x"
    (folder / PGIDS_DIR).mkdir(parents=True)
    ours, other = (subprocess.Popen(["sleep", "60"], start_new_session=True) for _ in "ab")
    try:
        (folder / PGIDS_DIR / str(ours.pid)).write_text(str(process_start_ticks(ours.pid)))
        wrong = (process_start_ticks(other.pid) or 0) + 1
        (folder / PGIDS_DIR / str(other.pid)).write_text(str(wrong))
        step_clock(30)
        assert kill_leftovers(folder, marked={}) == 1
        assert ours.wait(10) == -signal.SIGKILL
        assert other.poll() is None
    finally:
        for proc in (ours, other):
            proc.kill()
            proc.wait()


@pytest.mark.slow
async def test_sigkilled_server_kills_its_groups_even_after_the_guard_died(
    tmp_path: Path,
) -> None:
    """Unconfined: the SIGKILLed server's guard kills the command and its background child
    (a parent-death signal reached the main process only); the guard itself was SIGKILLed
    before and replaced, the new one knew the group. Only the ``setsid`` escapee is left
    (for the reaper), and the restarted server's reaping removes it."""
    root = tmp_path / "sb"
    port = _free_port()
    server = await _serve(root, port, "process", {"confine": "off"})
    client = SandboxClient(f"http://127.0.0.1:{port}")
    secs = _unique_seconds()
    try:
        sid = (await client.create(CreateSandbox())).sandbox_id
        cmd = f"sleep {secs} & setsid sleep {secs} & sleep {secs}"
        running = asyncio.ensure_future(client.exec(sid, cmd, timeout=1000))
        assert await _wait_for(lambda: len(_with_arg(secs)) == 3)
        (guard,) = _guards_of(server.pid)
        os.kill(guard, signal.SIGKILL)
        assert await _wait_for(lambda: _guards_of(server.pid) not in ([], [guard]))
        assert len(_with_arg(secs)) == 3  # the guard's death kills nothing
        server.send_signal(signal.SIGKILL)
        await server.wait()
        with pytest.raises(SandboxError):
            await running
        # Only the setsid escapee may be left. It may be gone too: `sandbox gc` and
        # reap_stale(kill=True) in tests running beside this one kill what dead servers'
        # cgroups hold, machine-wide, as they should. Generous wait: a loaded CI.
        gone = await _wait_for(lambda: not _group_members(secs), within=30)
        assert gone, f"the killed server's group survived: {_group_members(secs)}"
    finally:
        if server.returncode is None:
            server.kill()
            await server.wait()
    second = await _serve(root, port, "process", {"confine": "off"})
    second.send_signal(signal.SIGTERM)
    await asyncio.wait_for(second.wait(), 30)
    assert await _wait_for(lambda: not _with_arg(secs))

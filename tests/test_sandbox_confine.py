"""The process backend's confinement (issue 14 items 2, 4 and 6): the client's env never acts
on the host, bwrap shows commands only what they need, ``confine`` fails closed when asked,
bad exec requests are 422 and leak nothing."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import require_tool

from agentfleet.http.pool import HttpPool
from agentfleet.sandbox import CreateSandbox, ProcessBackend, SandboxClient, SandboxError
from agentfleet.sandbox.cli import confine_setting
from agentfleet.sandbox.process import default_confine
from agentfleet.sandbox.server import create_app
from agentfleet.serving import serve_in_loop
from agentfleet.tasks import load_dataset

PRELOAD_C = r"""
#include <fcntl.h>
#include <unistd.h>
__attribute__((constructor)) static void escaped(void) {
    int fd = open(MARKER, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) { write(fd, "x", 1); close(fd); }
}
"""


async def _served(backend: ProcessBackend) -> AsyncIterator[tuple[str, SandboxClient]]:
    async with serve_in_loop(create_app(backend)) as running:
        yield running.url, SandboxClient(running.url)


@pytest.fixture
async def confined(tmp_path: Path) -> AsyncIterator[tuple[str, SandboxClient, ProcessBackend]]:
    backend = ProcessBackend(tmp_path / "sb", confine="auto")
    async with serve_in_loop(create_app(backend)) as running:
        require_tool("bwrap", "commands confined by bubblewrap", available=backend.confined)
        yield running.url, SandboxClient(running.url), backend


# --------------------------------------------------------------------------- item 2: env


async def test_client_env_never_reaches_bwrap_on_the_host(
    tmp_path: Path, confined: tuple[str, SandboxClient, ProcessBackend]
) -> None:
    """LD_PRELOAD of a shared object the client put in its workdir: its constructor must
    not run on the host (in bwrap itself), only inside the sandbox, where the marker's
    folder does not exist."""
    require_tool("gcc", "builds the LD_PRELOAD shared object")
    _, client, _ = confined
    marker = tmp_path / "escaped"
    src = tmp_path / "evil.c"
    src.write_text(f'#define MARKER "{marker}"\n' + PRELOAD_C)
    so = tmp_path / "evil.so"
    gcc = ["gcc", "-shared", "-fPIC", "-o", str(so), str(src)]
    await asyncio.to_thread(subprocess.run, gcc, check=True)
    sid = (await client.create(CreateSandbox())).sandbox_id
    await client.write_file(sid, "evil.so", so.read_bytes())
    workdir = (await client.get(sid)).workdir
    preload = {"LD_PRELOAD": f"{workdir}/evil.so"}
    r = await client.exec(sid, f"echo $LD_PRELOAD; cat {marker}", env=preload)
    # set inside, where the constructor ran (on the sandbox's own tmpfs: "x" from bash's,
    # "x" from cat's)
    assert r.output.split() == [preload["LD_PRELOAD"], "xx"], r.output
    assert not marker.exists()  # never on the host


@pytest.mark.parametrize(
    "body",
    [
        {"command": "true", "env": {"A=B": "x"}},
        {"command": "true", "env": {"": "x"}},
        {"command": "true", "env": {"A\u0000B": "x"}},
        {"command": "true", "env": {"A": "x\u0000y"}},
        {"command": "echo a\u0000b"},
        {"command": "true", "cwd": "a\u0000b"},
    ],
)
async def test_bad_env_names_values_and_nul_are_422(
    tmp_path: Path, body: dict[str, object]
) -> None:
    backend = ProcessBackend(tmp_path / "sb", confine="off")
    async with serve_in_loop(create_app(backend)) as running:
        client = SandboxClient(running.url)
        sid = (await client.create(CreateSandbox())).sandbox_id
        resp = await HttpPool.for_loop().request(
            "POST", f"{running.url}/sandboxes/{sid}/exec", json=body
        )
        assert resp.status == 422 and "error" in resp.json(), resp.text()
        assert (await client.exec(sid, "echo ok")).output == "ok\n"


# --------------------------------------------------------------------------- item 6: fds


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_failed_spawns_are_4xx_and_leak_no_fd(tmp_path: Path) -> None:
    backend = ProcessBackend(tmp_path / "sb", confine="off")
    async with serve_in_loop(create_app(backend)) as running:
        client = SandboxClient(running.url)
        sid = (await client.create(CreateSandbox())).sandbox_id
        url = f"{running.url}/sandboxes/{sid}/exec"
        pool = HttpPool.for_loop()
        bad = [
            {"command": "echo a\u0000b"},  # NUL: refused before any spawn
            {"command": "true", "env": {"BAD=NAME": "1"}},
            {"command": "echo " + "x" * 200_000},  # over one argument's cap: the model's 422
            {"command": "true", "env": {"BIG": "x" * 200_000}},  # passes it, exec fails: E2BIG
        ]
        assert (await client.exec(sid, "true")).returncode == 0  # warm: connection open
        before = _open_fds()
        statuses = set()
        for i in range(50):
            statuses.add((await pool.request("POST", url, json=bad[i % len(bad)])).status)
        assert statuses == {422}
        assert _open_fds() <= before  # no pipe end left behind
        assert (await client.exec(sid, "echo ok")).output == "ok\n"


# --------------------------------------------------------------------------- item 4: confine


async def test_confined_command_sees_only_what_it_needs(
    tmp_path: Path, confined: tuple[str, SandboxClient, ProcessBackend]
) -> None:
    _, client, backend = confined
    home_secret = Path.home() / f".agentfleet-test-secret-{uuid.uuid4().hex}"
    home_secret.write_text("secret\n")
    try:
        a = (await client.create(CreateSandbox())).sandbox_id
        b = (await client.create(CreateSandbox())).sandbox_id
        await client.write_file(b, "mine.txt", b"b's file\n")
        other = backend.sandbox_dir(b) / "work" / "mine.txt"
        dataset = await asyncio.to_thread(load_dataset, "perf-lite")
        patch = (await asyncio.to_thread(dataset.tasks))[0].task_dir / "solution.patch"
        assert patch.is_file() and other.is_file()
        for path in (home_secret, patch, other, Path("/etc/shadow")):
            r = await client.exec(a, f"cat {path}")
            assert r.returncode != 0, (path, r.output)
        # what commands need still works: python, git, their own files and /tmp
        r = await client.exec(a, "python3 -c 'import json; print(7)' && git status --short")
        assert r.returncode == 0 and r.output.startswith("7\n"), r.output
        r = await client.exec(a, "echo hi > /tmp/t && cat /tmp/t && echo x > f && cat f")
        assert r.output == "hi\nx\n"
    finally:
        home_secret.unlink()


async def test_confine_required_fails_closed_without_bwrap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no bwrap to find
    with pytest.raises(SandboxError, match="bubblewrap"):
        await ProcessBackend(tmp_path / "sb", confine="required").start()
    auto = ProcessBackend(tmp_path / "sb2", confine="auto", path=os.defpath)
    await auto.start()
    try:
        assert not auto.confined
    finally:
        await auto.aclose()
    with pytest.raises(ValueError, match="confine"):
        ProcessBackend(tmp_path / "sb3", confine="maybe")


def test_confine_defaults_by_host() -> None:
    assert default_confine("127.0.0.1") == "auto"
    assert default_confine("::1") == "auto"
    assert default_confine("localhost") == "auto"
    assert default_confine("0.0.0.0") == "required"
    assert default_confine("10.1.2.3") == "required"
    assert default_confine("sandbox.internal") == "required"
    assert confine_setting(None, "0.0.0.0") == "required"
    assert confine_setting("off", "0.0.0.0") == "off"
    with pytest.raises(ValueError, match="--confine"):
        confine_setting("sometimes", "127.0.0.1")


def test_serve_sandbox_required_without_bwrap_exits_nonzero(tmp_path: Path) -> None:
    agentfleet = str(Path(sys.executable).with_name("agentfleet"))
    env = {**os.environ, "PATH": str(tmp_path)}
    proc = subprocess.run(
        [
            agentfleet,
            "serve-sandbox",
            "--port",
            "0",
            "--confine",
            "required",
            "--root",
            str(tmp_path / "sb"),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode != 0
    assert "bubblewrap" in proc.stderr + proc.stdout


async def test_a_confined_command_of_a_root_server_has_no_capabilities(
    confined: tuple[str, SandboxClient, ProcessBackend],
) -> None:
    """bwrap keeps a root caller's capabilities: a command of a server run as root could
    unmount the mask over a host file, remount the read-only /etc read-write and mount the
    cgroup filesystem to leave its limits. It gets no capability: each fails. Its folder is
    its owner's only (0700): no other local user reaches what it leaves there."""
    _, client, backend = confined
    sid = (await client.create(CreateSandbox())).sandbox_id
    r = await client.exec(sid, "grep CapEff /proc/self/status")
    assert r.output.split() == ["CapEff:", "0000000000000000"], r.output
    tries = {
        "umount /etc/hostname": "umount",
        "mount -o remount,rw,bind /etc": "remount",
        "mkdir -p /tmp/cg && mount -t cgroup -o pids none /tmp/cg": "cgroup",
    }
    for command in tries:
        r = await client.exec(sid, f"{command} && echo ESCAPED")
        assert "ESCAPED" not in r.output and r.returncode != 0, (command, r.output)
    mode = (backend.sandbox_dir(sid).stat().st_mode) & 0o777
    assert mode == 0o700, oct(mode)

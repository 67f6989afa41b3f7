"""One command in a container: the ``bash -c`` wrapper that bounds it, its output stream,
its exit code, and the kill of every process it left (by the exec's token). The container's
lifetime and the sandbox around it are :mod:`agentfleet.sandbox.docker`'s."""

from __future__ import annotations

import asyncio
import re
import time
from pathlib import Path
from typing import Any

import aiodocker

from agentfleet.sandbox.capture import OutputCapture
from agentfleet.sandbox.command_env import DEFAULT_PATH, command_env
from agentfleet.sandbox.containers import drain

__all__ = [
    "HOST_GRACE_S",
    "KILL_AFTER_S",
    "TOKEN_VAR",
    "exec_argv",
    "exec_env",
    "exec_once",
    "exit_code",
    "kill_token",
    "not_running",
    "restart",
    "wait_stopped",
]

TOKEN_VAR = "AGENTFLEET_EXEC"
KILL_AFTER_S = 1  # `timeout -k`: SIGTERM at the limit, SIGKILL this much later
HOST_GRACE_S = 5.0  # host-side deadline: limit + KILL_AFTER_S + this, then kill by token

# $1: timeout in seconds, $2: the command. Runs as the exec's main process (a session leader).
WRAPPER = """exec 2>&1
timeout -k KILL_AFTER "$1" bash -c "$2" &
pid=$!
wait "$pid"
rc=$?
kill -KILL -- "-$pid" 2>/dev/null
# and what left the group (setsid): whatever carries this exec's token
for d in /proc/[0-9]*; do
  [ "${d#/proc/}" = "$$" ] && continue
  while IFS= read -r -d '' v; do
    if [ "$v" = "TOKEN_VAR=$TOKEN_VAR" ]; then kill -KILL "${d#/proc/}"; break; fi
  done 2>/dev/null <"$d/environ"
done
exit "$rc"
""".replace("KILL_AFTER", str(KILL_AFTER_S)).replace("TOKEN_VAR", TOKEN_VAR)

# $1: the token. Kills every process whose environment holds AGENTFLEET_EXEC=<token>.
KILLER = """t="TOKEN_VAR=$1"
for round in 1 2 3 4 5; do
  found=
  for d in /proc/[0-9]*; do
    if grep -qzx -- "$t" "$d/environ" 2>/dev/null; then
      kill -KILL "${d#/proc/}" 2>/dev/null && found=1
    fi
  done
  [ -z "$found" ] && exit 0
done
""".replace("TOKEN_VAR", TOKEN_VAR)


# the engine's words for "the container stopped under this exec" (containerd says `ttrpc:
# closed` when the task died mid-exec, `task <id> not found` when it is already gone);
# acted on only once the container is seen stopped
NOT_RUNNING = re.compile(
    r"is not running|cannot exec in a \w+ state|OCI runtime exec failed|ttrpc: closed"
    r"|task \w+ not found"
)


def exec_argv(timeout: float, command: str) -> list[str]:
    """The exec's argv: ``command`` under the wrapper, limited to ``timeout`` seconds."""
    limit = f"{max(timeout, 0.001):.3f}"  # `timeout 0` would mean no limit at all
    return ["bash", "-c", WRAPPER, "agentfleet-exec", limit, command]


def exec_env(work: Path, extra: dict[str, str], token: str) -> dict[str, str]:
    """A command's environment in the sandbox, marked with the exec's token."""
    env = command_env(DEFAULT_PATH, str(work), "/tmp", extra)
    env[TOKEN_VAR] = token
    return env


def not_running(text: str) -> bool:
    """Whether an engine's message says the container stopped under an exec."""
    return NOT_RUNNING.search(text) is not None


async def exec_once(
    container: Any,
    argv: list[str],
    env: dict[str, str],
    cwd: Path,
    user: str,
    capture: OutputCapture,
) -> int | None:
    """Run ``argv`` once in ``container``, its output into ``capture``; its exit code (None:
    not known within 5 s of the stream's end)."""
    ex = await container.exec(
        argv, stdout=True, stderr=True, environment=env, workdir=str(cwd), user=user
    )
    await drain(ex.start(detach=False), capture.feed)
    return await exit_code(ex)


async def exit_code(ex: Any) -> int | None:
    deadline = time.monotonic() + 5.0
    while True:
        info = await ex.inspect()
        if not info.get("Running") and info.get("ExitCode") is not None:
            return int(info["ExitCode"])
        if time.monotonic() > deadline:
            return None
        await asyncio.sleep(0.01)


async def kill_token(container: Any, user: str, token: str) -> None:
    """Kill every process of one exec inside the container (bounded: 10 s)."""
    async with asyncio.timeout(10):
        ex = await container.exec(["sh", "-c", KILLER, "agentfleet-kill", token], user=user)
        await drain(ex.start(detach=False))


async def restart(container: Any) -> None:
    """Start a container that stopped (a command killed its ``sleep``); files are kept."""
    try:
        await container.start()
    except aiodocker.DockerError as e:
        if e.status != 304:  # already running
            raise


async def wait_stopped(container: Any, within: float = 10.0) -> bool:
    deadline = time.monotonic() + within
    while True:
        info = await container.show()
        if not (info.get("State") or {}).get("Running", False):
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)

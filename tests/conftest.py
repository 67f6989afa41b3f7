"""Suite-wide fixtures: blockbuster on for the whole session, pool defaults reset; helpers
for optional tools (bwrap, Docker, Chromium) and for finding sandboxed processes."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
import pytest
from blockbuster import BlockBuster, blockbuster_ctx

from agentfleet.http import HttpPool, background
from agentfleet.serving import serve_in_loop

# A shell's background job (`make test &`, nohup) starts with SIGINT ignored, and every
# process it starts inherits that: the tests that interrupt a run with SIGINT (as Ctrl-C
# does) need it handled. A Python handler here is SIG_DFL again in what this process execs.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session", autouse=True)
def blockbuster() -> Iterator[BlockBuster]:
    """Any blocking call made from agentfleet code inside a running event loop fails.

    Session-scoped and autouse, so it is active before any fixture of any scope (module-
    scoped fleets included) and stays active to the end. Nothing is allowed beyond
    blockbuster's own exceptions; allow a call with ``bb.functions[name].can_block_in(...)``
    only with a comment saying why it cannot block for long.
    """
    with blockbuster_ctx(["agentfleet"]) as bb:
        # subprocess.Popen (the process backend's spawn) reads its exec-status pipe, which
        # the child closes at its exec (vfork: the parent is suspended until then anyway)
        bb.functions["os.read"].can_block_in("subprocess.py", "_execute_child")
        yield bb


@pytest.fixture(autouse=True)
def _reset_pool_defaults() -> Iterator[None]:
    """In-process CLI runs call HttpPool.configure_default(): undo it after each test; and
    close the sync callers' background loop (and its pool) a test started."""
    yield
    HttpPool.reset_default()
    background.shutdown()


def docker_available() -> bool:
    return shutil.which("docker") is not None and os.path.exists("/var/run/docker.sock")


def require_docker() -> bool:
    return os.environ.get("AGENTFLEET_REQUIRE_DOCKER") == "1"


# How to get each optional tool; `.ci/run` installs them all.
HOW_TO_GET = {
    "bwrap": "apt-get install bubblewrap",
    "docker": "apt-get install docker.io and a running dockerd",
    "chromium": "apt-get install chromium",
    "docker-registry": "apt-get install docker-registry",
    "minisweagent": "pip install 'agentfleet[mini]'",
}


def tool_required(name: str) -> bool:
    """Whether a missing ``name`` fails tests instead of skipping them: ``CI=true``, or
    ``AGENTFLEET_REQUIRE_<NAME>=1`` (e.g. ``AGENTFLEET_REQUIRE_DOCKER=1``, set by .ci/run)."""
    return (
        os.environ.get("CI") == "true"
        or os.environ.get(f"AGENTFLEET_REQUIRE_{name.upper()}") == "1"
    )


def require_tool(
    name: str, why: str, *, available: bool | None = None, problem: str | None = None
) -> None:
    """Skip the calling test when tool ``name`` cannot be used; fail instead when it is
    required (:func:`tool_required`). ``why``: what the test needs it for. ``available``:
    whether it can be used (default: ``name`` is on PATH); ``problem``: what is wrong, when
    more precise than "not available" (implies unavailable)."""
    if problem is None:
        if available is None:
            available = shutil.which(name) is not None
        if available:
            return
        problem = f"{name} is not available"
    how = HOW_TO_GET.get(name, f"install {name}")
    message = f"{problem} ({how}; .ci/run installs it): {why}"
    if tool_required(name):
        why_required = f"CI=true or AGENTFLEET_REQUIRE_{name.upper()}=1"
        pytest.fail(f"{name} is required here ({why_required}): {message}")
    pytest.skip(f"{message}; required when CI=true")


SANDBOX_ENV = "AGENTFLEET_SANDBOX"  # in every sandbox command's environment: its folder


def drifting_noop_samples() -> tuple[list[float], list[float]]:
    """(baseline, candidate): unchanged code on a host whose speed drifts between rounds
    (levels 1.0, 1.3, 1.1, 0.9, 1.2; both runs of a round share one level), a few % of
    noise per run. The two medians come from the middle level's round alone, so the ratio
    of medians reads 1.0816 (a no-op read as a gain); the rounds' ratios' median, 1.01."""
    levels = [1.0, 1.3, 1.1, 0.9, 1.2]
    base = [lv * e for lv, e in zip(levels, [1.0, 0.99, 1.06, 1.01, 1.0], strict=True)]
    same = [lv * e for lv, e in zip(levels, [1.01, 1.0, 0.98, 1.0, 0.99], strict=True)]
    return base, same


def sandbox_processes(root: Path) -> dict[str, list[psutil.Process]]:
    """Live processes of sandboxes under ``root``, by sandbox folder.

    Found by the ``AGENTFLEET_SANDBOX`` variable of their environment, which every sandbox
    command has whatever the backend or confinement (a marker in the command line is not
    enough: unconfined, ``bash -c "sleep 300 # marker"`` execs ``sleep`` and the marker
    is gone). Zombies do not count.
    """
    prefixes = {str(root), str(root.resolve())}
    found: dict[str, list[psutil.Process]] = {}
    for p in psutil.process_iter():
        try:
            folder = p.environ().get(SANDBOX_ENV, "")
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
        except (psutil.Error, OSError):
            continue
        if any(folder == pre or folder.startswith(pre + os.sep) for pre in prefixes):
            found.setdefault(folder, []).append(p)
    return found


def sandboxes_running(root: Path, name: str) -> int:
    """How many sandboxes under ``root`` have a live process called ``name`` (e.g. sleep)."""
    count = 0
    for procs in sandbox_processes(root).values():
        for p in procs:
            try:
                if p.name() == name:
                    count += 1
                    break
            except psutil.Error:
                continue
    return count


@contextmanager
def local_ray(namespace: str) -> Iterator[None]:
    """A local 2-CPU Ray on 127.0.0.1 for one test module (call it from a module-scoped
    fixture); skips without ray, which CI installs."""
    try:
        import ray
    except ImportError:  # pragma: no cover - depends on the install
        if os.environ.get("CI") == "true":
            raise
        pytest.skip("ray is not installed (pip install 'agentfleet[ray]')")
    from agentfleet.ray_setup import init_ray

    init_ray(num_cpus=2, namespace=namespace, log_to_driver=False)
    try:
        yield
    finally:
        ray.shutdown()


@contextmanager
def served_in_thread(app: Any) -> Iterator[str]:
    """``app`` served on 127.0.0.1 (a free port) by its own loop in a thread; its URL."""
    ready, stop = threading.Event(), threading.Event()
    box: dict[str, Any] = {}

    def serve() -> None:
        async def main() -> None:
            async with serve_in_loop(app) as running:
                box["url"] = running.url
                ready.set()
                await asyncio.to_thread(stop.wait)

        try:
            asyncio.run(main())
        except BaseException as exc:
            box["error"] = exc
            ready.set()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        assert ready.wait(30) and "url" in box, box.get("error")
        yield box["url"]
    finally:
        stop.set()
        thread.join(30)


@pytest.fixture
def step_clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """``step_clock(s)``: the wall clock steps ``s`` seconds (NTP, a resumed VM) as psutil
    sees it: its process start times, boot time plus ticks, move (its Linux module reads the
    boot time per call)."""
    pslinux = pytest.importorskip("psutil._pslinux")
    real = pslinux.boot_time

    def step(seconds: float) -> None:
        monkeypatch.setattr(pslinux, "boot_time", lambda: real() + seconds)

    return step


@pytest.fixture
def fake_agents(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """run_one replaced by an instant one that fails tasks whose id starts with 'd'."""
    ran: list[str] = []

    async def fake_run_one(
        task: Any, cfg: Any, sandboxes: Any, eval_url: str, writer: Any, monitor: Any = None
    ) -> Any:
        from agentfleet.fleet.runner import TaskOutcome

        ran.append(task.id)
        await asyncio.sleep(0.1)
        outcome = TaskOutcome(task.id, "Submitted", reward=1.0, speedup=2.0, info={"status": "ok"})
        if task.id.startswith("d"):
            outcome.exit_status, outcome.error = "Error", "RuntimeError: flaky"
        await writer.write(outcome, {"messages": [], "info": {}})
        return outcome

    from agentfleet.fleet import runner

    monkeypatch.setattr(runner, "run_one", fake_run_one)
    return ran


# Image tasks (tests/test_image_sandbox.py, tests/test_image_pull.py): a GSO row with C
# rebuilt by make, a SWE-Perf row timing pytest tests.
ROWS = {  # a GSO row with C rebuilt by make, a SWE-Perf row timing pytest tests
    "gso-mini": "agentfleet__cprimes-102",
    "swe-perf-mini": "agentfleet__pairs-202",
}


@pytest.fixture(scope="session")
def task_images() -> dict[str, Any]:
    """The rows' images, built once per session (kept: an unchanged row is not rebuilt)."""
    from agentfleet.sandbox.containers import DEFAULT_IMAGE
    from agentfleet.sandbox.images import image_exists
    from agentfleet.sandbox.task_images import build_bench_image, build_task_image
    from agentfleet.tasks import load_dataset

    require_tool("docker", "runs image tasks", available=docker_available())
    if not image_exists(DEFAULT_IMAGE):
        require_tool("docker", "runs image tasks", problem=f"image {DEFAULT_IMAGE} missing")
    bench = build_bench_image(DEFAULT_IMAGE, log=lambda _: None)
    tasks = {}
    for dataset, task_id in ROWS.items():
        task = load_dataset(dataset).task(task_id)
        assert task.image is not None
        build_task_image(task, task.image, base=bench, log=lambda _: None)
        assert not build_task_image(task, task.image, base=bench, log=lambda _: None)  # cached
        tasks[dataset] = task
    return tasks


def tiny_image(tmp_path: Path, name: str, label: str | None) -> None:
    """A one-file image (docker import of a small tar), optionally labelled."""
    (tmp_path / "f").write_text("x")
    subprocess.run(["tar", "-C", str(tmp_path), "-cf", str(tmp_path / "t.tar"), "f"], check=True)
    change = ["--change", f"LABEL agentfleet.image={label}"] if label else []
    subprocess.run(
        ["docker", "import", *change, str(tmp_path / "t.tar"), name],
        check=True,
        capture_output=True,
    )

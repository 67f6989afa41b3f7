"""The servers run on their own (`serve-sandbox`, `serve-eval`) and the CLI uses them."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest
import requests
from conftest import sandbox_processes, sandboxes_running

from agentfleet.tasks import get_task

AGENTFLEET = str(Path(sys.executable).with_name("agentfleet"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[str], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1]
        try:
            if requests.get(f"{url}/healthz", timeout=1).ok:
                return
        except requests.ConnectionError:
            time.sleep(0.1)
    pytest.fail(f"{url} never became healthy")


def start_servers(
    tmp_path: Path, sandbox_args: Sequence[str] = ()
) -> tuple[list[subprocess.Popen[str]], str, str]:
    """`serve-sandbox` (root tmp_path/sb) and `serve-eval` using it, both healthy:
    (processes, sandbox URL, evaluation URL)."""
    sp, ep = free_port(), free_port()
    sandbox_url, eval_url = f"http://127.0.0.1:{sp}", f"http://127.0.0.1:{ep}"
    sandbox = [AGENTFLEET, "serve-sandbox", "--port", str(sp), "--root", str(tmp_path / "sb")]
    procs = [
        subprocess.Popen(
            [*sandbox, *sandbox_args],
            stderr=subprocess.PIPE,
            text=True,
        ),
        subprocess.Popen(
            [
                AGENTFLEET,
                "serve-eval",
                "--port",
                str(ep),
                "--sandbox-url",
                sandbox_url,
                "--db",
                str(tmp_path / "jobs.db"),
            ],
            stderr=subprocess.PIPE,
            text=True,
        ),
    ]
    try:
        wait_healthy(sandbox_url, procs[0])
        wait_healthy(eval_url, procs[1])
    except BaseException:
        stop(procs, signal.SIGKILL)
        raise
    return procs, sandbox_url, eval_url


def stop(procs: list[subprocess.Popen[str]], signum: int) -> list[str]:
    """Send ``signum`` to every process and wait for them (killed after 30 s); stderrs."""
    for p in procs:
        p.send_signal(signum)
    errs = []
    for p in procs:
        try:
            errs.append(p.communicate(timeout=30)[1])
        except subprocess.TimeoutExpired:
            p.kill()
            errs.append(p.communicate()[1])
    return errs


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[str, str]]:
    procs, sandbox_url, eval_url = start_servers(tmp_path)
    try:
        yield sandbox_url, eval_url
    finally:
        stop(procs, signal.SIGINT)


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_servers_stop_gracefully_on_a_signal(tmp_path: Path, signum: int) -> None:
    """SIGTERM (systemd, Kubernetes...) stops both servers as Ctrl-C does: a command still
    running after the grace (--stop-grace) is killed and its request answers a JSON 503,
    the lifespan cleanup runs (the sandbox is deleted) and the exit code is 128 + the
    signal."""
    procs, sandbox_url, _ = start_servers(tmp_path, ["--stop-grace", "1"])
    root = tmp_path / "sb"
    answers: list[requests.Response] = []
    try:
        sid = requests.post(f"{sandbox_url}/sandboxes", json={}, timeout=30).json()["sandbox_id"]
        body = {"command": "sleep 300", "timeout": 600}
        command = threading.Thread(
            target=lambda: _ignore_errors(
                lambda: answers.append(
                    requests.post(f"{sandbox_url}/sandboxes/{sid}/exec", json=body, timeout=120)
                )
            ),
            daemon=True,
        )
        command.start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not sandboxes_running(root, "sleep"):
            time.sleep(0.1)
        assert sandboxes_running(root, "sleep") == 1, "the command never started"
        errs = stop(procs, signum)
    finally:
        stop([p for p in procs if p.poll() is None], signal.SIGKILL)
    assert [p.returncode for p in procs] == [128 + signum] * 2, errs
    assert all("Application shutdown complete" in e for e in errs), errs  # lifespan ran
    assert "Traceback" not in errs[0], errs[0]
    assert leftovers(root) == []
    assert sandbox_processes(root) == {}
    command.join(timeout=30)
    assert [a.status_code for a in answers] == [503]
    said = answers[0].json()["error"]
    assert "sandbox server stopping: command not finished (killed as the server stops)" in said
    assert "after 1s of grace" in said, said


def _ignore_errors(fn: Callable[..., object], *args: object, **kw: object) -> None:
    try:
        fn(*args, **kw)
    except requests.RequestException:
        pass


def leftovers(root: Path) -> list[str]:
    return [p.name for p in root.iterdir()] if root.exists() else []


@pytest.mark.slow
def test_run_against_standalone_servers(servers: tuple[str, str], tmp_path: Path) -> None:
    sandbox_url, eval_url = servers
    proc = subprocess.run(
        [
            AGENTFLEET,
            "run",
            "--task",
            "rr-scheduler",
            "--sandbox-url",
            sandbox_url,
            "--eval-url",
            eval_url,
            "--run-dir",
            str(tmp_path / "run"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    (line,) = (tmp_path / "run" / "results.jsonl").read_text().splitlines()
    result = json.loads(line)
    assert result["exit_status"] == "Submitted" and result["reward"] > 0, result
    assert "mean reward" in proc.stdout
    assert not list((tmp_path / "sb").iterdir())  # the run deleted its sandbox


@pytest.mark.slow
def test_eval_submit_and_status(servers: tuple[str, str], tmp_path: Path) -> None:
    _, eval_url = servers
    patch = tmp_path / "fix.patch"
    patch.write_text(get_task("perf-lite", "sku-diff").solution_patch)
    submit = [
        AGENTFLEET,
        "eval",
        "submit",
        "--instance",
        "sku-diff",
        "--patch",
        str(patch),
        "--url",
        eval_url,
        "--key",
        "k1",
    ]
    first = subprocess.run(submit, capture_output=True, text=True, timeout=60, check=True)
    job_id = json.loads(first.stdout)["job_id"]
    again = subprocess.run(submit, capture_output=True, text=True, timeout=60, check=True)
    assert json.loads(again.stdout)["job_id"] == job_id  # same key: same job
    status = subprocess.run(
        [AGENTFLEET, "eval", "status", job_id, "--url", eval_url, "--wait", "60"],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    data = json.loads(status.stdout)
    assert data["status"] == "done", data
    assert data["reward"] > 0 and data["speedup"] > 1.5, data
    bad = subprocess.run(
        [AGENTFLEET, "eval", "status", "nope", "--url", eval_url],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0 and "no evaluation job 'nope'" in bad.stderr

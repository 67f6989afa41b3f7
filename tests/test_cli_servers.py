"""The servers run on their own (`serve-sandbox`, `serve-eval`) and the CLI uses them."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

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


@pytest.fixture
def servers(tmp_path: Path) -> Iterator[tuple[str, str]]:
    sp, ep = free_port(), free_port()
    sandbox_url, eval_url = f"http://127.0.0.1:{sp}", f"http://127.0.0.1:{ep}"
    procs = [
        subprocess.Popen(
            [AGENTFLEET, "serve-sandbox", "--port", str(sp), "--root", str(tmp_path / "sb")],
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
        yield sandbox_url, eval_url
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.communicate(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()


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

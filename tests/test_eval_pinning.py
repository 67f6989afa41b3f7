"""Pinned evaluation workers: disjoint CPU sets, commands pinned with taskset, /healthz.

Real subprocesses, a real sandbox service (process backend) and a real server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agentfleet.cli import app as cli_app
from agentfleet.evaluation import EvalRequest, EvalResult, create_app
from agentfleet.evaluation.pinning import (
    PIN_FAILED_EXIT,
    PinnedSandboxes,
    auto_workers,
    format_cpus,
    pin_command,
    plan_cpu_sets,
    worker_cpus,
)
from agentfleet.http import NO_RETRY, HttpPool
from agentfleet.sandbox import CreateSandbox, ProcessBackend, SandboxService
from agentfleet.serving import serve_in_loop

CPUS = sorted(os.sched_getaffinity(0))
ALLOWED = "grep Cpus_allowed_list /proc/self/status | cut -f2"


def test_plan_gives_disjoint_sets_or_none() -> None:
    assert plan_cpu_sets(2, 2, [0, 1, 2, 3]) == [(0, 1), (2, 3)]
    assert plan_cpu_sets(3, 1, [2, 5, 7, 9]) == [(2,), (5,), (7,)]
    assert plan_cpu_sets(3, 2, [0, 1, 2, 3]) is None  # does not fit: not pinned
    assert plan_cpu_sets(2, 0, [0, 1]) is None  # 0: never pinned
    assert auto_workers(1, [0, 1, 2, 3]) == 4
    assert auto_workers(3, [0, 1, 2, 3]) == 1
    assert auto_workers(8, [0, 1]) == 1
    with pytest.raises(ValueError):
        plan_cpu_sets(0, 1, [0])


def test_format_cpus() -> None:
    assert format_cpus([0]) == "0"
    assert format_cpus([3, 0, 1, 2, 6, 8, 9]) == "0-3,6,8-9"


def test_pinned_command_runs_on_its_cpus_only() -> None:
    cpu = CPUS[-1]
    out = subprocess.run(
        ["bash", "-c", pin_command(f"{ALLOWED}; bash -c '{ALLOWED}'", (cpu,))],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.split() == [str(cpu), str(cpu)]  # the command and its children
    assert pin_command("true", None) == "true"


def test_a_cpu_it_cannot_have_fails_the_command() -> None:
    out = subprocess.run(["bash", "-c", pin_command("echo ran", (4095,))], capture_output=True)
    assert out.returncode == PIN_FAILED_EXIT and b"ran" not in out.stdout
    assert b"cannot pin" in out.stderr


@pytest.fixture
async def service(tmp_path: Path) -> AsyncIterator[SandboxService]:
    async with SandboxService(ProcessBackend(root=tmp_path / "sb")) as svc:
        yield svc
        assert len(svc) == 0


class ProbeEvaluator:
    """Runs ``grep Cpus_allowed_list`` in a fresh perf-lite sandbox, as the real evaluator
    runs its commands (through :class:`PinnedSandboxes`), and reports it."""

    def __init__(self, service: SandboxService) -> None:
        self.sandboxes = PinnedSandboxes(service)

    async def evaluate(self, req: EvalRequest) -> EvalResult:
        info = await self.sandboxes.create(
            CreateSandbox(task_id="byte-stats", dataset="perf-lite", run="evaluation")
        )
        try:
            # the evaluator gathers its arms: a child task must keep the worker's CPUs
            res = await asyncio.create_task(self.sandboxes.exec(info.sandbox_id, ALLOWED))
        finally:
            await self.sandboxes.delete(info.sandbox_id)
        assert res.returncode == 0, res.output
        return EvalResult(
            reward=1.0,
            speedup=1.0,
            info={"allowed": res.output.strip(), "worker_cpus": worker_cpus.get()},
        )


@pytest.mark.skipif(len(CPUS) < 2, reason="needs 2 CPUs")
async def test_each_worker_times_on_its_own_cpu(service: SandboxService) -> None:
    app = create_app(ProbeEvaluator(service), workers=2, cores_per_worker=1)
    async with serve_in_loop(app) as srv, HttpPool(retry=NO_RETRY) as pool:
        health = (await pool.request("GET", f"{srv.url}/healthz")).json()
        assert [w["cpus"] for w in health["worker_slots"]] == [str(CPUS[0]), str(CPUS[1])]
        assert health["workers_busy"] == 0

        async def one(i: int) -> dict[str, Any]:
            body = {"exit_status": "Submitted", "result": "", "instance_id": f"t{i}"}
            r = await pool.request(
                "POST", f"{srv.url}/evaluations", json=body, headers={"Prefer": "wait=60"}
            )
            assert r.status == 200, r.text()
            return dict(r.json()["info"])

        infos = await asyncio.gather(*(one(i) for i in range(4)))
        metrics = (await pool.request("GET", f"{srv.url}/metrics")).text()
        health = (await pool.request("GET", f"{srv.url}/healthz")).json()
    for info in infos:
        assert info["allowed"] in (str(CPUS[0]), str(CPUS[1]))
        assert info["allowed"] == format_cpus(info["worker_cpus"])
    assert f'agentfleet_eval_worker_busy{{cpus="{CPUS[0]}",worker="0"}} 0.0' in metrics
    assert "agentfleet_eval_queue_wait_seconds_count 4.0" in metrics
    assert "agentfleet_eval_throughput_per_minute 4.0" in metrics
    assert health["throughput_per_minute"] == 4.0 and health["queue_wait_mean_s"] >= 0


async def test_workers_that_do_not_fit_run_unpinned() -> None:
    n = len(CPUS) + 1
    app = create_app(ProbeEvaluatorless(), workers=n, cores_per_worker=1)
    async with serve_in_loop(app) as srv, HttpPool(retry=NO_RETRY) as pool:
        health = (await pool.request("GET", f"{srv.url}/healthz")).json()
    assert health["workers"] == n
    assert [w["cpus"] for w in health["worker_slots"]] == [None] * n


class ProbeEvaluatorless:
    async def evaluate(self, req: EvalRequest) -> EvalResult:
        return EvalResult(reward=0.0, speedup=0.0, info={})


def test_serve_eval_workers_option(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: dict[str, Any] = {}
    monkeypatch.setattr("agentfleet.evaluation.server.run_server", lambda **kw: seen.update(kw))
    runner = CliRunner()
    assert runner.invoke(cli_app, ["serve-eval"]).exit_code == 0
    assert (seen["workers"], seen["cores_per_worker"]) == (None, 1)  # auto
    out = runner.invoke(cli_app, ["serve-eval", "--workers", "3", "--cores-per-worker", "2"])
    assert out.exit_code == 0, out.output
    assert (seen["workers"], seen["cores_per_worker"]) == (3, 2)
    out = runner.invoke(cli_app, ["serve-eval", "--workers", "0"])  # remote workers only
    assert out.exit_code == 0 and seen["workers"] == 0, out.output
    for bad in (["--workers", "-1"], ["--workers", "many"], ["--cores-per-worker", "-1"]):
        out = runner.invoke(cli_app, ["serve-eval", *bad], env={"COLUMNS": "200"})
        assert out.exit_code == 2, (bad, out.output)

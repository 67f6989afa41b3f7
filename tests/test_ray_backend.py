"""The Ray backend: a local Ray (one session for the module), fleets over 2 shards.

The tests are sync on purpose: Ray's blocking APIs are called outside any event loop, and
``run_fleet_ray`` runs its own loop (as the CLI does).
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import local_ray, sandbox_processes, sandboxes_running
from test_cli_servers import free_port, wait_healthy
from typer.testing import CliRunner

from agentfleet.agent import AgentConfig
from agentfleet.fleet.runner import FleetConfig, TaskOutcome, run_fleet
from agentfleet.models import SUBMIT_SENTINEL, ModelSpec
from agentfleet.models.offline import bash_reply
from agentfleet.sandbox import CreateSandbox, SandboxClient
from agentfleet.serving import run_async

try:
    import ray
except ImportError:  # pragma: no cover - depends on the install
    if os.environ.get("CI") == "true":
        raise  # CI installs the ray extra: a missing ray is a failure there
    ray = None  # type: ignore[assignment]

needs_ray = pytest.mark.skipif(
    ray is None, reason="ray is not installed (pip install 'agentfleet[ray]')"
)
# one local Ray at a time on this machine: the Ray tests share one xdist worker (loadgroup)
pytestmark = pytest.mark.xdist_group("ray")


def test_local_path_never_imports_ray() -> None:
    code = (
        "import sys, agentfleet.cli, agentfleet.fleet.runner, agentfleet.fleet.report; "
        "print(sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout
    assert out.strip() == "[]", out


@needs_ray
def test_shard_capacities_split_the_workers() -> None:
    from agentfleet.fleet.ray_backend import shard_capacities

    assert shard_capacities(8, 2) == [4, 4]
    assert shard_capacities(5, 2) == [3, 2]
    assert shard_capacities(1, 3) == [1, 1, 1]  # every shard runs at least one agent
    assert sum(shard_capacities(10, 3)) == 10


@pytest.fixture(scope="module")
def ray_session() -> Iterator[None]:
    with local_ray("agentfleet-tests"):
        yield


def config(tmp_path: Path, model: ModelSpec, tasks: list[str], **kw: Any) -> FleetConfig:
    return FleetConfig(
        model=model,
        run_dir=tmp_path / "run",
        task_ids=tasks,
        workers=kw.pop("workers", 4),
        agent=AgentConfig(step_limit=6),
        sandbox_root=tmp_path / "sandboxes",
        eval_repeats=kw.pop("eval_repeats", 2),
        **kw,
    )


def scripted(tmp_path: Path, *commands: str) -> ModelSpec:
    replies = [bash_reply("step", c) for c in commands]
    replies.append(bash_reply("done", f"echo {SUBMIT_SENTINEL}"))
    path = tmp_path / "replies.json"
    path.write_text(json.dumps({"replies": replies}))
    return ModelSpec(f"scripted:{path}")


def result_ids(cfg: FleetConfig) -> list[str]:
    lines = (cfg.run_dir / "results.jsonl").read_text().splitlines()
    return sorted(json.loads(line)["instance_id"] for line in lines)


def leftovers(root: Path) -> list[str]:
    return [p.name for p in root.iterdir()] if root.exists() else []


def actors_gone(names: list[str]) -> bool:
    for name in names:
        try:
            ray.get_actor(name)
        except ValueError:
            continue
        return False
    return True


@pytest.mark.slow
def test_oracle_fleet_on_two_shards(
    ray_session: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from agentfleet.fleet.ray_backend import run_fleet_ray

    caplog.set_level(logging.INFO, logger="agentfleet.fleet.ray")

    ids = ["dedupe-pairs", "rr-scheduler", "sku-diff"]
    cfg = config(tmp_path, ModelSpec("oracle"), ids)
    local_cfg = dataclasses.replace(
        cfg, run_dir=tmp_path / "local", sandbox_root=tmp_path / "local-sandboxes"
    )
    local = asyncio.run(run_fleet(local_cfg))  # the oracle: what the ray backend must match
    events: list[tuple[str, str]] = []
    names: list[str] = []
    outcomes = run_fleet_ray(
        cfg,
        shards=2,
        listener=lambda event, task, _: events.append((event, task.id)),
        actor_hook=lambda name, _: names.append(name),
    )
    assert [o.instance_id for o in outcomes] == [o.instance_id for o in local] == ids
    for o, lo in zip(outcomes, local, strict=True):  # the same results as the local backend
        assert (o.exit_status, o.info["status"]) == (lo.exit_status, lo.info["status"]), (o, lo)
        assert o.exit_status == "Submitted" and o.info["status"] == "ok", o
        assert o.reward > 0 and lo.reward > 0, (o, lo)
        assert o.speedup >= 1.5, o
    assert result_ids(cfg) == result_ids(local_cfg) == sorted(ids)  # every task exactly once
    eval_actor_cpus([{"info": o.info} for o in outcomes])  # timed by Ray evaluation actors
    assert all("worker" not in lo.info for lo in local)
    assert sorted(e for e in events if e[0] == "done") == sorted(("done", i) for i in ids)
    saved, local_saved = (
        json.loads((c.run_dir / "config.json").read_text()) for c in (cfg, local_cfg)
    )
    for key in ("model", "model_delay", "step_limit", "time_limit", "eval_repeats", "tasks"):
        assert saved[key] == local_saved[key], key  # the local backend's full config.json
    assert [i["tasks"] for i in saved["invocations"]] == [ids]
    traj = json.loads((cfg.run_dir / "trajectories" / "dedupe-pairs.traj.json").read_text())
    assert traj["info"]["exit_status"] == "Submitted"
    assert "diff --git" in traj["info"]["submission"]
    assert json.loads((cfg.run_dir / "config.json").read_text())["shards"] == 2
    assert len(names) == 2
    # each actor on asyncio's own loop (not Ray's default uvloop), as the local backend
    started = [r.getMessage() for r in caplog.records if r.getMessage().startswith("shard ")]
    assert len(started) == 2 and all("asyncio.unix_events loop" in m for m in started), started
    assert leftovers(tmp_path / "sandboxes") == []
    assert actors_gone(names)


@pytest.mark.slow
def test_killed_actor_tasks_rerun_elsewhere(ray_session: None, tmp_path: Path) -> None:
    from agentfleet.fleet.ray_backend import run_fleet_ray

    ids = ["dedupe-pairs", "rr-scheduler", "sku-diff", "byte-stats"]
    cfg = config(tmp_path, scripted(tmp_path, "sleep 4"), ids, eval_repeats=1)
    root = tmp_path / "sandboxes"
    handles: list[tuple[str, Any]] = []
    killed: list[str] = []

    def killer() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not sandboxes_running(root, "sleep"):
            time.sleep(0.1)
        if handles:
            name, handle = handles[0]
            ray.kill(handle)
            killed.append(name)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    outcomes: list[TaskOutcome] = run_fleet_ray(
        cfg, shards=2, actor_hook=lambda name, handle: handles.append((name, handle))
    )
    thread.join(timeout=10)
    assert killed == [handles[0][0]], "the first actor was never killed"
    assert len(handles) == 3  # two shards and one replacement
    assert [o.instance_id for o in outcomes] == ids
    for o in outcomes:
        assert o.exit_status == "Submitted", o
        assert o.info["status"] == "ok", o.info
    assert result_ids(cfg) == sorted(ids)  # each once, the interrupted ones included
    assert actors_gone([name for name, _ in handles])


def test_an_actor_that_never_starts_is_replaced_then_an_error(
    ray_session: None, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An actor Ray cannot place (here: a resource no node has) is killed and replaced after
    start_timeout_s; with no restart left the run is an error naming it, not a hang."""
    from agentfleet.fleet.ray_backend import run_fleet_ray

    cfg = config(tmp_path, ModelSpec("oracle"), ["dedupe-pairs"], workers=1)
    names: list[str] = []
    start = time.monotonic()
    with pytest.raises(RuntimeError, match=r"did not start in 2 s: is the cluster short"):
        run_fleet_ray(
            cfg,
            shards=1,
            eval_on="shards",
            actor_options={"resources": {"agentfleet-no-such-resource": 1}},
            max_actor_restarts=1,
            start_timeout_s=2,
            actor_hook=lambda name, _: names.append(name),
        )
    assert len(names) == 2  # the first and its replacement
    assert time.monotonic() - start < 60
    assert f"Ray actor {names[0]} did not start in 2 s: killed" in caplog.text
    assert actors_gone(names)


@pytest.mark.slow
def test_interrupt_stops_actors_and_sandboxes(ray_session: None, tmp_path: Path) -> None:
    from agentfleet.fleet.ray_backend import run_fleet_ray

    ids = ["dedupe-pairs", "sku-diff", "byte-stats"]
    cfg = config(tmp_path, scripted(tmp_path, "sleep 300"), ids)
    root = tmp_path / "sandboxes"
    names: list[str] = []

    def interrupt() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and sandboxes_running(root, "sleep") < 3:
            time.sleep(0.1)
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C: the main thread runs the driver

    thread = threading.Thread(target=interrupt, daemon=True)
    thread.start()
    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_fleet_ray(cfg, shards=2, actor_hook=lambda name, _: names.append(name))
    thread.join(timeout=10)
    assert time.monotonic() - start < 120
    assert leftovers(root) == []
    assert sandbox_processes(root) == {}
    assert actors_gone(names)
    assert not (cfg.run_dir / "results.jsonl").exists()


DRIVER = """
import json, sys
from pathlib import Path
from agentfleet.agent import AgentConfig
from agentfleet.fleet.ray_backend import run_fleet_ray
from agentfleet.fleet.runner import FleetConfig
from agentfleet.models import ModelSpec
from agentfleet.models.offline import bash_reply

tmp = Path(sys.argv[1])
(tmp / "r.json").write_text(json.dumps([bash_reply("wait", "sleep 300")]))
cfg = FleetConfig(
    model=ModelSpec(f"scripted:{tmp / 'r.json'}"), run_dir=tmp / "run",
    task_ids=["dedupe-pairs", "sku-diff", "byte-stats"], workers=3,
    agent=AgentConfig(step_limit=3), sandbox_root=tmp / "sandboxes", eval_repeats=1,
)
try:
    run_fleet_ray(cfg, shards=2, init_kwargs={"num_cpus": 2})
except KeyboardInterrupt:
    print("interrupted", file=sys.stderr)
    sys.exit(130)
"""


@needs_ray
@pytest.mark.slow
def test_ctrl_c_on_a_driver_that_started_ray(tmp_path: Path) -> None:
    """Ctrl-C in a terminal: SIGINT to the driver's whole process group (Ray's own too)."""
    root = tmp_path / "sandboxes"
    proc = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(tmp_path)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and sandboxes_running(root, "sleep") < 3:
            time.sleep(0.2)
        assert len(leftovers(root)) == 3, "the agents never started"
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err[-3000:]
    assert "interrupted" in err
    assert leftovers(root) == []
    assert sandbox_processes(root) == {}


# the CLI -------------------------------------------------------------------------------
AGENTFLEET = str(Path(sys.executable).with_name("agentfleet"))


def test_cli_ray_options_need_backend_ray(tmp_path: Path) -> None:
    from agentfleet.cli import app

    for extra in (["--shards", "2"], ["--ray-address", "auto"], ["--ray-eval", "actors"]):
        res = CliRunner().invoke(
            app, ["run", "--task", "sku-diff", "--run-dir", str(tmp_path / "r"), *extra]
        )
        assert res.exit_code == 2, res.output
        assert "need --backend ray" in res.output
    bad = {
        "actors or shards": ["--ray-eval", "nodes"],
        "not with --eval-url": ["--ray-eval", "actors", "--eval-url", "http://127.0.0.1:1"],
    }
    for message, extra in bad.items():
        base = ["run", "--backend", "ray", "--task", "sku-diff", "--run-dir", str(tmp_path / "r")]
        res = CliRunner().invoke(app, [*base, *extra])
        assert res.exit_code == 2 and message in res.output, res.output
    assert not (tmp_path / "r").exists()


def test_ray_eval_mode() -> None:
    from agentfleet.fleet.config import ray_eval_mode

    cfg = FleetConfig(model=ModelSpec("oracle"), run_dir=Path("r"))
    assert ray_eval_mode(None, cfg) == "actors"
    assert ray_eval_mode("shards", cfg) == "shards"
    images = dataclasses.replace(cfg, sandbox_backend="docker")
    assert ray_eval_mode(None, images) == "shards"  # the actors time in process sandboxes
    with pytest.raises(ValueError, match="image tasks"):
        ray_eval_mode("actors", images)
    given = dataclasses.replace(cfg, eval_url="http://127.0.0.1:1")
    assert ray_eval_mode(None, given) == "shards"  # (the shards submit to eval_url)
    with pytest.raises(ValueError, match="not with --eval-url"):
        ray_eval_mode("shards", given)


def eval_actor_cpus(records: list[dict[str, Any]]) -> list[str]:
    """The CPU set of the Ray evaluation actor that evaluated each record (asserted)."""
    out = []
    for r in records:
        worker = r["info"].get("worker") or {}
        assert worker.get("name", "").startswith("ray-eval-"), r["info"]
        out.append(worker["cpus"])
    return out


@pytest.mark.slow
def test_cli_ray_run_evaluates_on_ray_actors(ray_session: None, tmp_path: Path) -> None:
    """``run --backend ray`` (default ``--ray-eval actors``): every evaluation was leased
    and timed by a Ray evaluation actor pinned to one CPU, not by a shard's local workers."""
    from agentfleet.cli import app

    ids = ["dedupe-pairs", "sku-diff", "byte-stats"]
    run_dir = tmp_path / "run"
    args = ["run", "--backend", "ray", "--shards", "2", "--workers", "3", "--eval-repeats", "1"]
    args += [a for i in ids for a in ("--task", i)]
    args += ["--sandbox-root", str(tmp_path / "sandboxes"), "--progress", "none"]
    res = CliRunner().invoke(app, [*args, "--run-dir", str(run_dir)], env={"COLUMNS": "120"})
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert sorted(r["instance_id"] for r in records) == sorted(ids)
    for r in records:
        assert r["exit_status"] == "Submitted" and r["info"]["status"] == "ok", r
    cpus = eval_actor_cpus(records)
    usable = {str(c) for c in os.sched_getaffinity(0)}
    if len(usable) >= 2:  # one actor per CPU, each pinned to its own
        assert set(cpus) <= usable, cpus
    assert json.loads((run_dir / "config.json").read_text())["ray_eval"] == "actors"
    assert leftovers(tmp_path / "sandboxes") == []


@pytest.fixture
def two_sandbox_servers(tmp_path: Path) -> Iterator[list[tuple[str, Path]]]:
    """Two `agentfleet serve-sandbox` processes on 127.0.0.1: (url, root) each."""
    servers: list[tuple[str, Path]] = []
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for i in range(2):
            port, root = free_port(), tmp_path / f"sb{i}"
            procs.append(
                subprocess.Popen(
                    [AGENTFLEET, "serve-sandbox", "--port", str(port), "--root", str(root)],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            servers.append((f"http://127.0.0.1:{port}", root))
        for (url, _), proc in zip(servers, procs, strict=True):
            wait_healthy(url, proc)
        yield servers
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


@pytest.mark.slow
async def _labelled_sandboxes(url: str, runs: list[str]) -> list[str]:
    """A sandbox on ``url`` per run label (what a killed invocation leaves); their ids."""
    client = SandboxClient(url)
    return [(await client.create(CreateSandbox(run=run))).sandbox_id for run in runs]


def test_cli_ray_with_sandbox_urls_then_resume(
    ray_session: None,
    two_sandbox_servers: list[tuple[str, Path]],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    from agentfleet.cli import app
    from agentfleet.fleet.ray_backend import run_fleet_ray

    caplog.set_level(logging.INFO, logger="agentfleet.fleet.ray")
    (u1, root1), (u2, root2) = two_sandbox_servers
    ids = ["dedupe-pairs", "sku-diff"]
    run_dir = tmp_path / "run"
    cli = CliRunner()
    args = ["run", "--backend", "ray", "--shards", "2", "--workers", "2", "--eval-repeats", "1"]
    args += ["--task", ids[0], "--task", ids[1], "--sandbox-url", u1, "--sandbox-url", u2]
    args += ["--pool", "medium", "--progress", "none", "--run-dir", str(run_dir)]
    args += ["--ray-eval", "shards"]
    res = cli.invoke(app, args, env={"COLUMNS": "120"})
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert sorted(r["instance_id"] for r in records) == ids  # every task once
    for r in records:
        assert r["exit_status"] == "Submitted" and r["reward"] > 0, r
        assert "worker" not in r["info"], r  # --ray-eval shards: the shards' local workers
    started = [m for m in (r.getMessage() for r in caplog.records) if m.startswith("shard ")]
    assert len(started) == 2, started
    shard_evals = {m.split("evaluation ")[-1] for m in started}
    assert len(shard_evals) == 2, started  # an evaluation server per shard
    assert any(f"sandboxes {u1}," in m for m in started), started  # actor i: URL i mod 2
    assert any(f"sandboxes {u2}," in m for m in started), started
    assert all("pool 200/100" in m for m in started), started  # --pool reaches the actors
    assert leftovers(root1) == leftovers(root2) == []  # the servers' sandboxes are deleted
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["tasks"] == ids and saved["backend"] == "ray" and saved["shards"] == 2
    assert saved["eval_repeats"] == 1 and saved["step_limit"] == 30
    assert saved["ray_eval"] == "shards"

    # --resume: nothing left to run, config.json keeps the whole task list
    res = cli.invoke(
        app, ["run", "--resume", str(run_dir), "--backend", "ray", "--progress", "none"]
    )
    assert res.exit_code == 0, res.output
    assert "0 to run" in res.output
    assert len((run_dir / "results.jsonl").read_text().splitlines()) == 2
    assert json.loads((run_dir / "config.json").read_text())["tasks"] == ids

    # run_fleet_ray applies resume itself: only the task without a result runs, and the
    # sandboxes a killed invocation left on the run's servers are deleted (not others')
    kept = [line for line in (run_dir / "results.jsonl").read_text().splitlines() if ids[0] in line]
    (run_dir / "results.jsonl").write_text("\n".join(kept) + "\n")
    cfg = config(tmp_path, ModelSpec("oracle"), ids, eval_repeats=1, resume=True)
    _, other = run_async(_labelled_sandboxes(u1, [run_dir.name, "another-run"]))
    names: list[str] = []
    outcomes = run_fleet_ray(
        cfg, shards=2, sandbox_urls=[u1], actor_hook=lambda name, _: names.append(name)
    )
    assert [o.instance_id for o in outcomes] == [ids[1]]
    assert leftovers(root1) == [other]  # the killed invocation's is gone
    run_async(SandboxClient(u1).delete(other))
    assert result_ids(cfg) == ids
    saved = json.loads((run_dir / "config.json").read_text())
    assert saved["tasks"] == ids
    assert [i["tasks"] for i in saved["invocations"]] == [ids, [ids[1]]]
    assert len(names) == 2 and actors_gone(names)
    names.clear()
    run_async(_labelled_sandboxes(u1, [run_dir.name]))
    hook = lambda name, _: names.append(name)  # noqa: E731
    assert run_fleet_ray(cfg, shards=2, sandbox_urls=[u1], actor_hook=hook) == []
    assert names == []  # nothing to do: no actor started...
    assert leftovers(root1) == []  # ...and what a killed invocation left is deleted all the same


def test_actors_need_no_runtime_env_on_a_ray_started_here(
    ray_session: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The local Ray init_ray started has ACTOR_ENV in its workers' environment already (the
    shards' asyncio loop is checked in test_oracle_fleet_on_two_shards); on any other
    cluster the actors carry it."""
    from agentfleet import ray_setup

    assert ray_setup.actor_runtime_env() is None
    assert ray_setup.actor_runtime_env({"env_vars": {"A": "1"}}) == {"env_vars": {"A": "1"}}
    monkeypatch.setattr(ray_setup, "_PREPARED", set())  # as if started elsewhere
    assert ray_setup.actor_runtime_env() == {"env_vars": ray_setup.ACTOR_ENV}
    assert ray_setup.actor_runtime_env({"env_vars": {"RAY_USE_UVLOOP": "1"}, "x": 1}) == {
        "env_vars": {"RAY_USE_UVLOOP": "1"},
        "x": 1,
    }


def test_a_ray_started_here_listens_on_loopback_only(ray_session: None) -> None:
    """init_ray keeps a local Ray's node on 127.0.0.1 (Ray would turn it into the host's
    network address, imported before or not): every port its processes listen on, and the
    run's evaluation server (served on the node's address), is on loopback."""
    import psutil

    from agentfleet.fleet.ray_eval import eval_host

    assert eval_host() == "127.0.0.1"
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    listening = []
    for proc in psutil.Process().children(recursive=True):  # the GCS, the raylet, workers
        try:
            conns = proc.net_connections("inet")
            listening += [(proc.name(), c.laddr) for c in conns if c.status == psutil.CONN_LISTEN]
        except psutil.Error:  # gone meanwhile
            continue
    assert len({name for name, _ in listening}) >= 2, listening
    assert all(_loopback(addr.ip) for _, addr in listening), listening


def _loopback(ip: str) -> bool:
    addr = ipaddress.ip_address(ip)
    mapped = getattr(addr, "ipv4_mapped", None)  # ::ffff:127.0.0.1
    return (mapped or addr).is_loopback


def test_ray_tests_share_one_xdist_worker(request: pytest.FixtureRequest) -> None:
    """make test runs ``-n 2 --dist loadgroup`` so that two local Rays never run at once; under
    it this module's tests carry their group in their node id (pytest 9.2 lost it silently,
    pytest-xdist#1386: pyproject keeps pytest below 9.2)."""
    if not getattr(request.config.option, "loadgroup", False):
        pytest.skip("not under pytest-xdist's --dist loadgroup")
    assert request.node.nodeid.endswith("@ray"), request.node.nodeid

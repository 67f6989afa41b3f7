"""The bench commands at a tiny size: they run, print a well-formed table, write results."""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from agentfleet.bench.cli import bench_app
from agentfleet.bench.fleet_bench import thread_sample
from agentfleet.bench.http_bench import HttpCase, plot_sweep, sample_size

runner = CliRunner()


def _invoke(args: list[str]) -> str:
    result = runner.invoke(bench_app, args, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result.output


def _table_rows(output: str, header_start: str) -> list[list[str]]:
    lines = output.splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith(header_start))
    assert lines[start + 1].startswith("|--")
    rows = []
    for ln in lines[start + 2 :]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip("|").split("|")])
    return rows


def _results(out: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((out / "results.json").read_text())
    assert (out / "table.md").exists()
    return data


def test_bench_http_tiny(tmp_path: Path) -> None:
    out = tmp_path / "http"
    # max-seconds below blocking's 2 x 2 x 0.05 s: it runs 1 agent and is extrapolated
    output = _invoke(
        [
            "http",
            "--n",
            "2",
            "--rounds",
            "2",
            "--latency",
            "0.05",
            "--max-seconds",
            "0.15",
            "--out",
            str(out),
        ]
    )
    rows = _table_rows(output, "| pattern")
    patterns = ["blocking", "per-call", "threads", "agentfleet", "agentfleet-blocking"]
    assert [r[0] for r in rows] == patterns
    data = _results(out)
    assert data["kind"] == "http"
    by = {r["pattern"]: r for r in data["rows"]}
    assert set(by) == set(patterns)
    for r in data["rows"]:
        for key in (
            "wall_s",
            "ideal_s",
            "wall_over_ideal",
            "evals_per_s",
            "connections",
            "peak_in_flight",
            "errors",
            "client_cpu_s",
            "client_peak_rss_mib",
        ):
            assert key in r, key
        assert r["errors"] == 0, r
        assert r["ideal_s"] == pytest.approx(0.1)
    assert by["blocking"]["extrapolated"] and by["blocking"]["agents_run"] == 1
    assert "extrapolated" in by["blocking"]["note"]
    assert by["blocking"]["peak_in_flight"] == 1  # the loop stood still: one at a time
    assert by["per-call"]["connections"] == 4  # a connection per call (N x R)
    assert by["agentfleet"]["connections"] <= 2  # pooled: at most one per agent here
    assert by["agentfleet"]["pool_limits"] == {"limit": 100, "per_host": 50}


def test_bench_http_rejects_unknown(tmp_path: Path) -> None:
    result = runner.invoke(bench_app, ["http", "--scenario", "nope", "--out", str(tmp_path)])
    assert result.exit_code != 0


def test_bench_sandbox_tiny(tmp_path: Path) -> None:
    out = tmp_path / "sandbox"
    output = _invoke(
        [
            "sandbox",
            "--n",
            "2",
            "--seq",
            "5",
            "--sleep",
            "0.05",
            "--confine",
            "no",
            "--out",
            str(out),
        ]
    )
    rows = _table_rows(output, "| what")
    assert len(rows) == 4
    assert rows[0][0].startswith("process backend over HTTP")
    assert rows[1][0].startswith("null sandbox server")
    data = _results(out)
    assert data["kind"] == "sandbox"
    for r in data["rows"]:
        for key in ("concurrent_wall_s", "rtt_median_ms", "rtt_p95_ms", "concurrent_errors"):
            assert key in r, key
        assert r["concurrent_errors"] == 0


@pytest.mark.docker
def test_bench_sandbox_docker_tiny(tmp_path: Path) -> None:
    from conftest import docker_available, require_docker

    from agentfleet.bench.sandbox_bench import docker_problem

    problem = (
        docker_problem()
        if docker_available()
        else "no Docker engine here (.ci/run installs and starts one)"
    )
    if problem is not None:
        if require_docker():
            pytest.fail(f"AGENTFLEET_REQUIRE_DOCKER=1 but {problem}")
        pytest.skip(problem)
    out = tmp_path / "sandbox-docker"
    output = _invoke(
        [
            "sandbox",
            "--backend",
            "docker",
            "--n",
            "2",
            "--seq",
            "3",
            "--sleep",
            "0.05",
            "--out",
            str(out),
        ]
    )
    rows = _table_rows(output, "| what")
    names = [r[0] for r in rows]
    assert names[:3] == [
        "docker backend over HTTP",
        "bare docker exec (CLI)",
        "bare aiodocker exec",
    ]
    assert any(name.startswith("null sandbox server") for name in names)
    assert not any(name.startswith("process backend") for name in names)
    assert "skipped" not in output
    data = _results(out)
    docker_rows = [r for r in data["rows"] if r["backend"] in ("docker", "docker-cli", "aiodocker")]
    assert len(docker_rows) == 3
    for r in docker_rows:
        assert r["n"] == 2
        assert r["concurrent_errors"] == 0
        assert r["rtt_median_ms"] > 0
    # the bench's own container is gone (removed by id in its finally)
    ps = subprocess.run(
        ["docker", "ps", "-aq", "--filter", "ancestor=agentfleet-base:bookworm"],
        capture_output=True,
        text=True,
        check=False,
    )
    cids = [r["raw"].get("container") for r in docker_rows]
    assert not any(c and c[:12] in ps.stdout for c in cids)


def test_bench_sandbox_docker_skip_message(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without Docker, `--backend docker` prints why it skipped and still runs the rest."""
    from agentfleet.bench import sandbox_bench

    monkeypatch.setattr(sandbox_bench, "docker_problem", lambda: "no Docker engine (test)")
    output = _invoke(
        [
            "sandbox",
            "--backend",
            "docker",
            "--n",
            "2",
            "--seq",
            "3",
            "--sleep",
            "0.05",
            "--no-null",
            "--out",
            str(tmp_path / "skip"),
        ]
    )
    assert "docker: skipped -- no Docker engine (test)" in output
    names = [r[0] for r in _table_rows(output, "| what")]
    assert not any("docker" in name for name in names)


def test_bench_fleet_tiny(tmp_path: Path) -> None:
    out = tmp_path / "fleet"
    output = _invoke(
        [
            "fleet",
            "--n",
            "2",
            "--steps",
            "2",
            "--delay",
            "0.05",
            "--workers",
            "n,1",
            "--max-seconds",
            "0.15",
            "--sandbox",
            "null,process",
            "--confine",
            "no",
            "--out",
            str(out),
        ]
    )
    rows = _table_rows(output, "| runner")
    assert [(r[0], r[1]) for r in rows] == [
        ("agentfleet", "null"),
        ("threads W=2", "null"),
        ("threads W=1", "null"),
        ("agentfleet", "process"),
        ("threads W=2", "process"),
        ("threads W=1", "process"),
    ]
    data = _results(out)
    for r in data["rows"]:
        for key in ("wall_s", "ideal_s", "wall_over_ideal", "runner_peak_rss_mib", "setup_s"):
            assert key in r, key
        assert r["submitted"] == r["agents_run"], r
        assert r["ideal_s"] == pytest.approx(0.1)
    w1 = [r for r in data["rows"] if r["runner"] == "threads W=1"]
    assert all(r["extrapolated"] and r["agents_run"] == 1 for r in w1)


def test_sampling_rules() -> None:
    assert sample_size("agentfleet", HttpCase(1000, 1, 1.0, 60)) == 1000
    assert sample_size("blocking", HttpCase(50, 1, 1.0, 60)) == 50
    assert sample_size("blocking", HttpCase(200, 1, 1.0, 60)) == 60
    assert sample_size("blocking", HttpCase(200, 10, 1.0, 30)) == 3
    assert thread_sample(200, 10, 0.5, 200, 30) == 200
    assert thread_sample(200, 10, 0.5, 16, 30) == 96  # 6 waves of 16 fit in 30 s


def test_plot_sweep(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    rows = [
        {
            "pattern": p,
            "n": n,
            "rounds": 1,
            "latency_s": 1.0,
            "wall_over_ideal": w,
            "connections": c,
            "extrapolated": p == "blocking" and n > 10,
        }
        for p, w, c in (("blocking", 10.0, 10), ("agentfleet", 1.01, 5))
        for n in (10, 50)
    ]
    path = tmp_path / "plot.png"
    assert plot_sweep(rows, path) is None
    assert path.read_bytes()[:4] == b"\x89PNG"


def test_module_entry_point() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "agentfleet.bench", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    for cmd in ("http", "sandbox", "fleet", "eval"):
        assert cmd in proc.stdout


def _has_ray() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


@pytest.mark.slow
@pytest.mark.skipif(not _has_ray(), reason="ray is not installed (pip install 'agentfleet[ray]')")
@pytest.mark.xdist_group("ray")  # one local Ray at a time (see test_ray_backend)
def test_bench_fleet_ray_tiny(tmp_path: Path) -> None:
    out = tmp_path / "fleet-ray"
    output = _invoke(
        [
            "fleet",
            "--backend",
            "ray",
            "--n",
            "2",
            "--steps",
            "1",
            "--delay",
            "0.05",
            "--rounds",
            "1",
            "--out",
            str(out),
        ]
    )
    lines = output.splitlines()
    header = next(ln for ln in lines if ln.startswith("| backend"))
    assert [c.strip() for c in header.strip("|").split("|")] == [
        "backend",
        "tasks",
        "steps",
        "delay s",
        "wall median s",
        "walls s",
        "overhead s",
        "overhead %",
        "ray.init s",
        "actor start-up s",
    ]
    rows = _table_rows(output, "| backend")
    assert [r[0] for r in rows] == ["local", "ray (2 shards)"]
    assert [r[1:4] for r in rows] == [["2", "1", "0.05"]] * 2
    assert rows[0][6:] == ["-"] * 4  # overhead and Ray's times: the ray row only
    float(rows[1][6]), float(rows[1][7]), float(rows[1][9])
    data = _results(out)
    assert data["kind"] == "fleet" and data["backend"] == "ray"
    local, remote = data["rows"]
    for r in data["rows"]:
        assert len(r["walls_s"]) == 1 and r["wall_median_s"] > 0
        assert r["statuses"] == {"LimitsExceeded": 2} and r["unexpected"] == 0, r
    assert remote["overhead_s"] == pytest.approx(remote["wall_median_s"] - local["wall_median_s"])
    assert remote["actor_startup_s"] > 0
    assert "ray_version" in data


def test_bench_fleet_ray_without_ray(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    result = runner.invoke(
        bench_app, ["fleet", "--backend", "ray", "--n", "2", "--out", str(tmp_path / "x")]
    )
    assert result.exit_code == 2, result.output
    assert "pip install 'agentfleet[ray]'" in result.output
    assert not (tmp_path / "x").exists()


def test_bench_fleet_rejects_unknown_backend(tmp_path: Path) -> None:
    result = runner.invoke(bench_app, ["fleet", "--backend", "nope", "--out", str(tmp_path)])
    assert result.exit_code == 2


@pytest.mark.parametrize(
    ("args", "what"),
    [
        (["http", "--patterns", "agentfleet,threads", "--n", "1"], "threads pattern"),
        (["fleet", "--runners", "threads", "--n", "1"], "threads runner"),
    ],
)
def test_bench_needs_requests(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, args: list[str], what: str
) -> None:
    """No `requests` (a bench/dev extra): a clear hint up front, no child traceback."""
    monkeypatch.setitem(sys.modules, "requests", None)  # find_spec("requests") -> None
    result = runner.invoke(bench_app, [*args, "--out", str(tmp_path / "x")])
    assert result.exit_code == 2, result.output
    assert what in result.output and "pip install 'agentfleet[bench]'" in result.output
    assert "Traceback" not in result.output and not (tmp_path / "x").exists()


def test_peak_rss_is_the_childs_own() -> None:
    """A child's peak RSS is its own, not its parent's (ru_maxrss carries it over at exec)."""
    ballast = b"x" * (300 << 20)  # this process: > 300 MiB resident
    code = "from agentfleet.bench.common import peak_rss_mib; print(peak_rss_mib())"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert len(ballast) and float(out.stdout) < 200, out.stdout


def test_bench_servers_like_agentfleets() -> None:
    """asyncio loops by default, and a listening socket asyncio sets TCP_NODELAY on."""
    import socket

    from agentfleet.bench import common, fleet_bench, sandbox_bench

    for fn, name in (
        (common.sandbox_server, "loop"),
        (common.serve_app_announcing_port, "loop"),
        (fleet_bench.run_fleet_bench, "server_loop"),
        (sandbox_bench.run_sandbox_bench, "server_loop"),
    ):
        assert inspect.signature(fn).parameters[name].default == "asyncio", fn
    sock = common.bind_free_socket("127.0.0.1", 0)
    with sock:
        assert sock.proto == socket.IPPROTO_TCP


def test_eval_bench_plot() -> None:
    """``bench eval``'s SVG: one chart each for throughput, unchanged code and references,
    every arm labelled (with and without the hog); older JSON (``modes``) redraws too."""
    from agentfleet.bench.eval_bench import plot, plot_results

    arm = {"evals_per_min": 8.0, "noop_range": [0.97, 1.02], "ref_max_dev": 0.06}
    modes = [
        {**arm, "mode": "2r", "hog": False},
        {**arm, "mode": "2p", "hog": True, "evals_per_min": 6.0},
    ]
    svg = plot(modes, 40)
    assert svg.startswith("<svg") and svg.count("<svg") == 4
    for text in ("2 Ray actors", "2 pinned + hog", "40 evaluations", "over 5%"):
        assert text in svg, text
    assert plot_results({"n": 40, "modes": modes}) == svg
    assert plot_results({"config": {"n": 40}, "rows": modes}) == svg


@pytest.mark.slow
def test_eval_bench_arm_keeps_each_rounds_seconds() -> None:
    """One real arm (a fresh server, 1 worker): every evaluation's record keeps the kept
    rounds' seconds, so an estimator can be read again from ``results.json``."""
    from agentfleet.bench.eval_bench import requests, run_arm
    from agentfleet.evaluation.config import EvalConfig

    reqs = requests(2)  # reads the dataset: before the loop, as ``bench eval`` does
    row = asyncio.run(run_arm("1", reqs, EvalConfig(repeats=2, early_stop_rounds=None)))
    assert [e["label"].split(":")[0] for e in row["evaluations"]] == ["reference", "noop"]
    for e in row["evaluations"]:
        assert e["status"] == "ok" and e["rounds"] == 2, e
        assert len(e["baseline_s"]) == len(e["candidate_s"]) == 2 - len(e["dropped"])
        assert all(x > 0 for x in e["baseline_s"] + e["candidate_s"])
    assert row["noop_n"] == 1 and row["not_ok"] == 0


def test_eval_bench_spread() -> None:
    from agentfleet.bench.eval_bench import spread

    def ev(label: str, speedup: float, status: str = "ok", rounds: int = 5) -> dict[str, Any]:
        return {"label": label, "speedup": speedup, "status": status, "rounds": rounds}

    evals = [ev("noop:a", 1.02), ev("noop:b", 0.90), ev("noop:c", 0.0, "error")]
    evals += [ev("reference:a", 2.0), ev("reference:a", 2.2, rounds=20), ev("reference:a", 2.1)]
    evals += [ev("reference:b", 3.0)]  # alone: no median to stray from
    got = spread(evals)
    assert (got["noop_n"], got["noop_within_5pct"], got["noop_range"]) == (2, 1, [0.90, 1.02])
    assert (got["ref_n"], got["ref_within_5pct_of_median"]) == (3, 3)
    assert got["ref_max_dev"] == pytest.approx(0.1 / 2.1) and got["not_ok"] == 1
    assert got["rounds_mean"] == pytest.approx(50 / 7)  # every evaluation, 5 rounds but one


def test_cpu_noise_times_the_loop_in_fresh_interpreters() -> None:
    """The host's own spread, shown beside each eval arm: real child processes' CPU."""
    from agentfleet.bench.common import cpu_noise
    from agentfleet.bench.eval_bench import table

    got = cpu_noise(runs=3)
    assert got["runs"] == 3 and 0 <= got["within_5pct"] <= 3
    assert got["median_s"] > 0.005  # a million additions in a fresh interpreter
    assert got["cv"] >= 0.0
    row = {
        "mode": "1",
        "hog": False,
        "worker_cpus": [None],
        "wall_s": 1.0,
        "evals_per_min": 1.0,
        "noop_within_5pct": 1,
        "noop_n": 1,
        "noop_range": [1.0, 1.0],
        "ref_within_5pct_of_median": 0,
        "ref_n": 0,
        "not_ok": 0,
        "loadavg": [0.0, 0.0, 0.0],
        "host_noise": {**got, "cv": 0.125, "within_5pct": 2},
    }
    assert "| 12.5%, 2/3 " in table([row])

    def cells(r: dict[str, Any]) -> dict[str, str]:
        head, _, line = table([r]).splitlines()[:3]
        pairs = zip(head.split("|"), line.split("|"), strict=True)
        return {k.strip(): v.strip() for k, v in pairs}

    assert cells(row)["rounds (mean)"] == "-"  # a row of an older JSON
    assert cells({**row, "rounds_mean": 7.5})["rounds (mean)"] == "7.5"


def test_a_run_records_the_load_average_of_its_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from agentfleet.bench import cli

    load = [0.5, 0.5, 0.5]
    monkeypatch.setattr(os, "getloadavg", lambda: tuple(load))

    def measure() -> tuple[list[dict[str, Any]], dict[str, Any]]:
        load[:] = [7.0, 7.0, 7.0]  # the run loads the machine
        return [], {}

    _, run_dir = cli._run("probe", {}, measure, lambda rows: "table", tmp_path / "run")
    saved = json.loads((run_dir / "results.json").read_text())
    assert saved["machine"]["loadavg_at_start"] == [0.5, 0.5, 0.5]


def test_bench_eval_rejects_bad_input(tmp_path: Path) -> None:
    for args in (["--modes", "1,2x"], ["--modes", "0p"], ["--hog", "sometimes"]):
        result = runner.invoke(bench_app, ["eval", *args, "--out", str(tmp_path / "x")])
        assert result.exit_code == 2, result.output
    assert not (tmp_path / "x").exists()


@pytest.mark.slow
def test_bench_eval_tiny(tmp_path: Path) -> None:
    """Two real evaluations (a reference, unchanged code) with 1 worker and with 2 pinned:
    a table row per arm, the ratio line, results.json with sane figures, the plot."""
    out = tmp_path / "eval"
    output = _invoke(["eval", "--n", "2", "--modes", "1,2p", "--repeats", "2", "--out", str(out)])
    rows = _table_rows(output, "| mode")
    assert [r[:2] for r in rows] == [["1", "no"], ["2p", "no"]]
    assert "throughput ratio 2p / 1 (hog False): " in output
    data = _results(out)
    assert data["kind"] == "eval" and data["config"]["modes"] == ["1", "2p"]
    one, two = data["rows"]
    assert one["worker_cpus"] == [None] and one["pinned"] is False
    if len(os.sched_getaffinity(0)) >= 2:
        assert len(two["worker_cpus"]) == 2 and None not in two["worker_cpus"], two
    for arm in data["rows"]:
        assert arm["not_ok"] == 0, arm["evaluations"]
        assert arm["wall_s"] > 0 and arm["evals_per_min"] == pytest.approx(120 / arm["wall_s"])
        assert arm["noop_n"] == 1 and arm["ref_n"] == 0  # one reference: no median to stray from
        lo, hi = arm["noop_range"]
        assert 0.5 < lo <= hi < 2.0, arm  # unchanged code: about 1 (loose: a sanity check)
        refs = [e for e in arm["evaluations"] if e["label"].startswith("reference")]
        assert all(e["speedup"] > 1.0 and e["rounds"] == 2 for e in refs), refs
    [ratio] = data["ratios"]
    assert ratio["ratio"] == pytest.approx(two["evals_per_min"] / one["evals_per_min"])
    assert (out / "plot.svg").read_text().startswith("<svg")

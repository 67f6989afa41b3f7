"""``--agent mini`` and the run's limits: a cost limit ends the agent cleanly (as for
LightAgent), and the run's limits hold whatever the mini-swe-agent YAML sets."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import require_tool, served_in_thread

from agentfleet.models.mock_server import create_mock_llm_app


@pytest.fixture(autouse=True)
def _mini(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch) -> None:
    """Skip without mini-swe-agent (fail under CI=true); keep its start-up quiet and its
    global config out of the home folder."""
    require_tool(
        "minisweagent",
        "runs mini-swe-agent's own agent over agentfleet's environment",
        available=importlib.util.find_spec("minisweagent") is not None,
    )
    monkeypatch.setenv("MSWEA_SILENT_STARTUP", "1")
    monkeypatch.setenv("MSWEA_GLOBAL_CONFIG_DIR", str(tmp_path_factory.mktemp("mswea")))


def test_cost_limit_ends_a_mini_agent_cleanly(tmp_path: Path) -> None:
    """``--cost-limit 1`` at $1 a call: the agent ends after one call with
    CostLimitExceeded, recorded done (not failed: ``--rerun-failed`` would spend again),
    exit code 0, as LightAgent records it."""
    run_dir = tmp_path / "run"
    with served_in_thread(create_mock_llm_app(cost_per_call=1.0)) as url:
        args = [sys.executable, "-m", "agentfleet", "run", "--agent", "mini"]
        args += ["--model", "openai/mock-oracle", "--model-url", f"{url}/v1"]
        args += ["--cost-limit", "1", "-t", "dedupe-pairs", "--eval-repeats", "1"]
        args += ["--run-dir", str(run_dir), "--sandbox-root", str(tmp_path / "sb")]
        args += ["--progress", "none"]
        proc = subprocess.run(
            args, capture_output=True, text=True, timeout=300, cwd=tmp_path, env=dict(os.environ)
        )
    assert proc.returncode == 0, proc.stderr[-3000:]
    (record,) = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert record["exit_status"] == "CostLimitExceeded"
    assert record["error"] == "" and record["state"] == "done"
    assert record["steps"] == 1 and record["cost"] == 1.0  # the refused call is no step
    (path,) = (run_dir / "trajectories").glob("*.traj.json")
    last = json.loads(path.read_text())["messages"][-1]
    assert last["role"] == "exit" and "reaching its cost limit $1.0000" in last["content"]
    assert last["extra"]["exit_status"] == "CostLimitExceeded"
    assert "traceback" not in last["extra"]

"""What a resume carries over from the run it continues: the whole run's task list (a
resume's ``-t`` runs some tasks, it never narrows the run), the money its models spent
(``--run-cost-limit`` is for the whole run), and every invocation's wall time (an
interrupted one's too)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_run_experience import fake_config

from agentfleet.fleet.run import RunRequest, build_config, run
from agentfleet.fleet.rundir import RunDir

IDS = ["byte-stats", "rr-scheduler", "sku-diff"]


def _interrupted(tmp_path: Path) -> RunDir:
    """A run of IDS stopped after its first result."""
    run(fake_config(tmp_path, IDS))
    files = RunDir(tmp_path / "run")
    first = files.results.read_text().splitlines()[0]
    files.results.write_text(first + "\n")
    return files


def _resume(tmp_path: Path, **kw: object) -> RunRequest:
    return RunRequest(resume=tmp_path / "run", sandbox_root=tmp_path / "sandboxes", **kw)  # type: ignore[arg-type]


def test_a_resume_with_tasks_runs_them_and_keeps_the_rest_of_the_run(
    tmp_path: Path, fake_agents: list[str]
) -> None:
    files = _interrupted(tmp_path)
    order = files.read_config()["tasks"]
    assert sorted(order) == sorted(IDS)
    done = json.loads(files.results.read_text())["instance_id"]
    pick = next(i for i in order if i != done)
    fake_agents.clear()
    cfg, _ = build_config(_resume(tmp_path, tasks=[pick]))
    narrow = run(cfg)
    assert fake_agents == [pick]
    assert files.read_config()["tasks"] == order  # the run is still all three
    assert narrow.summary["tasks"] == 2  # every task of the run with a result
    fake_agents.clear()
    cfg, _ = build_config(_resume(tmp_path))  # a plain resume runs what is left
    whole = run(cfg)
    assert sorted(fake_agents) == sorted(set(IDS) - {done, pick})
    assert whole.summary["tasks"] == 3
    # a resume's -t may also add a task of the dataset: the run grows, never shrinks
    cfg, _ = build_config(_resume(tmp_path, tasks=["dedupe-pairs"]))
    run(cfg)
    assert files.read_config()["tasks"] == [*order, "dedupe-pairs"]


def test_a_resume_counts_what_the_run_spent_against_its_cost_limit(
    tmp_path: Path, fake_agents: list[str]
) -> None:
    files = _interrupted(tmp_path)
    lines = [json.loads(line) for line in files.results.read_text().splitlines()]
    lines[0]["cost"] = 3.0
    superseded = {**lines[0], "cost": 0.5}  # a task run twice: both were paid
    text = "".join(json.dumps(r) + "\n" for r in [superseded, *lines])
    files.results.write_text(text + json.dumps({"instance_id": "x", "cost": "NaN"}) + "\n")
    cfg, _ = build_config(_resume(tmp_path, run_cost_limit=4.0))
    assert cfg.budget is not None and cfg.budget.spent == pytest.approx(3.5)
    cfg, _ = build_config(_resume(tmp_path))  # no limit: no budget
    assert cfg.budget is None


def test_every_invocations_wall_time_counts(tmp_path: Path, fake_agents: list[str]) -> None:
    files = _interrupted(tmp_path)
    config = files.read_config()
    config["invocations"].append({"id": "stopped", "tasks": IDS, "wall_s": 7.25})
    files.config.write_text(json.dumps(config))  # an invocation stopped by a signal
    before = sum(i["wall_s"] for i in config["invocations"])
    cfg, _ = build_config(_resume(tmp_path))
    result = run(cfg)
    walls = [i["wall_s"] for i in files.read_config()["invocations"]]
    assert len(walls) == 3 and walls[2] > 0
    assert result.summary["wall_s"] == pytest.approx(before + walls[2])
    assert "legacy_wall_s" not in result.summary

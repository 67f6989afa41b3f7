"""preds.json in every run folder, and ``agentfleet eval preds``: any agent's predictions
evaluated as a run with no agent, with the same scores, summary and report."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from realbench import build_dataset
from typer.testing import CliRunner, Result

from agentfleet.cli import app
from agentfleet.evaluation.pass_rules import benchmark_summary
from agentfleet.fleet.preds import load_predictions
from agentfleet.fleet.rundir import RunDir


def cli(*args: str) -> Result:
    return CliRunner().invoke(app, list(args), env={"COLUMNS": "160"})


def _results(run_dir: Path) -> dict[str, dict]:
    lines = (run_dir / "results.jsonl").read_text().splitlines()
    return {r["instance_id"]: r for r in map(json.loads, lines)}


def test_run_writes_preds_and_eval_preds_gives_the_same_scores(tmp_path: Path) -> None:
    ds = tmp_path / "ds"
    ds.mkdir()
    build_dataset(ds)
    r1, r2 = tmp_path / "r1", tmp_path / "r2"
    out = cli("run", "--dataset", str(ds), "--model", "oracle", "--run-dir", str(r1),
              "--progress", "none", "--eval-repeats", "5")  # fmt: skip
    assert out.exit_code == 0, out.output
    assert re.search(r"gso: [01]/1 pass its rule", out.stdout), out.stdout
    preds = json.loads((r1 / "preds.json").read_text())
    assert set(preds) == {"gso-count", "swef-count", "perf-count"}
    for iid, p in preds.items():
        assert p["instance_id"] == iid and p["model_name_or_path"] == "oracle"
        assert p["model_patch"].startswith("diff --git a/prog.c b/prog.c")

    out = cli("eval", "preds", str(r1 / "preds.json"), "--dataset", str(ds),
              "--run-dir", str(r2), "--eval-repeats", "5")  # fmt: skip
    assert out.exit_code == 0, out.output
    # not a terminal: the plain progress, a line per evaluation ended, as `run` shows
    assert re.search(r"\[3/3\] done \S+: Submitted eval=ok", out.stderr), out.stderr
    first, second = _results(r1), _results(r2)
    assert set(first) == set(second)
    for iid in first:
        a, b = first[iid]["info"], second[iid]["info"]
        assert a["status"] == b["status"] == "ok"
        # the base-relative part of each rule holds; the gold-relative part compares the
        # gold with itself: the same files, timed once (a tie timed twice was noise)
        # the gold is about 1.5x here; GSO's own base mark (1.2) is the bound (1.37 seen at load 4)
        assert a["benchmark"]["speedup_base"] > 1.2 and b["benchmark"]["speedup_base"] > 1.2
        assert a["reference_is_candidate"] is b["reference_is_candidate"] is True
        assert a["benchmark"]["speedup_gold"] == pytest.approx(1.0)
        assert b["benchmark"]["speedup_gold"] == pytest.approx(1.0)
        # the same patch measured again: the same speedup, within the machine's noise
        assert b["benchmark"]["speedup_base"] == pytest.approx(
            a["benchmark"]["speedup_base"], rel=0.35
        )
    assert json.loads((r2 / "preds.json").read_text()) == preds
    summary = RunDir(r2).read_summary()
    assert summary["benchmarks"]["gso"]["pass_rate"] == 1.0, summary["benchmarks"]
    assert summary["benchmarks"]["swefficiency"]["hm_speedup_ratio"] == pytest.approx(1.0)
    out = cli("show", str(r2))
    assert out.exit_code == 0 and "swefficiency: 1/1 pass its rule" in out.stdout, out.stdout
    out = cli("report", str(r2))
    html = (r2 / "report.html").read_text()
    assert out.exit_code == 0 and '<ul id="benchmarks">' in html and "gso: pass (" in html
    # into a folder that holds a run: refused, the run untouched (its lines were appended
    # to and its config replaced, and the agent's run then could not be resumed)
    before = (r1 / "results.jsonl").read_text()
    out = cli("eval", "preds", str(r1 / "preds.json"), "--dataset", str(ds), "--run-dir", str(r1))
    assert out.exit_code == 2 and f"--run-dir {r1} holds a run already" in out.stderr, out.output
    assert (r1 / "results.jsonl").read_text() == before
    out = cli("run", "--resume", str(r2))  # eval preds' run: no agent to resume it with
    assert out.exit_code == 2 and "`agentfleet eval preds` made it" in out.stderr, out.output


def test_eval_preds_resume_evaluates_only_what_is_left(tmp_path: Path) -> None:
    """A run killed before its last result was written, continued with --resume: only that
    prediction is evaluated, the summary covers both; predictions that are not the run's,
    another dataset, or an agent's run are refused, the run untouched."""
    ids = ["byte-stats", "sku-diff"]
    preds = tmp_path / "preds.json"
    records = {
        i: {"instance_id": i, "model_name_or_path": "agent-x", "model_patch": ""} for i in ids
    }
    preds.write_text(json.dumps(records))
    run = tmp_path / "r"
    args = ("eval", "preds", str(preds), "-d", "perf-lite", "--eval-repeats", "1")
    out = cli(*args, "--run-dir", str(run))
    assert out.exit_code == 0, out.output
    kept, lost = (json.loads(line) for line in (run / "results.jsonl").read_text().splitlines())
    (run / "results.jsonl").write_text(json.dumps(kept) + "\n")
    written = RunDir(run).read_preds()
    del written[lost["instance_id"]]
    (run / "preds.json").write_text(json.dumps(written))

    out = cli("eval", "preds", str(preds), "--resume", str(run))  # its dataset kept
    assert out.exit_code == 0, out.output
    assert "1 done, 0 failed" in out.stdout and "evaluating 1 predictions" in out.stdout
    assert set(_results(run)) == set(ids) and _results(run)[kept["instance_id"]] == kept
    assert RunDir(run).read_summary()["tasks"] == 2
    assert set(RunDir(run).read_preds()) == set(ids)
    config = RunDir(run).read_config()
    assert config["eval_repeats"] == 1 and [i["resume"] for i in config["invocations"]] == [
        False,
        True,
    ]

    before = (run / "results.jsonl").read_text()
    other = tmp_path / "other.json"
    records["byte-stats"]["model_patch"] = "diff --git a/x b/x\n"
    other.write_text(json.dumps(records))
    out = cli("eval", "preds", str(other), "--resume", str(run))
    assert out.exit_code == 2 and "patch of 1 evaluated task(s) differs" in out.stderr
    other.write_text(json.dumps({"sku-diff": records["sku-diff"]}))
    out = cli("eval", "preds", str(other), "--resume", str(run))
    assert out.exit_code == 2 and "none for 1 of its tasks (byte-stats)" in out.stderr
    out = cli("eval", "preds", str(preds), "--resume", str(run), "-d", "gso-mini")
    assert out.exit_code == 2 and "evaluated dataset 'perf-lite'" in out.stderr, out.output
    out = cli("eval", "preds", str(preds), "--rerun-failed")
    assert out.exit_code == 2 and "--rerun-failed needs --resume" in out.stderr
    out = cli("eval", "preds", str(preds), "--run-dir", str(run))
    assert out.exit_code == 2 and f"continue it with --resume {run}" in out.stderr
    agent_run = tmp_path / "agent"
    agent_run.mkdir()
    (agent_run / "config.json").write_text(json.dumps({"model": "oracle", "tasks": ids}))
    out = cli("eval", "preds", str(preds), "--resume", str(agent_run))
    assert out.exit_code == 2 and "`agentfleet run` made it" in out.stderr
    assert (run / "results.jsonl").read_text() == before


def test_eval_preds_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    out = cli("eval", "preds", str(bad))
    assert out.exit_code == 2 and "bad.json: not JSON" in out.stderr
    unknown = tmp_path / "unknown.json"
    unknown.write_text(json.dumps([{"instance_id": "nope", "model_patch": ""}]))
    out = cli("eval", "preds", str(unknown), "--run-dir", str(tmp_path / "r"))
    assert out.exit_code == 2 and "nope" in out.stderr


def test_load_predictions_shapes_and_errors(tmp_path: Path) -> None:
    rec = {"instance_id": "a", "model_name_or_path": "m", "model_patch": "diff"}
    as_dict, as_list, as_jsonl = tmp_path / "p.json", tmp_path / "l.json", tmp_path / "p.jsonl"
    as_dict.write_text(json.dumps({"a": rec}))
    as_list.write_text(json.dumps([rec, {**rec, "instance_id": "b", "model_patch": None}]))
    as_jsonl.write_text(json.dumps(rec) + "\n\n")
    assert load_predictions(as_dict)["a"].patch == "diff"
    assert load_predictions(as_list)["b"].patch is None
    assert load_predictions(as_jsonl)["a"].model == "m"
    for content, message in [
        (json.dumps([rec, rec]), "predicted twice"),
        (json.dumps([{"model_patch": ""}]), "no instance_id"),
        (json.dumps([{"instance_id": "a", "model_patch": 3}]), "must be a string or null"),
        (json.dumps({}), "no predictions"),
        ("3", "expected an object or a list"),
    ]:
        as_list.write_text(content)
        with pytest.raises(ValueError, match=message):
            load_predictions(as_list)


def test_benchmark_summary_counts_failed_verdicts() -> None:
    infos = [
        {"benchmark": {"benchmark": "gso", "passed": True, "speedup_base": 2.0,
                       "speedup_gold": 1.0}},
        {"benchmark": {"benchmark": "gso", "passed": False, "speedup_base": None}},
        {"status": "ok"},  # a perf-lite task: no verdict
    ]  # fmt: skip
    s = benchmark_summary(infos)
    assert s == {
        "gso": {
            "n": 2,
            "passed": 1,
            "pass_rate": 0.5,
            "geomean_speedup_base": 2.0,
            "geomean_speedup_gold": 1.0,
        }
    }

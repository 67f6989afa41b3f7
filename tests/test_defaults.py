"""One default per setting (docs/architecture.md): every place that defaults a setting reads
it from the setting's one constant.

The check changes the constants in a fresh interpreter before anything else imports them,
then reads back each default (schemas, dataclasses, signatures, CLI options):
a default written again as a literal keeps the old value and is named in the failure.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

PROBE = textwrap.dedent(
    """
    import dataclasses, inspect, json
    import agentfleet.tasks.defaults as td
    td.DEFAULT_DATASET, td.DEFAULT_SPLIT = "ds-x", "split-x"
    td.MIN_REFERENCE_SPEEDUP, td.BASELINE_RANGE_S = 7.5, (0.25, 9.0)
    td.DEFAULT_EVAL_REPEATS, td.DEFAULT_EVAL_PORT = 13, 19528
    import agentfleet.sandbox.base as sb
    sb.DEFAULT_MAX_SANDBOXES, sb.DEFAULT_REAP_INTERVAL_S = 77, 11.0
    sb.DEFAULT_TTL_S = 1234.0

    import typer
    from agentfleet.cli import app
    from agentfleet.evaluation import server as eval_server, speedup
    from agentfleet.evaluation.config import EvalConfig
    from agentfleet.evaluation.schema import EvalRequest
    from agentfleet.fleet import check
    from agentfleet.fleet.run import RESUMABLE
    from agentfleet.fleet.runner import FleetConfig
    from agentfleet.models.mock_server import MockConfig, create_mock_llm_app
    from agentfleet.sandbox.base import CreateSandbox
    from agentfleet.sandbox.cli import serve_settings
    from agentfleet.sandbox.service import SandboxService
    from agentfleet.tasks.model import Task

    def arg(fn, name):
        return inspect.signature(fn).parameters[name].default

    fields = {f.name: f.default for f in dataclasses.fields(FleetConfig)}
    plain_task = Task(id="t", dataset="d", prompt="p", test_cmd="t", workload_cmd="w", task_dir=".")
    root = typer.main.get_command(app)

    def param(path, name):
        cmd = root
        for part in path.split():
            cmd = cmd.commands[part]
        return next(p for p in cmd.params if p.name == name)

    def option(path, name):
        return param(path, name).default

    def help_default(path, name):  # the value of the option help's [default: ...]
        return param(path, name).help.rpartition("[default: ")[2].rstrip("]")

    out = {
        "dataset": {
            "EvalRequest": EvalRequest.model_fields["dataset_name"].default,
            "CreateSandbox": CreateSandbox.model_fields["dataset"].default,
            "FleetConfig": fields["dataset"],
            "RESUMABLE": RESUMABLE["dataset"],
            "MockConfig": MockConfig.dataset,
            "create_mock_llm_app": arg(create_mock_llm_app, "dataset"),
            "tasks list": option("tasks list", "dataset"),
            "tasks show": option("tasks show", "dataset"),
            "tasks check": option("tasks check", "dataset"),
            "eval submit": option("eval submit", "dataset"),
            "mock-llm": option("mock-llm", "dataset"),
            "run --help": help_default("run", "dataset"),
        },
        "split": {
            "EvalRequest": EvalRequest.model_fields["split"].default,
            "FleetConfig": fields["split"],
            "RESUMABLE": RESUMABLE["split"],
            "eval submit": option("eval submit", "split"),
            "run --help": help_default("run", "split"),
        },
        "eval_repeats": {
            "check_tasks": arg(check.check_tasks, "repeats"),
            "tasks check": option("tasks check", "repeats"),
            "run --help": int(help_default("run", "eval_repeats")),
            "EvalConfig.protocol": EvalConfig().protocol(plain_task).repeats,
            "speedup.measure": arg(speedup.measure, "repeats"),
        },
        # unset: each task's own protocol (a real benchmark's), else the default above
        "eval_repeats_unset": {
            "FleetConfig": fields["eval_repeats"],
            "RESUMABLE": RESUMABLE["eval_repeats"],
            "serve-eval": option("serve-eval", "repeats"),
            "run": option("run", "eval_repeats"),
            "eval preds": option("eval preds", "eval_repeats"),
            "EvalConfig": EvalConfig().repeats,
        },
        "eval_port": {
            "serve-eval": option("serve-eval", "port"),
            "server.DEFAULT_PORT": eval_server.DEFAULT_PORT,
            "run_server": arg(eval_server.run_server, "port"),
            "eval status --url": int(option("eval status", "url").rpartition(":")[2]),
        },
        "sandbox_ttl": {
            "FleetConfig": fields["sandbox_ttl_s"],
            "serve-sandbox": option("serve-sandbox", "ttl"),
        },
        "min_speedup": {
            "problems": arg(check.problems, "min_speedup"),
            "check_tasks": arg(check.check_tasks, "min_speedup"),
            "tasks check": option("tasks check", "min_speedup"),
        },
        "baseline_range": {
            "problems": list(arg(check.problems, "baseline_range")),
            "check_tasks": list(arg(check.check_tasks, "baseline_range")),
            "tasks check": [float(x) for x in option("tasks check", "baseline_range").split(",")],
        },
        "max_sandboxes": {
            "SandboxService": arg(SandboxService, "max_sandboxes"),
            "serve_settings": arg(serve_settings, "max_sandboxes"),
            "serve-sandbox": option("serve-sandbox", "max_sandboxes"),
        },
        "reap_interval": {
            "SandboxService": arg(SandboxService, "reap_period_s"),
            "serve_settings": arg(serve_settings, "reap_interval"),
            "serve-sandbox": option("serve-sandbox", "reap_interval"),
        },
    }
    print(json.dumps(out))
    """
)

EXPECTED = {
    "dataset": "ds-x",
    "split": "split-x",
    "min_speedup": 7.5,
    "baseline_range": [0.25, 9.0],
    "max_sandboxes": 77,
    "reap_interval": 11.0,
    "eval_repeats": 13,
    "eval_repeats_unset": None,
    "eval_port": 19528,
    "sandbox_ttl": 1234.0,
}


def test_every_default_reads_its_one_constant() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    seen = json.loads(proc.stdout)
    assert set(seen) == set(EXPECTED)
    stale = {
        f"{setting}: {place}": value
        for setting, places in seen.items()
        for place, value in places.items()
        if value != EXPECTED[setting]
    }
    assert not stale, f"defaults written again instead of read from their constant: {stale}"


def test_tasks_defaults_load_no_task_loader() -> None:
    """The client-side schemas read DEFAULT_DATASET from ``agentfleet.tasks``: that loads
    neither the task loader nor a YAML parser."""
    code = (
        "import json, sys\nfrom agentfleet.tasks import DEFAULT_DATASET\n"
        "print(json.dumps(sorted(sys.modules)))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    loaded = set(json.loads(proc.stdout))
    assert "agentfleet.tasks.defaults" in loaded
    assert not {"agentfleet.tasks.task", "yaml"} & loaded

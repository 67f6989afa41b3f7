"""LightAgent against a real shell in a temporary folder, and against a sandbox service."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from blockbuster import BlockingError

from agentfleet.agent import AgentConfig, LightAgent, parse_action
from agentfleet.models import SUBMIT_SENTINEL, LimitReached, ModelError, ModelReply, ScriptedModel
from agentfleet.models.base import ModelStats
from agentfleet.models.offline import bash_reply
from agentfleet.sandbox import ProcessBackend, RemoteDockerEnvironment, SandboxService
from agentfleet.sandbox.base import DEFAULT_EXEC_TIMEOUT, ExecResult
from agentfleet.tasks import Task


class ShellEnv:
    """Runs commands with bash in a folder: the smallest real environment."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.commands: list[str] = []

    async def aexecute(
        self, command: str, cwd: str = "", timeout: float | None = None
    ) -> ExecResult:
        self.commands.append(command)
        proc = await asyncio.create_subprocess_exec(
            "bash",
            "-c",
            command,
            cwd=self.root,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
        )
        out, _ = await proc.communicate()
        assert proc.returncode is not None
        return ExecResult(output=out.decode(), returncode=proc.returncode)


def make_task(tmp_path: Path) -> Task:
    return Task(
        id="t1",
        dataset="mini",
        prompt="Make it fast.",
        test_cmd="true",
        workload_cmd="true",
        task_dir=tmp_path,
    )


def test_parse_action_counts_blocks() -> None:
    assert parse_action("x\n```bash\nls\n```\n") == ["ls"]
    assert parse_action("no block") == []
    assert len(parse_action("```bash\na\n```\n```bash\nb\n```")) == 2


async def test_agent_runs_commands_and_submits(tmp_path: Path) -> None:
    env = ShellEnv(tmp_path)
    model = ScriptedModel(
        [
            bash_reply("write", "echo hello > out.txt && cat out.txt"),
            bash_reply("submit", f"echo {SUBMIT_SENTINEL}"),
        ]
    )
    result = await LightAgent(model, env, make_task(tmp_path), AgentConfig()).run()
    assert result.exit_status == "Submitted"
    assert result.steps == 2
    assert (tmp_path / "out.txt").read_text() == "hello\n"
    observation = result.messages[3]["content"]
    assert "<returncode>0</returncode>" in observation and "hello" in observation
    assert "Make it fast." in result.messages[1]["content"]


async def test_format_error_is_fed_back(tmp_path: Path) -> None:
    model = ScriptedModel(["I forgot the block", bash_reply("ok", f"echo {SUBMIT_SENTINEL}")])
    result = await LightAgent(model, ShellEnv(tmp_path), make_task(tmp_path), AgentConfig()).run()
    assert result.exit_status == "Submitted"
    assert "exactly one" in result.messages[3]["content"]


async def test_step_limit(tmp_path: Path) -> None:
    model = ScriptedModel([bash_reply("loop", "true")] * 5)
    cfg = AgentConfig(step_limit=3)
    result = await LightAgent(model, ShellEnv(tmp_path), make_task(tmp_path), cfg).run()
    assert result.exit_status == "LimitsExceeded"
    assert result.steps == 3


async def test_time_limit(tmp_path: Path) -> None:
    model = ScriptedModel([bash_reply("slow", "true")] * 50, delay_s=0.2)
    cfg = AgentConfig(time_limit_s=0.5)
    result = await LightAgent(model, ShellEnv(tmp_path), make_task(tmp_path), cfg).run()
    assert result.exit_status == "TimeLimitExceeded"


async def test_model_error_ends_agent_with_its_status(tmp_path: Path) -> None:
    model = ScriptedModel([bash_reply("one", "true")])
    result = await LightAgent(model, ShellEnv(tmp_path), make_task(tmp_path), AgentConfig()).run()
    assert result.exit_status == "OutOfReplies"
    assert "ran out" in result.error


def test_scripted_yaml(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("replies:\n  - one\n  - two\n")
    assert ScriptedModel.from_yaml(path).replies == ["one", "two"]
    path.write_text("{a: 1}\n")
    with pytest.raises(ValueError):
        ScriptedModel.from_yaml(path)


def test_agent_config_overrides_templates(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("step_limit: 7\ninstance_template: 'DO {{ task.id }}'\n")
    cfg = AgentConfig.from_yaml(path)
    assert cfg.step_limit == 7
    assert cfg.templates["instance_template"] == "DO {{ task.id }}"
    assert "system_template" in cfg.templates
    assert isinstance(ModelError("x"), Exception)


def test_agent_config_limits_from_yaml_and_overrides(tmp_path: Path) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text("step_limit: 7\ncost_limit: 0.5\nrun_cost_limit: 20\ntime_limit_s: 60\n")
    cfg = AgentConfig.from_yaml(path, step_limit=None, cost_limit=0.25)
    assert (cfg.step_limit, cfg.time_limit_s) == (7, 60.0)
    assert (cfg.cost_limit, cfg.run_cost_limit) == (0.25, 20.0)  # the flag wins
    assert AgentConfig.from_yaml().cost_limit is None


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("step_limt: 3\ncost: 1\n", "unknown agent setting(s) cost, step_limt"),
        ("- a list\n", "expected a mapping"),
        ("step_limit: [\n", "not valid YAML"),
        ("step_limit: many\n", "step_limit must be a number"),
        ("cost_limit: -1\n", "cost_limit must be a non-negative number"),
        ("templates: {}\n", "unknown agent setting(s) templates"),
    ],
)
def test_agent_config_rejects_bad_yaml(tmp_path: Path, text: str, needle: str) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as info:
        AgentConfig.from_yaml(path)
    assert needle in str(info.value) and str(path) in str(info.value)


class PricedModel:
    """Costs ``cost`` per reply; refuses (like OpenAIChatModel) once ``limit`` is spent."""

    name = "priced"

    def __init__(self, cost: float, limit: float) -> None:
        self.cost, self.limit = cost, limit
        self.stats = ModelStats()

    async def query(self, messages: list[dict[str, str]]) -> ModelReply:
        if self.stats.cost >= self.limit:
            raise LimitReached(f"spent ${self.stats.cost:.2f}", "CostLimitExceeded")
        reply = ModelReply(bash_reply("step", "true"), cost=self.cost)
        self.stats.add(reply)
        return reply


async def test_cost_limit_ends_the_agent_cleanly(tmp_path: Path) -> None:
    model = PricedModel(cost=0.4, limit=1.0)
    result = await LightAgent(model, ShellEnv(tmp_path), make_task(tmp_path), AgentConfig()).run()
    assert result.exit_status == "CostLimitExceeded"
    assert result.steps == 3 and result.error == ""  # a clean end, not a failure
    assert "CostLimitExceeded" in result.messages[-1]["content"]


# -- the sandbox environment: typed results for the agent, mini-swe-agent's dict for sync --

BIG_OUTPUT = "head -c 5000 /dev/zero | tr '\\0' x"  # 5000 characters, over the cap below


def small_service(root: Path) -> SandboxService:
    """A real in-process sandbox service (unconfined: needs no bubblewrap), output cap 1000."""
    return SandboxService(ProcessBackend(root, confine=False), output_limit=1000, reap_period_s=0)


def test_command_timeout_default_is_the_sandboxes() -> None:
    assert AgentConfig().command_timeout_s == DEFAULT_EXEC_TIMEOUT


async def test_agent_is_told_of_timeouts_and_truncation(tmp_path: Path) -> None:
    model = ScriptedModel(
        [
            bash_reply("slow", "echo start; sleep 5"),
            bash_reply("big", BIG_OUTPUT),
            bash_reply("done", f"echo {SUBMIT_SENTINEL}"),
        ]
    )
    cfg = AgentConfig(command_timeout_s=0.5)
    async with small_service(tmp_path / "sb") as service:
        async with await RemoteDockerEnvironment.acreate(sandboxes=service) as env:
            result = await LightAgent(model, env, make_task(tmp_path), cfg).run()
            typed = await env.aexecute("echo typed", timeout=5)
    assert result.exit_status == "Submitted"
    slow, big = result.messages[3]["content"], result.messages[5]["content"]
    assert "timed out" in slow and "too long" not in slow and "start" in slow
    assert "too long" in big and "timed out" not in big
    assert "<returncode>0</returncode>" in big and "xxxx" in big
    assert isinstance(typed, ExecResult)
    assert (typed.output, typed.returncode, typed.timed_out, typed.truncated) == (
        "typed\n",
        0,
        False,
        False,
    )
    assert typed.duration_s > 0 and env.last_result == typed


def test_sync_execute_returns_minisweagent_v1_dict(tmp_path: Path) -> None:
    """mini-swe-agent 1.x's ``execute(command, cwd="", *, timeout=None) -> dict``, no loop."""
    service = small_service(tmp_path / "sb")
    with RemoteDockerEnvironment.create_for_task(sandboxes=service, timeout=30) as env:
        env.write_file("sub/f.txt", "hi")
        ran = env.execute("cat f.txt; exit 3", "sub")
        slow = env.execute("sleep 5", timeout=0.5)
        big = env.execute(BIG_OUTPUT)
        typed = env.last_result
    assert ran == {"output": "hi", "returncode": 3, "timed_out": False, "truncated": False}
    assert set(slow) == set(ran) and slow["timed_out"] and not slow["truncated"]
    assert big["truncated"] and not big["timed_out"] and big["returncode"] == 0
    assert isinstance(typed, ExecResult) and typed.output == big["output"]
    assert service.list() == []  # the environment owned its sandbox: deleted


# -- blockbuster canaries: the guard really is on ------------------------------------


class BlockingEnv:
    """An environment that blocks the event loop (what agentfleet code must never do)."""

    async def aexecute(
        self, command: str, cwd: str = "", timeout: float | None = None
    ) -> ExecResult:
        time.sleep(0.01)  # noqa: ASYNC251 - on purpose: the canary
        return ExecResult(output="", returncode=0)


async def _blocked_run(tmp_path: Path) -> str:
    model = ScriptedModel([bash_reply("x", "true")])
    try:
        await LightAgent(model, BlockingEnv(), make_task(tmp_path), AgentConfig()).run()
    except BlockingError as exc:
        return str(exc)
    return "not blocked"


async def test_blockbuster_refuses_a_blocking_call_in_the_loop(tmp_path: Path) -> None:
    assert "time.sleep" in await _blocked_run(tmp_path)


@pytest.fixture(scope="module")
def blocked_in_module_fixture(tmp_path_factory: pytest.TempPathFactory) -> str:
    return asyncio.run(_blocked_run(tmp_path_factory.mktemp("canary")))


def test_blockbuster_guards_module_scoped_fixtures(blocked_in_module_fixture: str) -> None:
    assert "time.sleep" in blocked_in_module_fixture

"""Offline models: ``oracle`` applies the task's reference patch; ``scripted`` replays replies."""

from __future__ import annotations

import asyncio
from pathlib import Path

from agentfleet.models.base import Message, ModelError, ModelReply, ModelStats
from agentfleet.tasks import Task
from agentfleet.tasks.yamlfile import read_yaml

SUBMIT_SENTINEL = "COMPLETE_TASK_AND_SUBMIT_FINAL_OUTPUT"
_HEREDOC = "AGENTFLEET_PATCH_EOF"


def bash_reply(thought: str, command: str) -> str:
    return f"THOUGHT: {thought}\n\n```bash\n{command}\n```"


def oracle_replies(task: Task) -> list[str]:
    """The replies of a perfect agent: apply the reference patch, run the tests, submit."""
    patch = task.solution_patch
    if not patch:
        raise ModelError(f"task {task.id!r} has no solution.patch", "NoReferenceSolution")
    if not patch.endswith("\n"):
        patch += "\n"
    return [
        bash_reply(
            "I apply the known fix for the slow spot.",
            f"git apply --whitespace=nowarn - <<'{_HEREDOC}'\n{patch}{_HEREDOC}\n"
            "git status --short",
        ),
        bash_reply("I check the tests still pass.", task.test_cmd),
        bash_reply("The change is done; I submit it.", f"echo {SUBMIT_SENTINEL}"),
    ]


class ScriptedModel:
    """Replays a fixed list of replies, one per query; optional delay per reply."""

    def __init__(self, replies: list[str], *, delay_s: float = 0.0, name: str = "scripted"):
        if not replies:
            raise ValueError("a scripted model needs at least one reply")
        self.name = name
        self.replies = list(replies)
        self.delay_s = delay_s
        self.stats = ModelStats()

    @classmethod
    def from_yaml(cls, path: str | Path, *, delay_s: float = 0.0) -> ScriptedModel:
        data = read_yaml(path)  # YamlFileError (a ValueError) names the file
        replies = data.get("replies") if isinstance(data, dict) else data
        if not isinstance(replies, list) or not all(isinstance(r, str) for r in replies):
            raise ValueError(f"{path}: expected a list of reply strings (or {{replies: [...]}})")
        return cls(replies, delay_s=delay_s, name=f"scripted:{Path(path).name}")

    async def query(self, messages: list[Message]) -> ModelReply:
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        index = self.stats.calls
        if index >= len(self.replies):
            raise ModelError("scripted model ran out of replies", "OutOfReplies")
        reply = ModelReply(self.replies[index])
        self.stats.add(reply)
        return reply


class OracleModel(ScriptedModel):
    def __init__(self, task: Task, *, delay_s: float = 0.0) -> None:
        super().__init__(oracle_replies(task), delay_s=delay_s, name="oracle")

"""mini-swe-agent's model adapter refuses a command no sandbox can run (empty, or with a
NUL) as a format error the model is told about, in both action formats: the command
reached the sandbox client, whose ValueError ended DefaultAgent."""

from __future__ import annotations

from typing import Any

import pytest
from minisweagent.exceptions import FormatError

from agentfleet.models.mini import MiniModel
from agentfleet.models.offline import ScriptedModel

EMPTY_BLOCK = "thinking\n```mswea_bash_command\n   \n```"


@pytest.mark.parametrize(
    ("reply", "problem"),
    [(EMPTY_BLOCK, "The command is empty."), ("```mswea_bash_command\nls\0 -l\n```", "NUL")],
)
def test_a_command_no_sandbox_runs_is_a_format_error(reply: str, problem: str) -> None:
    model = MiniModel(model=ScriptedModel([reply]), action_format="text")
    user: dict[str, Any] = {"role": "user", "content": "a task"}
    with pytest.raises(FormatError) as raised:
        model.query([user])
    (message,) = raised.value.messages
    assert message["role"] == "user" and problem in message["content"], message
    assert message["extra"]["interrupt_type"] == "FormatError"


def test_a_good_command_still_runs() -> None:
    model = MiniModel(
        model=ScriptedModel(["```mswea_bash_command\nls -l\n```"]), action_format="text"
    )
    message = model.query([{"role": "user", "content": "a task"}])
    assert message["extra"]["actions"] == [{"command": "ls -l"}]

"""Every command's --help shows each option's help whole: rich reads ``[...]`` as markup
(an unescaped bracketed part vanishes) and ``%%`` is no escape in typer's help."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from agentfleet.cli import app

ROOT = typer.main.get_command(app)


def _commands(cmd: Any, path: tuple[str, ...] = ()) -> Iterator[tuple[tuple[str, ...], Any]]:
    """(path, command) of every leaf command (typer bundles its own click: duck-typed)."""
    subs = getattr(cmd, "commands", None)
    if subs is None:
        yield path, cmd
    for name, sub in (subs or {}).items():
        yield from _commands(sub, (*path, name))


COMMANDS = dict(_commands(ROOT))


def _flat(text: str) -> str:
    """The help as one line: no panel borders, whitespace collapsed (lines wrap)."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_help_is_whole(path: tuple[str, ...]) -> None:
    out = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "200"})
    assert out.exit_code == 0, out.output
    shown = _flat(out.output)
    assert "%%" not in shown
    for param in COMMANDS[path].params:
        help_text = getattr(param, "help", None)
        if help_text:
            wanted = _flat(help_text.replace("\\[", "["))
            assert wanted in shown, f"{param.name}: {wanted!r} not in --help"


# options still without help, in modules this test's change did not own (remove each once
# it has help: VerboseOpt of agentfleet._cli for --verbose)
BARE_ELSEWHERE: dict[tuple[str, ...], set[str]] = {}  # options bare on purpose: none


@pytest.mark.parametrize("path", sorted(COMMANDS), ids=" ".join)
def test_every_option_has_help(path: tuple[str, ...]) -> None:
    """An option without help is a bare flag in --help (arguments may go without)."""
    bare = {
        p.name
        for p in COMMANDS[path].params
        if p.param_type_name == "option" and not getattr(p, "hidden", False) and not p.help
    }
    extra = bare - BARE_ELSEWHERE.get(path, set())
    assert not extra, f"{' '.join(path)}: options without help: {sorted(extra)}"


def test_early_stop_rounds_range() -> None:
    """0 or 2-100, not the 0-100 a typer range would show (1 is refused)."""
    out = CliRunner().invoke(app, ["serve-eval", "--help"], env={"COLUMNS": "200"})
    row = next(line for line in out.output.splitlines() if "--early-stop-rounds" in line)
    assert "0<=x" not in row and "2-100" in row, row


def test_python_dash_m_runs_the_command() -> None:
    """``python -m agentfleet`` is the ``agentfleet`` command, by that name."""
    import subprocess
    import sys

    ok = subprocess.run(
        [sys.executable, "-m", "agentfleet", "--help"], capture_output=True, text=True, timeout=60
    )
    assert ok.returncode == 0 and "Usage: agentfleet [OPTIONS] COMMAND" in ok.stdout, ok
    bad = subprocess.run(
        [sys.executable, "-m", "agentfleet", "nosuch"], capture_output=True, text=True, timeout=60
    )
    assert bad.returncode == 2 and "No such command 'nosuch'" in bad.stderr, bad

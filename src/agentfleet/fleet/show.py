"""``agentfleet show``: a run's results table, or one trajectory, in the terminal."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from rich.console import Console, Group, RenderableType
from rich.panel import Panel
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text

from agentfleet.fleet.results import FAILED, latest_results
from agentfleet.fleet.rundir import RunDir

ROLE_STYLES = {
    "system": "magenta",
    "user": "blue",
    "assistant": "green",
    "tool": "cyan",
    "exit": "red",
}
CLIP_LINES = 40
CLIP_CHARS = 4000

_BLOCK = re.compile(r"```(\w*)[ \t]*\n(.*?)```", re.DOTALL)


def results_table(run_dir: Path) -> Table:
    """One row per task of the run (latest result), tasks without a result as pending."""
    latest = latest_results(run_dir)
    try:
        ids: list[str] = list(RunDir(run_dir).read_config().get("tasks") or [])
    except (OSError, ValueError):
        ids = []
    ids += [i for i in latest if i not in set(ids)]
    table = Table(title=f"{run_dir}")
    for col in ("instance", "state", "exit status", "eval", "reward", "speedup", "steps", "s"):
        table.add_column(
            col, justify="right" if col in {"reward", "speedup", "steps", "s"} else "left"
        )
    for iid in ids:
        rec = latest.get(iid)
        if rec is None:
            table.add_row(iid, Text("pending", style="dim"), "-", "-", "", "", "", "")
            continue
        info = rec.get("info") or {}
        state = rec.get("state", "done")
        table.add_row(
            iid,
            Text(state, style="red" if state == FAILED else "green"),
            str(rec.get("exit_status", "-")),
            str(info.get("status", (rec.get("error") or "-")[:40])),
            f"{float(rec.get('reward', 0.0)):.3f}",
            f"{float(rec.get('speedup', 0.0)):.2f}x",
            str(rec.get("steps", 0)),
            f"{float(rec.get('duration_s', 0.0)):.1f}",
        )
    return table


def clip(text: str, *, full: bool = False) -> tuple[str, str]:
    """``(text, note)``: the first and last lines of a long text, and what was left out."""
    if full:
        return text, ""
    lines = text.splitlines()
    if len(lines) > CLIP_LINES:
        head, tail = CLIP_LINES // 2, CLIP_LINES // 4
        cut = len(lines) - head - tail
        text = "\n".join([*lines[:head], f"... [{cut} lines clipped] ...", *lines[-tail:]])
        return text, f"{cut} of {len(lines)} lines clipped; --full shows everything"
    if len(text) > CLIP_CHARS:
        cut = len(text) - CLIP_CHARS
        half = CLIP_CHARS // 2
        text = f"{text[:half]}\n... [{cut} characters clipped] ...\n{text[-half:]}"
        return text, f"{cut} of {len(text) + cut} characters clipped; --full shows everything"
    return text, ""


def _content_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # OpenAI-style content parts
        return "\n".join(str(p.get("text", "")) if isinstance(p, dict) else str(p) for p in content)
    return str(content)


def render_content(content: str, *, full: bool = False) -> list[RenderableType]:
    """Prose as plain text, ```bash (and other fenced) blocks syntax-highlighted."""
    parts: list[RenderableType] = []
    notes: list[str] = []
    pos = 0
    for m in _BLOCK.finditer(content):
        before = content[pos : m.start()].strip("\n")
        if before.strip():
            text, note = clip(before, full=full)
            parts.append(Text(text))
            notes.append(note)
        code, note = clip(m.group(2).rstrip("\n"), full=full)
        notes.append(note)
        parts.append(
            Syntax(code, m.group(1) or "bash", theme="ansi_dark", word_wrap=True, padding=(0, 1))
        )
        pos = m.end()
    rest = content[pos:].strip("\n")
    if rest.strip() or not parts:
        text, note = clip(rest, full=full)
        parts.append(Text(text))
        notes.append(note)
    for note in filter(None, notes):
        parts.append(Text(f"({note})", style="dim italic"))
    return parts


def trajectory_view(traj: dict[str, Any], *, full: bool = False) -> list[RenderableType]:
    """Header with the run's outcome, then one panel per message."""
    info = traj.get("info") or {}
    stats = info.get("model_stats") or {}
    evaluation = info.get("evaluation") or {}
    head = Table.grid(padding=(0, 2))
    head.add_column(style="bold cyan", justify="right")
    head.add_column()
    head.add_row("instance", str(traj.get("instance_id", "?")))
    head.add_row("exit status", str(info.get("exit_status", "?")))
    head.add_row("model", str(info.get("model", "?")))
    head.add_row(
        "score",
        f"reward {float(info.get('reward', 0.0)):.3f}, speedup "
        f"{float(info.get('speedup', 0.0)):.2f}x, evaluation {evaluation.get('status', '-')}",
    )
    head.add_row(
        "model stats",
        f"{stats.get('api_calls', 0)} calls, {stats.get('prompt_tokens', 0)} prompt + "
        f"{stats.get('completion_tokens', 0)} completion tokens, "
        f"${float(stats.get('instance_cost', 0.0)):.4f}",
    )
    submission = str(info.get("submission", ""))
    head.add_row("submission", f"{len(submission.splitlines())} lines of diff")
    out: list[RenderableType] = [Panel(head, title="trajectory", border_style="white")]
    for i, msg in enumerate(traj.get("messages") or []):
        role = str(msg.get("role", "?")) if isinstance(msg, dict) else "?"
        content = _content_text(msg.get("content", "") if isinstance(msg, dict) else msg)
        style = ROLE_STYLES.get(role, "white")
        out.append(
            Panel(
                Group(*render_content(content, full=full)),
                title=f"[{style} bold]{i} {role}[/]",
                title_align="left",
                border_style=style,
            )
        )
    if submission:
        code, note = clip(submission, full=full)
        body: list[RenderableType] = [Syntax(code, "diff", theme="ansi_dark", word_wrap=True)]
        if note:
            body.append(Text(f"({note})", style="dim italic"))
        out.append(Panel(Group(*body), title="submission", title_align="left"))
    return out


def print_trajectory(traj: dict[str, Any], console: Console, *, full: bool = False) -> None:
    for part in trajectory_view(traj, full=full):
        console.print(part)

"""Progress of a running fleet: a live rich dashboard, or one plain line per event.

Both read a :class:`~agentfleet.fleet.monitor.FleetMonitor` that the runner keeps up to
date. The rich dashboard is redrawn by rich's own refresh thread (``Live`` with
``auto_refresh``), so the event loop never waits for the terminal.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import IO, Any, Literal

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from agentfleet.fleet.monitor import FleetMonitor
from agentfleet.fleet.outcome import TaskOutcome
from agentfleet.fleet.results import FAILED, result_state
from agentfleet.tasks import Task

ProgressMode = Literal["rich", "plain", "none"]
PROGRESS_MODES = ("auto", "rich", "plain", "none")


def choose_mode(requested: str | None, stdout: IO[str] | None = None) -> ProgressMode:
    """``auto`` (or None): rich when stdout is a terminal, else plain (logs, CI)."""
    if requested in ("rich", "plain", "none"):
        return requested  # type: ignore[return-value]
    if requested not in (None, "auto"):
        raise ValueError(f"unknown progress mode {requested!r}; expected rich|plain|none")
    out = stdout or sys.stdout
    return "rich" if out.isatty() else "plain"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def fmt_count(n: float) -> str:
    if n >= 1_000_000:
        return f"{n / 1_000_000:.1f}M"
    if n >= 1000:
        return f"{n / 1000:.1f}k"
    return f"{int(n)}"


def is_failed(outcome: TaskOutcome) -> bool:
    return result_state(asdict(outcome)) == FAILED


def describe(outcome: TaskOutcome) -> str:
    status = outcome.info.get("status", "-")
    text = (
        f"{outcome.exit_status} eval={status} reward={outcome.reward:.3f} "
        f"speedup={outcome.speedup:.2f}x steps={outcome.steps} {outcome.duration_s:.1f}s"
    )
    if outcome.error:
        text += f" ({outcome.error[:200]})"
    return text


class PlainProgress:
    """One line per event (for logs and CI): ``start`` and ``done``/``FAILED``."""

    def __init__(
        self, monitor: FleetMonitor, write: Callable[[str], None], clock: Callable[[], str] | None
    ) -> None:
        self.monitor = monitor
        self.write = write
        self.clock = clock or (lambda: time.strftime("%H:%M:%S"))

    def __call__(self, event: str, task: Task, outcome: TaskOutcome | None) -> None:
        m = self.monitor
        head = f"{self.clock()} [{m.finished}/{m.total}]"
        if event == "start":
            self.write(f"{head} start {task.id} ({len(m.running)} running)")
        elif event == "done" and outcome is not None:
            word = "FAILED" if is_failed(outcome) else "done"
            totals = m.model_totals()
            self.write(
                f"{head} {word} {task.id}: {describe(outcome)} | running {len(m.running)}, "
                f"failed {m.failed}, cost ${totals['cost']:.4f}, ETA {fmt_duration(m.eta_s())}"
            )


def _kv(grid: Table, key: str, value: RenderableType) -> None:
    grid.add_row(Text(key, style="bold cyan"), value)


def _worker_slots(slots: list[dict[str, Any]]) -> Text:
    """Each evaluation worker (remote ones by name) on its CPU set, busy or idle."""
    busy = sum(1 for w in slots if w.get("job_id"))
    out = Text(f"{busy}/{len(slots)} busy:", style="bold")
    for w in slots[:16]:
        where = f"cpu {w['cpus']}" if w.get("cpus") else "any cpu"
        out.append(f" {w.get('worker')} ({where})", style="yellow" if w.get("job_id") else "dim")
    if len(slots) > 16:
        out.append(f" +{len(slots) - 16} more", style="dim")
    return out


class Dashboard:
    """The rich live view of a :class:`FleetMonitor`; use as a context manager."""

    def __init__(
        self,
        monitor: FleetMonitor,
        console: Console,
        title: str = "agentfleet run",
        refresh_per_second: float = 4.0,
        max_rows: int = 12,
    ) -> None:
        self.monitor = monitor
        self.console = console
        self.title = title
        self.max_rows = max_rows
        self.live = Live(
            get_renderable=self.render,
            console=console,
            refresh_per_second=refresh_per_second,
            transient=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )

    def __enter__(self) -> Dashboard:
        self.live.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.live.stop()

    def listener(self, event: str, task: Task, outcome: TaskOutcome | None) -> None:
        """Finished tasks are printed above the live view (the view redraws by itself)."""
        if event == "done" and outcome is not None:
            style = "red" if is_failed(outcome) else "green"
            self.console.print(
                Text.assemble((f"{task.id}", "bold"), ": ", (describe(outcome), style))
            )

    def render(self) -> RenderableType:
        try:
            return self._render()
        except Exception as exc:  # a refresh racing an update: show something, never die
            return Text(f"(dashboard: {type(exc).__name__}: {exc})", style="dim")

    def _render(self) -> RenderableType:
        m = self.monitor
        now = time.monotonic()
        elapsed = now - m.started_at
        total = max(m.total, 1)
        grid = Table.grid(padding=(0, 2))
        grid.add_column(justify="right")
        grid.add_column()
        bar = Table.grid(padding=(0, 1))
        bar.add_row(
            ProgressBar(
                total=total,
                completed=m.finished,
                width=40,
                complete_style="green",
                finished_style="bold green",
            ),
            Text(f"{m.finished}/{m.total}  {m.finished / total:.0%}", style="bold"),
            Text(f"elapsed {fmt_duration(elapsed)}  ETA {fmt_duration(m.eta_s(now))}"),
        )
        _kv(grid, "progress", bar)
        agents = Text.assemble(
            (f"{len(m.running)} running", "yellow"),
            " · ",
            (f"{m.done} done", "green"),
            " · ",
            (f"{m.failed} failed", "red" if m.failed else "dim"),
            " · ",
            (f"{max(0, m.total - m.finished - len(m.running))} waiting", "dim"),
        )
        if m.skipped:
            agents.append(f" · {m.skipped} skipped (resume)", style="dim")
        _kv(grid, "agents", agents)
        q = m.eval_queue
        if "error" in q:
            evals = Text(f"server unreachable ({q['error']})", style="red")
        elif q:
            evals = Text(
                f"{q.get('queued', 0)} queued · {q.get('running', 0)} running"
                f" (workers {q.get('workers', '?')})"
            )
            if q.get("throughput_per_minute") is not None:
                evals.append(f" · {q['throughput_per_minute']:g}/min")
            if q.get("queue_wait_mean_s") is not None:
                evals.append(f" · queue wait {fmt_duration(q['queue_wait_mean_s'])}")
        else:
            evals = Text("-", style="dim")
        _kv(grid, "evaluations", evals)
        slots = q.get("worker_slots") or []
        if slots:
            _kv(grid, "eval workers", _worker_slots(slots))
        p = m.pool
        if p:
            opened = "?" if p.get("open") is None else str(p.get("open"))
            conns = Text(
                f"{opened} open · {p.get('created', 0)} created · {p.get('reused', 0)} reused"
                f" · {p.get('in_flight', 0)} in flight · {p.get('waiting', 0)} waiting"
                + (f" · {p['errors']} errors" if p.get("errors") else "")
            )
        else:
            conns = Text("-", style="dim")
        _kv(grid, "connections", conns)
        t = m.model_totals()
        tokens = t["prompt_tokens"] + t["completion_tokens"]
        _kv(
            grid,
            "model",
            Text(
                f"{fmt_count(t['calls'])} calls · {fmt_count(tokens)} tokens "
                f"({fmt_count(t['prompt_tokens'])} in / {fmt_count(t['completion_tokens'])} out)"
                f" · ${t['cost']:.4f}"
            ),
        )
        parts: list[RenderableType] = [grid]
        running = sorted(dict(m.running).items(), key=lambda kv: kv[1])
        if running:
            table = Table(box=None, pad_edge=False, header_style="bold")
            for col in ("running agent", "stage", "steps", "elapsed"):
                table.add_column(col, justify="right" if col in {"steps", "elapsed"} else "left")
            for tid, started in running[: self.max_rows]:
                model = m.models.get(tid)
                steps = getattr(getattr(model, "stats", None), "calls", 0)
                table.add_row(tid, m.stage.get(tid, "-"), str(steps), fmt_duration(now - started))
            if len(running) > self.max_rows:
                table.add_row(f"... {len(running) - self.max_rows} more", "", "", "")
            parts.append(table)
        errors = list(m.errors)
        if errors:
            err_text = Text()
            err_text.append("last errors:", style="bold red")
            for e in errors:
                err_text.append(f"\n  {e}", style="red")
            parts.append(err_text)
        return Panel(Group(*parts), title=self.title, border_style="blue")


def make_progress(
    mode: ProgressMode, monitor: FleetMonitor, console: Console, title: str
) -> tuple[Any, Callable[[str, Task, TaskOutcome | None], None] | None]:
    """``(context manager or None, listener or None)`` for a progress mode."""
    if mode == "rich":
        dash = Dashboard(monitor, console, title=title)
        return dash, dash.listener
    if mode == "plain":
        return None, PlainProgress(
            monitor,
            lambda line: console.print(line, highlight=False, markup=False, soft_wrap=True),
            None,
        )
    return None, None

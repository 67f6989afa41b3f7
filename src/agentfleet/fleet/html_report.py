"""``agentfleet report``: one self-contained HTML file for a run folder.

Summary figures, a row per task (linking to its trajectory, with the messages inline in a
collapsible block) and hand-written inline SVG plots: speedup per task against the
reference, reward distribution, evaluation latency, connections over time (drawn by
``svg_charts``). No JavaScript, no external resources; everything that comes from the run
is HTML-escaped.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

from agentfleet.fleet.report import benchmark_lines, outcome_of, summary
from agentfleet.fleet.results import FAILED, latest_results, read_records
from agentfleet.fleet.rundir import RunDir
from agentfleet.fleet.svg_charts import Point, esc, hbar_chart, histogram, line_chart, stacked_bars

MSG_CLIP = 6000  # characters of one message shown inline (the .traj.json has everything)


# -- page -----------------------------------------------------------------------------
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:24px auto;max-width:1200px;
color:#222;padding:0 16px}
h1{font-size:1.5em;margin-bottom:0}h2{margin-top:1.6em;border-bottom:1px solid #ddd}
.sub{color:#666;margin-top:4px}
.cards{display:flex;flex-wrap:wrap;gap:12px;margin:16px 0}
.card{border:1px solid #ddd;border-radius:8px;padding:10px 14px;min-width:120px;background:#fafafa}
.card .v{font-size:1.5em;font-weight:600}.card .k{color:#666;font-size:.85em}
table.tasks{border-collapse:collapse;width:100%;font-size:.92em}
table.tasks th,table.tasks td{border-bottom:1px solid #e5e5e5;padding:5px 8px;text-align:left;
vertical-align:top}
table.tasks td.n{text-align:right;font-variant-numeric:tabular-nums}
.failed{color:#c0392b;font-weight:600}.done{color:#1e8449}
.plots{display:flex;flex-wrap:wrap;gap:24px}.plots svg{border:1px solid #eee;background:#fff}
details{margin:2px 0}summary{cursor:pointer;color:#1f4e9a}
.msg{border-left:4px solid #999;margin:8px 0;padding:4px 10px;background:#fcfcfc}
.msg .role{font-weight:600;font-size:.85em;text-transform:uppercase}
.msg.system{border-color:#8e44ad}.msg.user{border-color:#2e86c1}
.msg.assistant{border-color:#28b463}.msg.exit{border-color:#c0392b}
pre{white-space:pre-wrap;word-break:break-word;margin:4px 0;font-size:.85em}
.note{color:#888;font-style:italic;font-size:.85em}.empty{color:#888}
"""


def _card(key: str, value: str) -> str:
    return (
        f'<div class="card"><div class="v">{esc(value)}</div><div class="k">{esc(key)}</div></div>'
    )


def _messages_html(traj: dict[str, Any]) -> str:
    parts = []
    for i, msg in enumerate(traj.get("messages") or []):
        role = str(msg.get("role", "?")) if isinstance(msg, dict) else "?"
        content = msg.get("content", "") if isinstance(msg, dict) else msg
        text = content if isinstance(content, str) else json.dumps(content, default=str)
        note = ""
        if len(text) > MSG_CLIP:
            note = (
                f'<div class="note">{len(text) - MSG_CLIP} characters clipped; '
                "the .traj.json has the full text</div>"
            )
            text = text[: MSG_CLIP // 2] + "\n...\n" + text[-MSG_CLIP // 2 :]
        cls = role if role in {"system", "user", "assistant", "exit"} else "other"
        parts.append(
            f'<div class="msg {cls}"><div class="role">{i} {esc(role)}</div>'
            f"<pre>{esc(text)}</pre>{note}</div>"
        )
    sub = str((traj.get("info") or {}).get("submission", ""))
    if sub:
        parts.append(
            f'<div class="msg exit"><div class="role">submission</div><pre>{esc(sub[:MSG_CLIP])}'
            "</pre></div>"
        )
    return "".join(parts)


def _reference(rec: dict[str, Any], task_refs: dict[str, float]) -> float | None:
    info = rec.get("info") or {}
    ref = info.get("reference_speedup")
    if isinstance(ref, int | float) and math.isfinite(ref) and ref > 0:
        return float(ref)
    return task_refs.get(str(rec.get("instance_id")))


def build_report(
    run_dir: Path,
    out_path: Path | None = None,
    *,
    task_refs: dict[str, float] | None = None,
) -> str:
    """The HTML text of the report of ``run_dir`` (links relative to ``out_path``'s folder).

    ``task_refs``: reference speedups known from elsewhere (e.g. ``tasks check``), used for
    tasks whose evaluation did not time the reference."""
    files = RunDir(run_dir)
    out_dir = (out_path or files.report).resolve().parent
    task_refs = task_refs or {}
    try:
        config = files.read_config()
    except (OSError, ValueError):
        config = {}
    latest = latest_results(run_dir)
    order = list(config.get("tasks") or [])
    order += [i for i in latest if i not in set(order)]
    records = [latest[i] for i in order if i in latest]
    pending = [i for i in order if i not in latest]
    outcomes = [outcome_of(r) for r in records]
    wall, _ = files.wall_s()
    s = summary(outcomes, wall)
    failed = sum(r.get("state") == FAILED for r in records)

    cards = [
        _card("tasks", f"{len(records)}/{len(order)}" if pending else str(len(records))),
        _card("correct", str(s["correct"])),
        _card("failed", str(failed)),
        _card("mean reward", f"{s['mean_reward']:.3f}"),
        _card("geo-mean speedup", f"{s['geomean_speedup']:.2f}x"),
        _card("fast_1.0", f"{s['fast_1.0']:.0%}"),
        _card("fast_1.5", f"{s['fast_1.5']:.0%}"),
        _card("fast_2.0", f"{s['fast_2.0']:.0%}"),
        _card("cost", f"${s['cost']:.4f}"),
    ]
    if wall:
        cards.append(_card("wall time", f"{wall:.1f} s"))

    bench = _benchmarks_html(s.get("benchmarks") or {})
    rows = _task_rows(records, pending, files, out_dir, task_refs)
    plots = _plots(records, files, task_refs)

    title = f"agentfleet report: {run_dir.name}"
    models = [str(i.get("model")) for i in config.get("invocations") or [] if i.get("model")]
    models = list(dict.fromkeys(models)) or [str(config.get("model", "?"))]
    resumes = sum(bool(i.get("resume")) for i in config.get("invocations") or [])
    sub = (
        f"dataset {config.get('dataset', '?')}/{config.get('split', '?')}, "
        f"model{'s' if len(models) > 1 else ''} {', '.join(models)}, "
        f"workers {config.get('workers', '?')}"
        + (f", resumed {resumes}x" if resumes else "")
        + "; report written "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}"
    )
    head_cols = (
        "task",
        "state",
        "exit status",
        "evaluation",
        "benchmark rule",
        "reward",
        "speedup",
        "reference",
        "steps",
        "seconds",
        "cost",
        "trajectory",
    )
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        f"<title>{esc(title)}</title>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{CSS}</style></head><body>"
        f"<h1>{esc(title)}</h1><p class=sub>{esc(sub)}</p>"
        f'<div class="cards" id="summary">{"".join(cards)}</div>{bench}'
        f'<h2>Plots</h2><div class="plots">{"".join(plots)}</div>'
        '<h2>Tasks</h2><table class="tasks" id="tasks"><thead><tr>'
        + "".join(f"<th>{esc(c)}</th>" for c in head_cols)
        + f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f"<p class=note>Speedup: baseline over candidate {esc(_clock_note(records))} "
        "(median of timed runs); reward 0 for incorrect solutions. fast_p: share of all "
        "tasks that are correct and faster than p, results within noise not counted."
        "</p></body></html>\n"
    )


def _task_rows(
    records: list[dict[str, Any]],
    pending: list[str],
    files: RunDir,
    out_dir: Path,
    task_refs: dict[str, float],
) -> list[str]:
    """The task table's rows, each with its trajectory inline (links relative to ``out_dir``)."""
    rows = []
    for rec in records:
        iid = str(rec.get("instance_id"))
        info = rec.get("info") or {}
        traj_path = files.trajectory(iid)
        link = os.path.relpath(traj_path.resolve(), out_dir).replace(os.sep, "/")
        inline = '<span class="note">no trajectory</span>'
        if traj_path.is_file():
            try:
                traj = json.loads(traj_path.read_text())
                n = len(traj.get("messages") or [])
                inline = f"<details><summary>{n} messages</summary>{_messages_html(traj)}</details>"
            except (ValueError, AttributeError):
                inline = '<span class="note">unreadable trajectory</span>'
        ref = _reference(rec, task_refs)
        state = str(rec.get("state", "done"))
        error = str(rec.get("error") or info.get("error") or "")
        rows.append(
            "<tr>"
            f'<td><a href="{esc(link)}">{esc(iid)}</a></td>'
            f'<td class="{esc(state)}">{esc(state)}</td>'
            f"<td>{esc(rec.get('exit_status', '-'))}</td>"
            f"<td>{esc(info.get('status', '-'))}</td>"
            f"<td>{esc(_verdict_text(info))}</td>"
            f'<td class="n">{float(rec.get("reward", 0.0)):.3f}</td>'
            f'<td class="n">{float(rec.get("speedup", 0.0)):.2f}x</td>'
            f'<td class="n">{"-" if ref is None else f"{ref:.2f}x"}</td>'
            f'<td class="n">{esc(rec.get("steps", 0))}</td>'
            f'<td class="n">{float(rec.get("duration_s", 0.0)):.1f}</td>'
            f'<td class="n">${float(rec.get("cost", 0.0)):.4f}</td>'
            f"<td>{esc(error[:300])}{inline}</td>"
            "</tr>"
        )
    for iid in pending:
        rows.append(
            f'<tr><td>{esc(iid)}</td><td class="note">pending</td>' + "<td></td>" * 10 + "</tr>"
        )

    return rows


def _plots(records: list[dict[str, Any]], files: RunDir, task_refs: dict[str, float]) -> list[str]:
    """The report's SVG plots: speedups, rewards, evaluation latency, the pool over time."""
    speed_rows = [
        (
            str(r.get("instance_id")),
            float(r.get("speedup", 0.0)),
            _reference(r, task_refs),
            ""
            if (r.get("info") or {}).get("status") == "ok"
            else str((r.get("info") or {}).get("status") or r.get("state") or "not correct"),
        )
        for r in records
    ]
    lat_rows = []
    for r in records:
        durations = (r.get("info") or {}).get("durations") or {}
        parts = {
            k: float(v) for k, v in durations.items() if k != "total" and isinstance(v, int | float)
        }
        if not parts:
            total = durations.get("total", r.get("duration_s", 0.0))
            parts = {"total": float(total or 0.0)}
        lat_rows.append((str(r.get("instance_id")), parts))
    pool = read_records(files.pool_stats)

    pool = [p for p in pool if isinstance(p.get("t"), int | float)]
    t0 = min((float(p["t"]) for p in pool), default=0.0)

    def series(*pairs: tuple[str, str]) -> dict[str, list[Point | None]]:
        """Seconds since the first snapshot; a resumed invocation (its ``elapsed_s``
        starts again) begins a new line segment."""
        out: dict[str, list[Point | None]] = {}
        for key, name in pairs:
            pts: list[Point | None] = []
            last = -1.0
            for p in pool:
                elapsed = float(p.get("elapsed_s") or 0.0)
                if elapsed < last:
                    pts.append(None)
                last = elapsed
                if isinstance(p.get(key), int | float):
                    pts.append((float(p["t"]) - t0, float(p[key])))
            out[name] = pts
        return out

    gauges = series(
        ("open", "open"),
        ("in_flight", "in flight"),
        ("running_agents", "running agents"),
        ("eval_queued", "evals queued"),
        ("eval_running", "evals running"),
    )
    totals = series(("created", "created"), ("reused", "reused"), ("requests", "requests"))
    return [
        hbar_chart(
            speed_rows,
            title="speedup per task (red: not correct)",
            marker_at=1.0,
            marker_label="1x",
        ),
        histogram([float(r.get("reward", 0.0)) for r in records], title="reward distribution"),
        stacked_bars(lat_rows, title="evaluation latency per task (seconds by stage)"),
        line_chart(
            gauges,
            title="connections and queues over time",
            xlabel="seconds since the first snapshot",
        ),
        line_chart(
            totals,
            title="connections created / reused (cumulative)",
            xlabel="seconds (counters restart on resume)",
        ),
    ]


def _verdict_text(info: dict[str, Any]) -> str:
    """A task's verdict by its benchmark's own rule: ``gso: pass (1.98x, 1.00x gold)``."""
    v = info.get("benchmark")
    if not isinstance(v, dict):
        return "-"
    passed = v.get("passed")
    word = "pass" if passed is True else "fail" if passed is False else "not judged"
    figures = [
        f"{x:.2f}x{label}"
        for key, label in (("speedup_base", ""), ("speedup_gold", " gold"))
        if isinstance(x := v.get(key), int | float)
    ]
    return f"{v.get('benchmark', '?')}: {word}" + (f" ({', '.join(figures)})" if figures else "")


def _benchmarks_html(benchmarks: dict[str, Any]) -> str:
    """The per-benchmark summary: each one's pass rate by its own rule, mean speedups."""
    if not benchmarks:
        return ""
    items = "".join(f"<li>{esc(line)}</li>" for line in benchmark_lines(benchmarks))
    return f'<h2>Benchmarks</h2><ul id="benchmarks">{items}</ul>'


_CLOCK_NAMES = {"cpu": "CPU time (user+sys)", "wall": "wall time"}


def _clock_note(records: list[dict[str, Any]]) -> str:
    """The clock(s) the evaluations timed with (``info.timing.clock``)."""
    clocks: dict[str, None] = {}
    for r in records:
        timing = (r.get("info") or {}).get("timing")
        if isinstance(timing, dict) and timing.get("clock"):
            clocks[str(timing["clock"])] = None
    if not clocks:
        return "time (no timed evaluation)"
    return " / ".join(_CLOCK_NAMES.get(c, f"{c} time") for c in clocks)


def write_report(run_dir: Path, out_path: Path | None = None) -> Path:
    out = out_path or RunDir(run_dir).report
    text = build_report(run_dir, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    return out

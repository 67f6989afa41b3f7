"""``agentfleet report``: one self-contained HTML file for a run folder.

Summary figures, a row per task (linking to its trajectory, with the messages inline in a
collapsible block) and hand-written inline SVG plots: speedup per task against the
reference, reward distribution, evaluation latency, connections over time. No JavaScript,
no external resources; everything that comes from the run is HTML-escaped.
"""

from __future__ import annotations

import html
import json
import math
import os
import time
from pathlib import Path
from typing import Any

from agentfleet.fleet.report import outcome_of, summary
from agentfleet.fleet.results import FAILED, latest_results, read_records
from agentfleet.fleet.rundir import RunDir

MSG_CLIP = 6000  # characters of one message shown inline (the .traj.json has everything)
PALETTE = {
    "bar": "#4c78a8",
    "ref": "#f58518",
    "bad": "#e45756",
    "grid": "#dddddd",
    "text": "#333333",
}
STAGE_COLORS = ["#4c78a8", "#72b7b2", "#54a24b", "#eeca3b", "#b279a2", "#ff9da6", "#9d755d"]


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


# -- SVG ------------------------------------------------------------------------------
def _svg(width: int, height: int, body: list[str], title: str) -> str:
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" role="img" aria-label="{esc(title)}" '
        f'font-family="sans-serif" font-size="12">'
        f"<title>{esc(title)}</title>{''.join(body)}</svg>"
    )


def _axis(x: float, n: int = 5) -> tuple[float, list[float]]:
    """An axis maximum >= ``x`` and its ticks at a round step (1, 2, 2.5 or 5 x 10^k)."""
    if x <= 0 or not math.isfinite(x):
        x = 1.0
    raw = x / n
    exp = 10 ** math.floor(math.log10(raw))
    step = next(m * exp for m in (1, 2, 2.5, 5, 10) if m * exp >= raw)
    count = max(1, math.ceil(x / step - 1e-9))
    return step * count, [step * i for i in range(count + 1)]


def hbar_chart(
    rows: list[tuple[str, float, float | None, str]],
    *,
    title: str,
    unit: str = "x",
    marker_at: float | None = None,
    marker_label: str = "",
) -> str:
    """Horizontal bars ``(label, value, reference or None, problem)``: references as ticks,
    bars with a problem (e.g. the evaluation status of an incorrect solution) in red."""
    if not rows:
        return "<p class=empty>no data</p>"
    left, right, top, row_h = 150, 56, 40, 22
    width = 560
    plot_w = width - left - right
    height = top + row_h * len(rows) + 34
    vals = [v for _, v, _, _ in rows] + [r for _, _, r, _ in rows if r is not None]
    vmax, ticks = _axis(max([*vals, marker_at or 0.0]) * 1.05)
    sx = plot_w / vmax
    body = [f'<text x="{left}" y="16" font-weight="bold">{esc(title)}</text>']
    for t in ticks:
        x = left + t * sx
        body.append(
            f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height - 30}" '
            f'stroke="{PALETTE["grid"]}"/>'
            f'<text x="{x:.1f}" y="{height - 16}" text-anchor="middle" fill="#666">'
            f"{t:g}{esc(unit)}</text>"
        )
    for i, (label, value, ref, bad) in enumerate(rows):
        y = top + i * row_h
        color = PALETTE["bad"] if bad else PALETTE["bar"]
        body.append(
            f'<text x="{left - 6}" y="{y + 15}" text-anchor="end">{esc(label[:26])}</text>'
            f'<rect x="{left}" y="{y + 3}" width="{max(value, 0) * sx:.1f}" height="{row_h - 6}"'
            f' fill="{color}"><title>{esc(label)}: {value:.3g}{esc(unit)}</title></rect>'
            f'<text x="{left + max(value, 0) * sx + 4:.1f}" y="{y + 15}" fill="#333">'
            f"{value:.2f}{esc(unit)}{f' ({esc(bad)})' if bad else ''}</text>"
        )
        if ref is not None:
            rx = left + ref * sx
            body.append(
                f'<line x1="{rx:.1f}" y1="{y + 1}" x2="{rx:.1f}" y2="{y + row_h - 1}" '
                f'stroke="{PALETTE["ref"]}" stroke-width="3">'
                f"<title>reference {ref:.2f}{esc(unit)}</title></line>"
            )
    if marker_at is not None:
        mx = left + marker_at * sx
        body.append(
            f'<line x1="{mx:.1f}" y1="{top - 4}" x2="{mx:.1f}" y2="{height - 30}" '
            f'stroke="#000" stroke-dasharray="4 3"/>'
            f'<text x="{mx:.1f}" y="{top - 8}" text-anchor="middle" fill="#000">'
            f"{esc(marker_label)}</text>"
        )
    if any(r is not None for _, _, r, _ in rows):
        lx = width - right - 120
        body.append(
            f'<line x1="{lx}" y1="6" x2="{lx}" y2="18" stroke="{PALETTE["ref"]}" '
            f'stroke-width="3"/><text x="{lx + 6}" y="16">reference speedup</text>'
        )
    return _svg(width, height, body, title)


def histogram(values: list[float], *, title: str, bins: int = 10) -> str:
    """Counts of ``values`` in ``bins`` equal bins over [0, 1]."""
    if not values:
        return "<p class=empty>no data</p>"
    counts = [0] * bins
    for v in values:
        counts[min(bins - 1, max(0, int(v * bins)))] += 1
    width, height, left, bottom, top = 560, 240, 40, 36, 28
    plot_w, plot_h = width - left - 16, height - top - bottom
    cmax = max(counts)
    bw = plot_w / bins
    body = [f'<text x="{left}" y="16" font-weight="bold">{esc(title)}</text>']
    for k in range(cmax + 1):
        y = top + plot_h - k / cmax * plot_h
        if cmax <= 10 or k % max(1, cmax // 5) == 0:
            body.append(
                f'<line x1="{left}" y1="{y:.1f}" x2="{width - 16}" y2="{y:.1f}" '
                f'stroke="{PALETTE["grid"]}"/>'
                f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end" fill="#666">{k}</text>'
            )
    for i, c in enumerate(counts):
        h = c / cmax * plot_h
        x = left + i * bw
        body.append(
            f'<rect x="{x + 1:.1f}" y="{top + plot_h - h:.1f}" width="{bw - 2:.1f}" '
            f'height="{h:.1f}" fill="{PALETTE["bar"]}"><title>{i / bins:.1f}-'
            f"{(i + 1) / bins:.1f}: {c}</title></rect>"
        )
    for i in range(0, bins + 1, 2):
        x = left + i * bw
        body.append(
            f'<text x="{x:.1f}" y="{height - bottom + 16}" text-anchor="middle" fill="#666">'
            f"{i / bins:.1f}</text>"
        )
    body.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 4}" text-anchor="middle">reward</text>'
    )
    return _svg(width, height, body, title)


def stacked_bars(rows: list[tuple[str, dict[str, float]]], *, title: str) -> str:
    """Horizontal stacked bars of seconds per stage (evaluation durations)."""
    if not rows:
        return "<p class=empty>no data</p>"
    stages: list[str] = []
    for _, parts in rows:
        stages += [k for k in parts if k not in stages]
    color = {s: STAGE_COLORS[i % len(STAGE_COLORS)] for i, s in enumerate(stages)}
    left, right, top, row_h, width = 150, 56, 44, 22, 560
    plot_w = width - left - right
    height = top + row_h * len(rows) + 34
    vmax, ticks = _axis(max(sum(p.values()) for _, p in rows) * 1.05)
    sx = plot_w / vmax
    body = [f'<text x="{left}" y="16" font-weight="bold">{esc(title)}</text>']
    lx = left
    for s in stages:
        body.append(
            f'<rect x="{lx}" y="24" width="10" height="10" fill="{color[s]}"/>'
            f'<text x="{lx + 14}" y="33">{esc(s)}</text>'
        )
        lx += 24 + 7 * len(s)
    for t in ticks:
        x = left + t * sx
        body.append(
            f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height - 30}" '
            f'stroke="{PALETTE["grid"]}"/>'
            f'<text x="{x:.1f}" y="{height - 16}" text-anchor="middle" fill="#666">{t:g}s</text>'
        )
    for i, (label, parts) in enumerate(rows):
        y = top + i * row_h
        x = float(left)
        body.append(f'<text x="{left - 6}" y="{y + 15}" text-anchor="end">{esc(label[:26])}</text>')
        for s, v in parts.items():
            w = max(v, 0.0) * sx
            body.append(
                f'<rect x="{x:.1f}" y="{y + 3}" width="{w:.1f}" height="{row_h - 6}" '
                f'fill="{color[s]}"><title>{esc(label)} {esc(s)}: {v:.2f}s</title></rect>'
            )
            x += w
        body.append(
            f'<text x="{x + 4:.1f}" y="{y + 15}" fill="#333">{sum(parts.values()):.1f}s</text>'
        )
    return _svg(width, height, body, title)


Point = tuple[float, float]


def line_chart(series: dict[str, list[Point | None]], *, title: str, xlabel: str) -> str:
    """Lines of ``(x, y)`` points, one per named series; ``None`` breaks a line."""
    series = {k: v for k, v in series.items() if any(p is not None for p in v)}
    if not series:
        return "<p class=empty>no data</p>"
    width, height, left, right, top, bottom = 560, 260, 44, 120, 28, 40
    plot_w, plot_h = width - left - right, height - top - bottom
    xs = [p[0] for pts in series.values() for p in pts if p is not None]
    ys = [p[1] for pts in series.values() for p in pts if p is not None]
    xmax, xticks = _axis(max(xs))
    ymax, yticks = _axis(max(ys) * 1.05)

    def px(x: float) -> float:
        return left + x / xmax * plot_w

    def py(y: float) -> float:
        return top + plot_h - y / ymax * plot_h

    body = [f'<text x="{left}" y="16" font-weight="bold">{esc(title)}</text>']
    for t in yticks:
        body.append(
            f'<line x1="{left}" y1="{py(t):.1f}" x2="{left + plot_w}" y2="{py(t):.1f}" '
            f'stroke="{PALETTE["grid"]}"/>'
            f'<text x="{left - 6}" y="{py(t) + 4:.1f}" text-anchor="end" fill="#666">{t:g}</text>'
        )
    for t in xticks:
        body.append(
            f'<text x="{px(t):.1f}" y="{top + plot_h + 16}" text-anchor="middle" fill="#666">'
            f"{t:g}</text>"
        )
    body.append(
        f'<text x="{left + plot_w / 2:.1f}" y="{height - 6}" text-anchor="middle">'
        f"{esc(xlabel)}</text>"
    )
    for i, (name, pts) in enumerate(series.items()):
        c = STAGE_COLORS[i % len(STAGE_COLORS)]
        segments: list[list[Point]] = [[]]
        for point in pts:
            if point is None:
                segments.append([])
            else:
                segments[-1].append(point)
        for seg in filter(None, segments):
            path = " ".join(f"{px(x):.1f},{py(y):.1f}" for x, y in seg)
            body.append(
                f'<polyline points="{path}" fill="none" stroke="{c}" stroke-width="2">'
                f"<title>{esc(name)}</title></polyline>"
            )
        ly = top + 8 + i * 18
        body.append(
            f'<line x1="{left + plot_w + 12}" y1="{ly}" x2="{left + plot_w + 30}" y2="{ly}" '
            f'stroke="{c}" stroke-width="3"/>'
            f'<text x="{left + plot_w + 36}" y="{ly + 4}">{esc(name)}</text>'
        )
    return _svg(width, height, body, title)


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
    wall = files.wall_s()
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

    # task table with trajectories inline
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
            f'<tr><td>{esc(iid)}</td><td class="note">pending</td>' + "<td></td>" * 9 + "</tr>"
        )

    # plots
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
    plots = [
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
        f'<div class="cards" id="summary">{"".join(cards)}</div>'
        f'<h2>Plots</h2><div class="plots">{"".join(plots)}</div>'
        '<h2>Tasks</h2><table class="tasks" id="tasks"><thead><tr>'
        + "".join(f"<th>{esc(c)}</th>" for c in head_cols)
        + f"</tr></thead><tbody>{''.join(rows)}</tbody></table>"
        f"<p class=note>Speedup: baseline over candidate {esc(_clock_note(records))} "
        "(median of timed runs); reward 0 for incorrect solutions. fast_p: share of all "
        "tasks that are correct and faster than p, results within noise not counted."
        "</p></body></html>\n"
    )


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

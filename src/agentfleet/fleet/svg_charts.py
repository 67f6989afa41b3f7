"""Hand-written inline SVG charts for the HTML report: horizontal bars with a reference
marker, a histogram, stacked bars and lines. Every label is HTML-escaped; no JavaScript."""

from __future__ import annotations

import html
import math
from typing import Any

__all__ = ["Point", "esc", "hbar_chart", "histogram", "line_chart", "stacked_bars"]

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

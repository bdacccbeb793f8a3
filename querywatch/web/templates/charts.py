"""Pure: charts as inline SVG drawn on the server from a page context (no script, no CDN).

A chart is ``{"times": [POSIX bucket starts], "step_s": width, "series": [{"key", "label", "href",
"values": [number or None]}], "markers": [...], "bands": [...]}``. ``None`` is a bucket without
data (a gap): the drawing breaks there instead of inventing a zero.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

WIDTH, HEIGHT = 960, 260
LEFT, RIGHT, TOP, BOTTOM = 64, 12, 18, 24
PLOT_W, PLOT_H = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
PALETTE = 8  # CSS classes s0..s7; "other" is grey


class _Frame:
    """Maps time and value to SVG coordinates."""

    def __init__(self, times: Sequence[float], step: float, top: float) -> None:
        self.t0 = times[0] if times else 0.0
        self.t1 = (times[-1] + step) if times else 1.0
        self.top = top if top > 0 else 1.0

    def x(self, t: float) -> float:
        return round(LEFT + (t - self.t0) / (self.t1 - self.t0) * PLOT_W, 1)

    def y(self, v: float) -> float:
        return round(TOP + PLOT_H - v / self.top * PLOT_H, 1)


def stacked(chart: Mapping[str, Any], name: str, unit: str) -> str:
    """Areas stacked bottom-up in series order, with incident bands and deploy markers."""
    times, step = chart["times"], float(chart["step_s"])
    series = chart["series"]
    tops = _stack(series, len(times))
    peak = max((v for row in tops for v in row if v is not None), default=0.0)
    frame = _Frame(times, step, _nice(peak))
    parts = [_axes(frame, times, unit)]
    below: list[float | None] = [
        0.0 if any(r[i] is not None for r in tops) else None for i in range(len(times))
    ]
    for k, (s, above) in enumerate(zip(series, tops, strict=True)):
        css = "s-other" if s["key"] == "other" else f"s{k % PALETTE}"
        parts.append(_area(frame, times, step, below, above, css, s))
        below = above
    parts.append(_bands(chart.get("bands", []), frame))  # over the areas, translucent
    parts.append(_markers(chart.get("markers", []), frame))
    points = sum(1 for v in (tops[-1] if tops else []) if v is not None)
    return _svg(name, points, len(series), "".join(parts))


def line(
    times: Sequence[float],
    step: float,
    values: Sequence[float | None],
    name: str,
    unit: str,
    markers: Sequence[Mapping[str, Any]] = (),
    bands: Sequence[Mapping[str, Any]] = (),
) -> str:
    """One series as a line over a light area."""
    peak = max((v for v in values if v is not None), default=0.0)
    frame = _Frame(times, step, _nice(peak))
    zero: list[float | None] = [0.0 if v is not None else None for v in values]
    series = {"key": name, "label": name, "href": "", "values": values}
    body = (
        _bands(bands, frame)
        + _axes(frame, times, unit)
        + _area(frame, times, step, zero, list(values), "s0 line", series)
        + _markers(markers, frame)
    )
    return _svg(name, sum(1 for v in values if v is not None), 1, body)


def legend(series: Sequence[Mapping[str, Any]]) -> str:
    items = []
    for k, s in enumerate(series):
        css = "s-other" if s["key"] == "other" else f"s{k % PALETTE}"
        label = escape(s["label"])
        text = f'<a href="{escape(s["href"])}">{label}</a>' if s["href"] else label
        items.append(f'<li><span class="swatch {css}"></span><code>{text}</code></li>')
    return f'<ul class="legend">{"".join(reversed(items))}</ul>'


def _stack(series: Sequence[Mapping[str, Any]], n: int) -> list[list[float | None]]:
    """Cumulative tops of each series; a bucket where no series has data stays None."""
    tops: list[list[float | None]] = []
    running: list[float | None] = [None] * n
    for s in series:
        row: list[float | None] = []
        for i, v in enumerate(s["values"]):
            base = running[i]
            row.append(None if v is None and base is None else (base or 0.0) + (v or 0.0))
        tops.append(row)
        running = row
    return tops


def _runs(values: Sequence[float | None]) -> list[list[int]]:
    """Index runs without a None."""
    runs: list[list[int]] = []
    current: list[int] = []
    for i, v in enumerate(values):
        if v is None:
            if current:
                runs.append(current)
            current = []
        else:
            current.append(i)
    if current:
        runs.append(current)
    return runs


def _area(
    frame: _Frame,
    times: Sequence[float],
    step: float,
    below: Sequence[float | None],
    above: Sequence[float | None],
    css: str,
    series: Mapping[str, Any],
) -> str:
    paths = []
    for run in _runs(above):
        upper = [(frame.x(times[i] + step / 2), frame.y(above[i] or 0.0)) for i in run]
        lower = [(frame.x(times[i] + step / 2), frame.y(below[i] or 0.0)) for i in reversed(run)]
        if len(run) == 1:  # a lone bucket: draw it as a bar one bucket wide
            x0, x1 = frame.x(times[run[0]]), frame.x(times[run[0]] + step)
            upper = [(x0, upper[0][1]), (x1, upper[0][1])]
            lower = [(x1, lower[0][1]), (x0, lower[0][1])]
        points = " L".join(f"{x},{y}" for x, y in upper + lower)
        paths.append(f"M{points} Z")
    if not paths:
        return ""
    title = escape(series["label"])
    return (
        f'<path class="area {css}" data-key="{escape(series["key"])}" d="{" ".join(paths)}">'
        f"<title>{title}</title></path>"
    )


def _axes(frame: _Frame, times: Sequence[float], unit: str) -> str:
    parts = [
        f'<line class="axis" x1="{LEFT}" y1="{TOP + PLOT_H}" x2="{LEFT + PLOT_W}" y2="{TOP + PLOT_H}"/>'
    ]
    for v in (frame.top / 2, frame.top):
        y = frame.y(v)
        parts.append(f'<line class="grid" x1="{LEFT}" y1="{y}" x2="{LEFT + PLOT_W}" y2="{y}"/>')
        parts.append(
            f'<text class="tick" x="{LEFT - 6}" y="{y + 4}" text-anchor="end">{_num(v)}</text>'
        )
    parts.append(
        f'<text class="unit" x="{LEFT - 6}" y="{TOP + PLOT_H}" text-anchor="end">{escape(unit)}</text>'
    )
    if times:
        span = frame.t1 - frame.t0
        fmt = "%H:%M:%S" if span <= 1800 else "%H:%M" if span <= 2 * 86400 else "%b %d"
        for k in range(6):
            t = frame.t0 + span * k / 6
            label = datetime.fromtimestamp(t, UTC).strftime(fmt)
            parts.append(
                f'<text class="tick" x="{frame.x(t)}" y="{HEIGHT - 6}" text-anchor="middle">{label}</text>'
            )
    return "".join(parts)


def _bands(bands: Sequence[Mapping[str, Any]], frame: _Frame) -> str:
    parts = []
    for b in bands:
        if b["end"] < frame.t0 or b["start"] > frame.t1:
            continue
        x0, x1 = frame.x(max(b["start"], frame.t0)), frame.x(min(b["end"], frame.t1))
        parts.append(
            f'<a href="{escape(b["href"])}"><rect class="band band-{escape(b["state"])}" '
            f'data-incident="{escape(b["label"])}" x="{x0}" y="{TOP}" width="{max(x1 - x0, 3)}" '
            f'height="{PLOT_H}"><title>incident {escape(b["label"])} ({escape(b["state"])})</title>'
            "</rect></a>"
        )
    return "".join(parts)


def _markers(markers: Sequence[Mapping[str, Any]], frame: _Frame) -> str:
    parts = []
    for m in markers:
        if not frame.t0 <= m["t"] <= frame.t1:
            continue
        x = frame.x(m["t"])
        label = escape(m["label"])
        right = x > LEFT + PLOT_W * 0.8  # label on the left of the line near the right edge
        anchor = f'x="{x - 3}" text-anchor="end"' if right else f'x="{x + 3}"'
        parts.append(
            f'<g class="deploy" data-version="{label}"><line x1="{x}" y1="{TOP}" x2="{x}" '
            f'y2="{TOP + PLOT_H}"/><text {anchor} y="{TOP - 5}">{label}</text>'
            f"<title>deploy {label} at {escape(str(m.get('at', '')))}</title></g>"
        )
    return "".join(parts)


def _svg(name: str, points: int, series: int, body: str) -> str:
    return (
        f'<svg class="chart" data-chart="{escape(name)}" data-points="{points}" '
        f'data-series="{series}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(name)}" xmlns="http://www.w3.org/2000/svg">{body}</svg>'
    )


def _nice(peak: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above ``peak``."""
    if peak <= 0:
        return 1.0
    scale = 10.0 ** math.floor(math.log10(peak))
    for m in (1, 2, 5, 10):
        if m * scale >= peak:
            return m * scale
    return 10 * scale


def _num(v: float) -> str:
    if v >= 1000:
        return f"{v / 1000:g}k"
    return f"{v:g}"

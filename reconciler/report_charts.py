"""The report's trend charts as inline SVG, written by hand (pure: values in, markup out).

Invariant: every chart is one self-contained ``<svg>`` element (no script, no external reference, every text
escaped), sized by its ``viewBox`` so the page's CSS scales it; the same input always gives the same markup.
Floats are used for drawing only: the tables beside the charts show the exact amounts.

Why not matplotlib: three small line charts do not need a plotting library, and importing matplotlib's pyplot
cost about 0.3 s per process plus about 0.04 s per chart, a fixed cost paid by every run's report (most of
an incremental run's report step); this module costs a few milliseconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

WIDTH, HEIGHT = 520, 240
LEFT, RIGHT, TOP, BOTTOM = 58, 14, 30, 40
LINE = "#1f4e79"
GRID = "#dddddd"
INK = "#333333"
MUTED = "#666666"
#: At most this many labelled ticks on each axis.
MAX_TICKS = 10
Y_BINS = 5


def tick_label(value: float) -> str:
    """A y tick as people read it: thousands separated, decimals only for small fractional values."""
    return f"{value:,.0f}" if value == int(value) or abs(value) >= 100 else f"{value:,.2f}"


def nice_step(span: float, bins: int = Y_BINS) -> float:
    """A round step (1, 2, 2.5 or 5 times a power of ten) giving at most ``bins`` intervals over ``span`` > 0."""
    raw = span / bins
    power = 10.0 ** math.floor(math.log10(raw))
    for factor in (1.0, 2.0, 2.5, 5.0, 10.0):
        if factor * power >= raw * (1 - 1e-9):
            return factor * power
    return 10.0 * power


def y_ticks(values: Sequence[float]) -> list[float]:
    """Tick values from 0 (or below, for negative values) to just above the largest value."""
    low = min(0.0, *values) if values else 0.0
    high = max(0.0, *values) if values else 0.0
    if high - low <= 0:
        high = low + 1.0
    step = nice_step(high - low)
    first = math.floor(low / step + 1e-9) * step
    count = math.ceil((high - first) / step - 1e-9)
    return [round(first + i * step, 10) for i in range(max(1, count) + 1)]


def line_chart(labels: Sequence[str], values: Sequence[float | None], title: str, unit: str) -> str:
    """One line chart: ``values`` (None where a run has no value) over the runs named by ``labels``."""
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    known = [(i, v) for i, v in enumerate(values) if v is not None]
    ticks = y_ticks([v for _, v in known])
    low, high = ticks[0], ticks[-1]

    def x_at(i: int) -> float:
        return LEFT + (plot_w / 2 if len(labels) <= 1 else plot_w * i / (len(labels) - 1))

    def y_at(v: float) -> float:
        return TOP + plot_h - plot_h * (v - low) / (high - low)

    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" '
             f'height="{HEIGHT}" role="img" aria-label="{escape(title)}" font-family="sans-serif" font-size="9">',
             f"<title>{escape(title)}</title>",
             f'<text x="{LEFT - 50}" y="16" font-size="10" fill="{INK}">{escape(title)}</text>']
    for tick in ticks:
        y = y_at(tick)
        parts.append(f'<line x1="{LEFT}" y1="{y:.1f}" x2="{WIDTH - RIGHT}" y2="{y:.1f}" stroke="{GRID}" '
                     f'stroke-width="0.6"/>')
        parts.append(f'<text x="{LEFT - 6}" y="{y + 3:.1f}" text-anchor="end" fill="{INK}">'
                     f"{escape(tick_label(tick))}</text>")
    parts.append(f'<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{TOP + plot_h}" stroke="{INK}" stroke-width="0.8"/>')
    parts.append(f'<line x1="{LEFT}" y1="{TOP + plot_h}" x2="{WIDTH - RIGHT}" y2="{TOP + plot_h}" stroke="{INK}" '
                 f'stroke-width="0.8"/>')
    step = max(1, len(labels) // MAX_TICKS)
    for i in range(0, len(labels), step):
        x = x_at(i)
        parts.append(f'<line x1="{x:.1f}" y1="{TOP + plot_h}" x2="{x:.1f}" y2="{TOP + plot_h + 4}" stroke="{INK}" '
                     f'stroke-width="0.8"/>')
        parts.append(f'<text x="{x:.1f}" y="{TOP + plot_h + 15}" text-anchor="middle" fill="{INK}">'
                     f"{escape(labels[i])}</text>")
    parts.append(f'<text x="{LEFT + plot_w / 2:.1f}" y="{HEIGHT - 6}" text-anchor="middle" fill="{INK}">run</text>')
    parts.append(f'<text transform="translate(12 {TOP + plot_h / 2:.1f}) rotate(-90)" text-anchor="middle" '
                 f'fill="{INK}">{escape(unit)}</text>')
    if known:
        points = " ".join(f"{x_at(i):.1f},{y_at(v):.1f}" for i, v in known)
        parts.append(f'<polyline points="{points}" fill="none" stroke="{LINE}" stroke-width="1.6" '
                     f'stroke-linejoin="round"/>')
        parts.extend(f'<circle cx="{x_at(i):.1f}" cy="{y_at(v):.1f}" r="2.5" fill="{LINE}"/>' for i, v in known)
    else:
        parts.append(f'<text x="{LEFT + plot_w / 2:.1f}" y="{TOP + plot_h / 2:.1f}" text-anchor="middle" '
                     f'fill="{MUTED}">no data yet</text>')
    parts.append("</svg>")
    return "\n".join(parts)

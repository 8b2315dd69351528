"""Charts as inline SVG, written in Python: no script, no library, nothing fetched when the page is viewed.

One chart kind, stacked bars on a category axis (days, or cost buckets), serves the three charts. Each SVG
is ``role="img"`` labelled by its ``<title>`` and ``<desc>`` (the text alternative); each bar segment is a
``class="mark"`` rect whose own ``<title>`` is its tooltip. Every text is escaped: team names are client
data.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from html import escape

from ..values import value
from .report_format import nice_ticks

# Okabe-Ito: distinguishable with the common colour-vision deficiencies, and in print.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#8C6D31", "#F0E442")
OTHER_COLOR = "#999999"

WIDTH, HEIGHT = 880, 300
LEFT, RIGHT, TOP, BOTTOM = 76, 12, 14, 58
MAX_X_LABELS = 12


@value
class Series:
    name: str
    values: tuple[float, ...]
    color: str


@value
class Chart:
    id: str  # unique in the page: the ids of its title and desc derive from it
    title: str
    desc: str  # the text alternative: what the chart shows, in a sentence or two
    x_label: str
    y_label: str
    labels: tuple[str, ...]  # one per bar
    series: tuple[Series, ...]  # stacked bottom up, each with one value per bar
    fmt: Callable[[float], str]  # a value for a tooltip
    tick_fmt: Callable[[float], str]  # a value on the y axis
    axis_labels: tuple[str, ...] = ()  # shorter labels for the x axis (default: ``labels``)
    at_edges: bool = False  # x labels at each bar's left edge (a histogram's bucket bounds), not its middle


def attr(text: str) -> str:
    return escape(text, quote=True)


def stacked_bars(chart: Chart) -> str:
    """The chart as one ``<svg>`` element."""
    n = len(chart.labels)
    totals = [sum(s.values[i] for s in chart.series) for i in range(n)]
    ticks = nice_ticks(max(totals, default=0.0))
    top = ticks[-1]
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    band = plot_w / max(n, 1)

    def y(v: float) -> float:
        return TOP + plot_h - (v / top) * plot_h

    parts = [_open(chart), *_y_axis(ticks, y, chart.tick_fmt)]
    parts += _bars(chart, band, y)
    parts += _x_axis(chart.axis_labels or chart.labels, band, 0.0 if chart.at_edges else 0.5)
    parts.append(_axis_titles(chart))
    parts.append("</svg>")
    return "\n".join(parts)


def _open(chart: Chart) -> str:
    cid = attr(chart.id)
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" id="{cid}" role="img" '
        f'aria-labelledby="{cid}-title {cid}-desc" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'preserveAspectRatio="xMidYMid meet">\n'
        f'<title id="{cid}-title">{escape(chart.title)}</title>\n'
        f'<desc id="{cid}-desc">{escape(chart.desc)}</desc>'
    )


def _y_axis(ticks: Sequence[float], y: Callable[[float], float], fmt: Callable[[float], str]) -> list[str]:
    out = ['<g class="axis y-axis" aria-hidden="true">']
    for t in ticks:
        yy = f"{y(t):.1f}"
        out.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{yy}" y2="{yy}"/>')
        out.append(
            f'<text x="{LEFT - 6}" y="{yy}" text-anchor="end" dominant-baseline="middle">{escape(fmt(t))}</text>'
        )
    out.append(f'<line class="axis-line" x1="{LEFT}" x2="{LEFT}" y1="{TOP}" y2="{HEIGHT - BOTTOM}"/>')
    out.append("</g>")
    return out


def _bars(chart: Chart, band: float, y: Callable[[float], float]) -> list[str]:
    width = max(band * 0.78, 1.0)
    out = ['<g class="marks">']
    for i, label in enumerate(chart.labels):
        x = LEFT + i * band + (band - width) / 2
        base = 0.0
        for s in chart.series:
            v = s.values[i]
            if v <= 0:
                continue
            y0, y1 = y(base), y(base + v)
            tip = f"{label} \u00b7 {s.name}: {chart.fmt(v)}" if len(chart.series) > 1 else f"{label}: {chart.fmt(v)}"
            out.append(
                f'<rect class="mark" x="{x:.1f}" y="{y1:.1f}" width="{width:.1f}" height="{max(y0 - y1, 0.5):.1f}" '
                f'fill="{attr(s.color)}"><title>{escape(tip)}</title></rect>'
            )
            base += v
    out.append("</g>")
    return out


def _x_axis(labels: Sequence[str], band: float, offset: float) -> list[str]:
    every = max(1, math.ceil(len(labels) / MAX_X_LABELS))
    base = HEIGHT - BOTTOM
    out = [
        '<g class="axis x-axis" aria-hidden="true">',
        f'<line class="axis-line" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{base}" y2="{base}"/>',
    ]
    for i, label in enumerate(labels):
        if i % every:
            continue
        x = LEFT + (i + offset) * band
        out.append(f'<text x="{x:.1f}" y="{base + 16}" text-anchor="middle">{escape(label)}</text>')
    out.append("</g>")
    return out


def _axis_titles(chart: Chart) -> str:
    mid_y = TOP + (HEIGHT - TOP - BOTTOM) / 2
    mid_x = LEFT + (WIDTH - LEFT - RIGHT) / 2
    return (
        f'<text class="axis-title" x="{mid_x:.1f}" y="{HEIGHT - 8}" text-anchor="middle">'
        f"{escape(chart.x_label)}</text>\n"
        f'<text class="axis-title" transform="translate(16 {mid_y:.1f}) rotate(-90)" text-anchor="middle">'
        f"{escape(chart.y_label)}</text>"
    )


def legend(series: Sequence[Series]) -> str:
    """The series' names and colours, as HTML (read by screen readers, kept in print)."""
    items = "".join(
        f'<li><span class="swatch" style="background:{attr(s.color)}" aria-hidden="true"></span>{escape(s.name)}</li>'
        for s in series
    )
    return f'<ul class="legend">{items}</ul>'


def data_table(chart: Chart) -> str:
    """The chart's numbers as a table, behind a disclosure: the long text alternative."""
    multi = len(chart.series) > 1
    head = "".join(f"<th scope='col'>{escape(s.name)}</th>" for s in chart.series) if multi else ""
    head = (
        f"<tr><th scope='col'>{escape(chart.x_label)}</th>{head or '<th scope=col>' + escape(chart.y_label) + '</th>'}"
    )
    head += "<th scope='col'>Total</th></tr>" if multi else "</tr>"
    rows = []
    for i, label in enumerate(chart.labels):
        cells = "".join(f"<td>{escape(chart.fmt(s.values[i]))}</td>" for s in chart.series)
        total = f"<td>{escape(chart.fmt(sum(s.values[i] for s in chart.series)))}</td>" if multi else ""
        rows.append(f"<tr><th scope='row'>{escape(label)}</th>{cells}{total}</tr>")
    return (
        f'<details class="data"><summary>Data table: {escape(chart.title)}</summary>'
        f'<table class="num"><thead>{head}</thead><tbody>{"".join(rows)}</tbody></table></details>'
    )

"""The report as one self-contained HTML page: inline CSS and SVG, no script, nothing loaded at view time.

Light, print-friendly, one heading per section; every value that came from the ledger or the config is
escaped (team names, key names and tags are client data).
"""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from ..values import value
from .report_burn import Burn
from .report_charts import context_chart, cost_chart, spend_chart
from .report_data import CostBucket, DayContext, DaySpend, Totals
from .report_format import count, date, day_label, money, percent, signed_money, tokens, when
from .report_svg import Chart, data_table, legend, stacked_bars

TOP_EFFECTS = 5


@value
class EffectRow:
    team: str
    model: str
    driver: str
    micro_usd: int


@value
class ExplainView:
    """What the page shows of an explanation of the period against its baseline."""

    sentence: str
    baseline_cost_micro: int
    period_cost_micro: int
    baseline_requests: int
    period_requests: int
    effects: tuple[EffectRow, ...]  # the largest, by size
    notes: tuple[str, ...] = ()  # what the reader should know about the comparison (explain's notes)


@value
class ReportData:
    title: str
    start: float
    end: float
    baseline_start: float
    generated: float
    days: tuple[int, ...]  # days since the epoch covered by the period
    totals: Totals
    spend: tuple[DaySpend, ...]
    context: tuple[DayContext, ...]
    costs: tuple[CostBucket, ...]
    burns: tuple[Burn, ...]
    explain: ExplainView | None  # None: no request in the period


def render(data: ReportData) -> str:
    body = [_header(data)]
    if data.totals.requests == 0:
        body.append(
            '<section class="empty" aria-labelledby="empty-h"><h2 id="empty-h">No data</h2>'
            f"<p>The ledger has no charged request between {escape(when(data.start))} and "
            f"{escape(when(data.end))}: nothing to chart. Widen the period with <code>--since</code>, or check "
            "that the config names the ledger the gateway writes.</p></section>"
        )
    else:
        body.append(_figure(spend_chart(data.days, data.spend), "Each bar is one UTC day, split by team."))
        body.append(
            _figure(
                context_chart(data.days, data.context),
                "Average counted input per request, by the part of the context it came from: history that grows "
                "day after day is a conversation re-sending its past turns.",
            )
        )
        body.append(_figure(cost_chart(data.costs), "How many requests cost how much, on a log scale."))
        body.append(_explain(data))
    body.append(_budgets(data.burns, data.generated))
    return _document(data.title, "\n".join(body), data.generated)


def _header(data: ReportData) -> str:
    t = data.totals
    days = round((data.end - data.start) / 86_400, 1)
    avg = money(t.cost_micro / t.requests) if t.requests else "\u2014"
    return (
        f"<header><h1>{escape(data.title)}</h1>"
        f'<p class="meta">Period: <strong>{escape(when(data.start))}</strong> to '
        f"<strong>{escape(when(data.end))}</strong> ({days:g} days); compared with the {days:g} days before it "
        f"(from {escape(when(data.baseline_start))}). Generated {escape(when(data.generated))}.</p>"
        '<dl class="totals">'
        f"<div><dt>Spend</dt><dd>{money(t.cost_micro)}</dd></div>"
        f"<div><dt>Requests</dt><dd>{count(t.requests)}</dd></div>"
        f"<div><dt>Average per request</dt><dd>{avg}</dd></div>"
        f"<div><dt>Input</dt><dd>{tokens(t.input_tokens)}</dd></div>"
        f"<div><dt>Output</dt><dd>{tokens(t.output_tokens)}</dd></div>"
        "</dl></header>"
    )


def _figure(chart: Chart, caption: str) -> str:
    head = (
        f'<section class="chart-section" aria-labelledby="{chart.id}-h">'
        f'<h2 id="{chart.id}-h">{escape(chart.title)}</h2>'
    )
    if not any(v > 0 for s in chart.series for v in s.values):
        return f'{head}<p class="nodata">Nothing to chart: {escape(chart.desc)}</p></section>'
    legend_html = legend(chart.series) if len(chart.series) > 1 else ""
    return (
        f"{head}"
        f"<figure>{legend_html}{stacked_bars(chart)}"
        f"<figcaption>{escape(caption)} {escape(chart.desc)}</figcaption></figure>"
        f"{data_table(chart)}</section>"
    )


def _explain(data: ReportData) -> str:
    head = '<section class="explain" aria-labelledby="explain-h"><h2 id="explain-h">What changed</h2>'
    x = data.explain
    if x is None:
        return f"{head}<p>No request in the period: nothing to explain.</p></section>"
    summary = (
        f"This period {money(x.period_cost_micro)} over {count(x.period_requests)} requests; the one before "
        f"{money(x.baseline_cost_micro)} over {count(x.baseline_requests)}."
    )
    top = x.effects[:TOP_EFFECTS]
    rows = "".join(
        f"<tr><td>{escape(e.team)}</td><td>{escape(e.model)}</td><td>{escape(e.driver)}</td>"
        f"<td>{escape(signed_money(e.micro_usd))}</td></tr>"
        for e in top
    )
    table = (
        '<table class="effects"><caption>The largest effects on spend, period against baseline</caption>'
        "<thead><tr><th scope='col'>Team</th><th scope='col'>Model</th><th scope='col'>Driver</th>"
        f"<th scope='col' class='n'>Change</th></tr></thead><tbody>{rows}</tbody></table>"
        if top
        else "<p>No effect to show.</p>"
    )
    notes = "".join(f"<li>{escape(n)}</li>" for n in x.notes)
    notes_html = f'<ul class="notes">{notes}</ul>' if notes else ""
    return f'{head}<p class="sentence">{escape(x.sentence)}</p><p>{summary}</p>{table}{notes_html}</section>'


def _amount(value: float, unit: str) -> str:
    return money(value) if unit == "usd" else tokens(value)


def _exhaustion(b: Burn) -> str:
    if b.exhausted:
        return "exhausted"
    if b.exhausts_at is None:
        return "not before the window resets"
    return date(b.exhausts_at) if b.window.startswith(("week", "month", "quarter")) else when(b.exhausts_at)


def _burn_row(b: Burn) -> str:
    who = escape(b.team) if b.key_name is None else f"{escape(b.team)} \u00b7 key {escape(b.key_name)}"
    width = min(b.fraction, 1.0) * 100
    meter = (
        f'<span class="bar" aria-hidden="true"><span style="width:{width:.1f}%" '
        f'class="{"over" if b.fraction >= 0.9 else "ok"}"></span></span>'
    )
    start = b.window_start  # a budget in another calendar than UTC's starts off UTC midnight: say when
    since = day_label(int(start // 86_400)) if start % 86_400 == 0 else when(start)
    cells = [
        f"{escape(b.window)}<br><small>from {escape(since)}</small>",
        escape(_amount(b.limit, b.unit)),
        escape(_amount(b.spent, b.unit)),
        f"{meter} {escape(percent(b.fraction))}",
        escape(_amount(b.daily_rate, b.unit)),
        escape(_exhaustion(b)),
    ]
    return f"<tr><th scope='row'>{who}</th>{''.join(f'<td>{c}</td>' for c in cells)}</tr>"


def _budgets(burns: Sequence[Burn], now: float) -> str:
    head = '<section class="budgets" aria-labelledby="budgets-h"><h2 id="budgets-h">Budget burn</h2>'
    if not burns:
        return f"{head}<p>The config sets no budget.</p></section>"
    rows = [_burn_row(b) for b in burns]
    return (
        f"{head}<p>Spent in each budget's current window (from the ledger, to {escape(when(now))}) against its "
        "limit, and when it runs out at the window's rate so far.</p>"
        '<table class="burn"><thead><tr><th scope="col">Budget</th><th scope="col">Window</th>'
        '<th scope="col">Limit</th><th scope="col">Spent</th><th scope="col">Used</th>'
        '<th scope="col">Rate per day</th><th scope="col">Projected exhaustion</th></tr></thead>'
        f"<tbody>{''.join(rows)}</tbody></table></section>"
    )


CSS = """
:root { color-scheme: light; --ink: #1b1f24; --muted: #57606a; --line: #d0d7de; --bg: #fff; }
* { box-sizing: border-box; }
body { margin: 0 auto; max-width: 960px; padding: 24px 20px 48px; background: var(--bg); color: var(--ink);
  font: 15px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
h1 { font-size: 1.7rem; margin: 0 0 4px; }
h2 { font-size: 1.2rem; margin: 0 0 8px; }
section { margin-top: 28px; break-inside: avoid; page-break-inside: avoid; }
.meta { color: var(--muted); margin: 0 0 12px; }
.totals { display: flex; flex-wrap: wrap; gap: 8px 28px; margin: 0; }
.totals dt { color: var(--muted); font-size: 0.85rem; }
.totals dd { margin: 0; font-size: 1.25rem; font-weight: 600; font-variant-numeric: tabular-nums; }
figure { margin: 0; }
figcaption { color: var(--muted); font-size: 0.9rem; margin-top: 4px; }
svg.chart { width: 100%; height: auto; display: block; font-size: 11px; }
svg.chart text { fill: var(--ink); }
svg.chart .axis-title { font-size: 12px; font-weight: 600; }
svg.chart .grid { stroke: #e5e8eb; stroke-width: 1; }
svg.chart .axis-line { stroke: #8c959f; stroke-width: 1; }
svg.chart rect.mark:hover { opacity: 0.8; }
.legend { list-style: none; display: flex; flex-wrap: wrap; gap: 4px 16px; padding: 0; margin: 0 0 4px; }
.swatch { display: inline-block; width: 12px; height: 12px; margin-right: 6px; vertical-align: -1px;
  border-radius: 2px; }
table { border-collapse: collapse; width: 100%; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 5px 8px; border-bottom: 1px solid var(--line); vertical-align: top; }
thead th { border-bottom: 2px solid var(--ink); font-size: 0.9rem; }
caption { text-align: left; color: var(--muted); font-size: 0.9rem; padding-bottom: 4px; }
table.effects td:last-child, table.effects th.n, table.burn td:nth-child(n+3), table.num td { text-align: right; }
table.burn td:nth-child(n+3):nth-child(-n+6), table.burn small { white-space: nowrap; }
small { color: var(--muted); }
.sentence { font-size: 1.1rem; border-left: 4px solid #0072B2; padding: 4px 12px; background: #f3f7fb; }
.bar { display: inline-block; width: 60px; height: 8px; background: #eaeef2; border-radius: 4px;
  vertical-align: middle; overflow: hidden; }
.bar span { display: block; height: 100%; }
.bar .ok { background: #0072B2; } .bar .over { background: #D55E00; }
details.data { margin-top: 6px; font-size: 0.9rem; }
details.data table { margin-top: 4px; }
.empty { border: 1px solid var(--line); border-radius: 6px; padding: 12px 16px; background: #f6f8fa; }
footer { margin-top: 32px; color: var(--muted); font-size: 0.85rem; }
* { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
@media print {
  body { max-width: none; padding: 0; font-size: 11pt; }
  details.data { display: none; }
  th, td { padding: 3px 5px; }
  .bar { width: 36px; }
  section { margin-top: 16pt; }
  @page { margin: 14mm; }
}
"""


def _document(title: str, body: str, generated: float) -> str:
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<meta name="color-scheme" content="light">'
        f"<title>{escape(title)}</title><style>{CSS}</style></head>\n"
        f"<body>\n<main>\n{body}\n</main>\n"
        f"<footer>quotagate report, generated {escape(when(generated))} from the ledger. Amounts in US dollars; "
        "days and times in UTC.</footer>\n</body></html>\n"
    )

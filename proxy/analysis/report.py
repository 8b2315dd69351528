"""``quotagate report``: the period's aggregates read from a ``LedgerDB``, rendered as one HTML page.

The period is the ``--since`` window ending now; its baseline, for the explanation of what changed, the
equally long window before it. Modules: ``report_data`` (the SQL), ``report_burn`` (budgets),
``report_charts`` and ``report_svg`` (the charts), ``report_format`` (numbers for people), ``report_page``
(the HTML).
"""

from __future__ import annotations

import math

from ..settings import Settings
from .db import LedgerDB
from .explain import explain
from .explain_text import WHAT
from .periods import Period
from .report_burn import budget_burn
from .report_data import DAY, context_by_day, cost_histogram, spend_by_day, totals
from .report_page import TOP_EFFECTS, EffectRow, ExplainView, ReportData, render

TITLE = "quotagate spend report"


def days_between(start: float, end: float) -> tuple[int, ...]:
    """The UTC days (since the epoch) that [start, end) touches."""
    first, last = math.floor(start / DAY), math.floor((end - 1e-6) / DAY)
    return tuple(range(first, max(last, first) + 1))


def baseline_of(period: Period) -> Period:
    """The equally long window just before ``period``."""
    return Period(period.start - period.seconds, period.start)


async def explain_view(db: LedgerDB, period: Period) -> ExplainView:
    """The explanation of ``period`` against its baseline, as the page shows it (the top effects)."""
    x = await explain(db, period, baseline_of(period))
    effects = tuple(EffectRow(e.team, e.model, WHAT.get(e.driver, e.driver), e.micro_usd) for e in x.effects)
    top = sorted(effects, key=lambda e: -abs(e.micro_usd))[:TOP_EFFECTS]
    return ExplainView(
        x.sentence, x.baseline_cost_micro, x.period_cost_micro, x.baseline_requests, x.period_requests, tuple(top),
        tuple(x.notes),
    )  # fmt: skip


async def collect(db: LedgerDB, settings: Settings, period: Period, now: float, *, title: str = TITLE) -> ReportData:
    start, end = period.start, period.end
    t = await totals(db, start, end)
    return ReportData(
        title=title,
        start=start,
        end=end,
        baseline_start=baseline_of(period).start,
        generated=now,
        days=days_between(start, end),
        totals=t,
        spend=tuple(await spend_by_day(db, start, end)),
        context=tuple(await context_by_day(db, start, end)),
        costs=tuple(await cost_histogram(db, start, end)),
        burns=tuple(await budget_burn(db, settings, now)),
        explain=await explain_view(db, period) if t.requests else None,
    )


async def build_report(db: LedgerDB, settings: Settings, period: Period, now: float) -> str:
    """The page's HTML."""
    return render(await collect(db, settings, period, now))

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
from .report_burn import budget_burn
from .report_data import DAY, context_by_day, cost_histogram, spend_by_day, totals
from .report_page import ExplainView, ReportData, render

TITLE = "quotagate spend report"


def days_between(start: float, end: float) -> tuple[int, ...]:
    """The UTC days (since the epoch) that [start, end) touches."""
    first, last = math.floor(start / DAY), math.floor((end - 1e-6) / DAY)
    return tuple(range(first, max(last, first) + 1))


async def collect(
    db: LedgerDB,
    settings: Settings,
    *,
    start: float,
    end: float,
    now: float,
    explain: ExplainView | None = None,
    explain_note: str | None = None,
    title: str = TITLE,
) -> ReportData:
    return ReportData(
        title=title,
        start=start,
        end=end,
        baseline_start=start - (end - start),
        generated=now,
        days=days_between(start, end),
        totals=await totals(db, start, end),
        spend=tuple(await spend_by_day(db, start, end)),
        context=tuple(await context_by_day(db, start, end)),
        costs=tuple(await cost_histogram(db, start, end)),
        burns=tuple(await budget_burn(db, settings, now)),
        explain=explain,
        explain_note=explain_note,
    )


async def build_report(db: LedgerDB, settings: Settings, *, start: float, end: float, now: float) -> str:
    """The page's HTML."""
    data = await collect(db, settings, start=start, end=end, now=now, explain_note="not available yet")
    return render(data)

"""Which counters a request holds, for how much, and until when. No I/O.

Every limit that applies to a request becomes one ``Hold`` on a counter whose key names the team (as the
Redis Cluster hash tag), the scope, the limit and the calendar window instance (UTC, unless the budget
names its ``timezone``)::

    {team}:t:b:day:tokens:2026-11-24       team budget, tokens, today
    {team}:k:<key8>:b:month:usd:2026-11    key budget, micro-USD, this month
    {team}:t:b:day@Europe/Paris:usd:2026-11-24     a day of Paris' calendar
    {team}:t:b:quarter/q4:usd:2026-10/Q    a fiscal quarter (from April)
    {team}:t:tpm:2026-11-24T10:31          tokens this minute
    {team}:t:rpm:2026-11-24T10:31          requests this minute
    {team}:t:conc                          requests in flight (released, never committed)

A new window is a new key, so rollover needs no reset job; counters expire a day after their window.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Literal
from zoneinfo import ZoneInfo

from .settings import BudgetSettings, RateLimitSettings, Window
from .settings_budget import WEEKDAYS
from .store.base import Hold, hash_tag
from .values import value

Unit = Literal["tokens", "usd", "requests", "concurrent"]
_RETAIN = 86_400.0


def window_bounds(
    window: Window, now: float, tz: tzinfo = UTC, *, week_start: int = 0, quarter_start_month: int = 1
) -> tuple[str, float, float]:
    """(id, start, end) of the calendar window containing ``now``, in epoch seconds: the calendar of ``tz``
    (a local day across a DST change lasts 23 or 25 hours), weeks from ``week_start`` (0: Monday),
    quarters from ``quarter_start_month``. The id names the window in the calendar's own dates."""
    t = datetime.fromtimestamp(now, tz)
    if window == "minute":
        start = t.replace(second=0, microsecond=0)
        return start.strftime("%Y-%m-%dT%H:%M"), start.timestamp(), start.timestamp() + 60
    if window == "hour":
        start = t.replace(minute=0, second=0, microsecond=0)
        return start.strftime("%Y-%m-%dT%H"), start.timestamp(), start.timestamp() + 3600
    day = date(t.year, t.month, t.day)
    if window == "day":
        return day.isoformat(), _midnight(day, tz), _midnight(day + timedelta(days=1), tz)
    if window == "week":
        first = day - timedelta(days=(day.weekday() - week_start) % 7)
        wid = f"{first.isocalendar().year}-W{first.isocalendar().week:02d}" if week_start == 0 else first.isoformat()
        return wid, _midnight(first, tz), _midnight(first + timedelta(days=7), tz)
    months = 3 if window == "quarter" else 1
    offset = (quarter_start_month - 1) % 3 if window == "quarter" else 0
    index = (day.year * 12 + day.month - 1 - offset) // months * months + offset  # months since year 0
    first = date(index // 12, index % 12 + 1, 1)
    after = index + months
    wid = first.strftime("%Y-%m") if window == "month" else f"{first:%Y-%m}/Q"
    return wid, _midnight(first, tz), _midnight(date(after // 12, after % 12 + 1, 1), tz)


def budget_bounds(b: BudgetSettings, now: float) -> tuple[str, float, float]:
    """The window of budget ``b`` containing ``now``, in its own calendar."""
    tz = ZoneInfo(b.timezone) if b.timezone else UTC
    return window_bounds(
        b.window, now, tz, week_start=WEEKDAYS.index(b.week_start), quarter_start_month=b.quarter_start_month
    )


def _midnight(d: date, tz: tzinfo) -> float:
    return datetime(d.year, d.month, d.day, tzinfo=tz).timestamp()


@value
class Limit:
    """One limit that applies to a request, before it is sized into a Hold."""

    key: str
    limit: int
    unit: Unit
    window: Window | None
    window_end: float
    scope: str  # "team" | "key"
    budget: BudgetSettings | None = None

    def hold(self, amount: int) -> Hold:
        expires = 0.0 if self.window is None else self.window_end + _RETAIN
        return Hold(self.key, self.limit, amount, expires, commit=self.unit != "concurrent")


tag = hash_tag  # the team's {team} hash tag, defined once by the store contract


def limits_for(
    team: str,
    key_digest: str,
    team_budgets: Sequence[BudgetSettings],
    team_rates: RateLimitSettings,
    key_budgets: Sequence[BudgetSettings],
    key_rates: RateLimitSettings,
    now: float,
) -> list[Limit]:
    out: list[Limit] = []
    team_prefix = f"{tag(team)}:t"
    key_prefix = f"{tag(team)}:k:{key_digest[:16]}"
    for prefix, scope, budgets, rates in (
        (team_prefix, "team", team_budgets, team_rates),
        (key_prefix, "key", key_budgets, key_rates),
    ):
        for b in budgets:
            wid, _, end = budget_bounds(b, now)
            key = f"{prefix}:b:{b.window}{b.calendar}:{b.unit}:{wid}"
            out.append(Limit(key, b.limit, b.unit, b.window, end, scope, b))
        if rates.tpm or rates.rpm:
            wid, _, end = window_bounds("minute", now)
            if rates.tpm:
                out.append(Limit(f"{prefix}:tpm:{wid}", rates.tpm, "tokens", "minute", end, scope))
            if rates.rpm:
                out.append(Limit(f"{prefix}:rpm:{wid}", rates.rpm, "requests", "minute", end, scope))
        if rates.concurrent:
            out.append(Limit(f"{prefix}:conc", rates.concurrent, "concurrent", None, 0.0, scope))
    return out


def holds(limits: Iterable[Limit], worst_tokens: int, worst_micro_usd: int) -> tuple[Hold, ...]:
    return tuple(lim.hold(amount_for(lim.unit, worst_tokens, worst_micro_usd)) for lim in limits)


def amount_for(unit: Unit, tokens: int, micro_usd: int) -> int:
    if unit == "tokens":
        return tokens
    if unit == "usd":
        return micro_usd
    return 1  # requests, concurrent


def charges(limits: Iterable[Limit], tokens: int, micro_usd: int) -> dict[str, int]:
    """What each counter is charged at settlement; in-flight slots are released, never committed."""
    return {lim.key: (0 if lim.unit == "concurrent" else amount_for(lim.unit, tokens, micro_usd)) for lim in limits}


def go_duration(seconds: float) -> str:
    """OpenAI's x-ratelimit-reset-* format: a Go time.Duration string (``6m0s``, ``1.5s``, ``12ms``)."""
    if seconds < 1:
        return f"{max(int(seconds * 1000), 0)}ms"
    s = round(seconds, 3)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    sec_txt = f"{sec:.3f}".rstrip("0").rstrip(".") + "s"
    if h:
        return f"{int(h)}h{int(m)}m{sec_txt}"
    if m:
        return f"{int(m)}m{sec_txt}"
    return sec_txt

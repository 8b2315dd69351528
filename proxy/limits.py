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
    {qg-org}:o:b:month:usd:2026-11         the org's budget: one counter for every team
    {team}:u:<sha16>:b:day:tokens:...      an end user's (sha256 of the name), {team}:g:<tag>:... a tag's,
    {team}:m:<model>:tpm:...               a model's within the team

A new window is a new key, so rollover needs no reset job; counters expire a day after their window.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta, tzinfo
from typing import Literal
from zoneinfo import ZoneInfo

from .settings import BudgetSettings, Level, RateLimitSettings, TeamSettings, Window
from .settings_budget import WEEKDAYS, SessionBudgetSettings, duration_seconds
from .store.base import Hold, hash_tag
from .values import value

Unit = Literal["tokens", "usd", "requests", "concurrent"]
Scope = Literal["org", "team", "key", "end_user", "tag", "model", "session"]
ORG_PREFIX = "{qg-org}:o"  # one counter for every team: its own hash tag (one Redis Cluster slot)
_NO_RATES = RateLimitSettings()
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
    """The window of budget ``b`` containing ``now``, in its own calendar; a rolling budget's: the trailing
    span that ends now."""
    if b.window is None:
        assert b.rolling is not None
        return f"rolling {b.rolling}", now - duration_seconds(b.rolling), now
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
    scope: Scope
    budget: BudgetSettings | SessionBudgetSettings | None = None
    entity: str = ""  # the end user, tag or model of an end_user, tag or model limit; the team's name
    rolling: str = ""  # a rolling budget's length (``24h``); window is None then
    shadow: bool = False  # a rolling budget's later spans: held and charged like the first, never shown

    def hold(self, amount: int) -> Hold:
        if self.scope == "session" and self.window is None:  # a session's life: until session_ttl after its last use
            return Hold(self.key, self.limit, amount, self.window_end)
        expires = 0.0 if self.window is None and not self.rolling else self.window_end + _RETAIN
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
    org: Level | None = None,
) -> list[Limit]:
    """The limits of the org (when it has any), the team and the key."""
    out = _level(ORG_PREFIX, "org", "", org.budgets, org.rate_limits, now) if org is not None else []
    out += _level(f"{tag(team)}:t", "team", team, team_budgets, team_rates, now)
    out += _level(f"{tag(team)}:k:{key_digest[:16]}", "key", "", key_budgets, key_rates, now)
    return out


@value
class Subject:
    """Who and what a request is for within its team, as the client says (proxy/attribution.py)."""

    end_user: str | None = None
    tags: tuple[str, ...] = ()
    model: str = ""
    session: str | None = None  # x-quotagate-session


def subject_limits(team: str, t: TeamSettings, subject: Subject, now: float) -> list[Limit]:
    """The limits of the request's end user (their own, else the team's default for any end user), of each of
    its tags that has a budget, of its model within the team, and of its session."""
    out: list[Limit] = []
    if subject.end_user is not None:
        level = t.end_users.get(subject.end_user)
        budgets, rates = (level.budgets, level.rate_limits) if level else (t.end_user_budgets, _NO_RATES)
        if budgets or rates != _NO_RATES:
            out += _level(
                f"{tag(team)}:u:{_digest(subject.end_user)}", "end_user", subject.end_user, budgets, rates, now
            )
    for name in subject.tags:
        budgets = t.tags.budgets.get(name, ())
        if budgets:
            out += _level(f"{tag(team)}:g:{name}", "tag", name, budgets, _NO_RATES, now)
    model = t.model_limits.get(subject.model)
    if model is not None:
        out += _level(f"{tag(team)}:m:{subject.model}", "model", subject.model, model.budgets, model.rate_limits, now)
    if subject.session is not None and t.session_budgets:
        out += _session(f"{tag(team)}:s:{_digest(subject.session)}", subject.session, t, now)
    return out


def _session(prefix: str, session: str, t: TeamSettings, now: float) -> list[Limit]:
    """A session's budgets: over its life (one counter, kept until ``session_ttl`` after its last request),
    or per calendar window."""
    out: list[Limit] = []
    for b in t.session_budgets:
        if b.window is None:
            key, window_end = f"{prefix}:b:life:{b.unit}", now + duration_seconds(t.session_ttl)
        else:
            wid, _, window_end = window_bounds(b.window, now)
            key = f"{prefix}:b:{b.window}:{b.unit}:{wid}"
        out.append(Limit(key, b.limit, b.unit, b.window, window_end, "session", b, session))
    return out


def _digest(name: str) -> str:
    return hashlib.sha256(name.encode()).hexdigest()[:16]


def _level(
    prefix: str, scope: Scope, entity: str, budgets: Sequence[BudgetSettings], rates: RateLimitSettings, now: float
) -> list[Limit]:
    out: list[Limit] = []
    for b in budgets:
        if b.rolling is not None:
            out += rolling_limits(f"{prefix}:b:r{b.rolling}:{b.unit}", b, scope, entity, now)
            continue
        wid, _, end = budget_bounds(b, now)
        key = f"{prefix}:b:{b.window}{b.calendar}:{b.unit}:{wid}"
        out.append(Limit(key, b.limit, b.unit, b.window, end, scope, b, entity))
    if rates.tpm or rates.rpm:
        wid, _, end = window_bounds("minute", now)
        if rates.tpm:
            out.append(Limit(f"{prefix}:tpm:{wid}", rates.tpm, "tokens", "minute", end, scope, None, entity))
        if rates.rpm:
            out.append(Limit(f"{prefix}:rpm:{wid}", rates.rpm, "requests", "minute", end, scope, None, entity))
    if rates.concurrent:
        out.append(Limit(f"{prefix}:conc", rates.concurrent, "concurrent", None, 0.0, scope, None, entity))
    return out


ROLLING_SPANS = 24  # a rolling window is followed in steps of a 24th of its length (whole minutes)


def rolling_step(length: float) -> int:
    """The step, in seconds, at which a rolling window of ``length`` seconds moves: a whole number of minutes
    (so that the limits built once a minute stay right), about a 24th of the length."""
    return max(int(length // ROLLING_SPANS) // 60, 1) * 60


def rolling_limits(prefix: str, b: BudgetSettings, scope: Scope, entity: str, now: float) -> list[Limit]:
    """A rolling budget of length W, in steps of s: one counter per span [j*s, j*s + W + s), each held to
    the limit. A request at ``now`` falls in the spans starting at the n + 1 last steps (n = ceil(W / s))
    and is held and charged on every one of them; any trailing span (t - W, t] lies inside one of them, so
    no W-long span ever holds more than the limit. Usage is forgotten at most one step late, never early.
    The first (oldest) span covers the trailing window now: it is the one shown, the others are shadows."""
    assert b.rolling is not None
    length = duration_seconds(b.rolling)
    step = rolling_step(length)
    spans = -(-int(length) // step)
    last = int(now // step)
    first = last - spans
    return [
        Limit(f"{prefix}:{j}", b.limit, b.unit, None, (j + spans + 1) * step, scope, b, entity, b.rolling, j != first)
        for j in range(first, last + 1)
    ]


def holds(
    limits: Iterable[Limit],
    worst_tokens: int,
    worst_micro_usd: int,
    sized: Mapping[str, tuple[int, int]] | None = None,
) -> tuple[Hold, ...]:
    """The worst case on every limit, except those ``sized`` names (limit key -> (tokens, micro-USD)): the
    limits in ``reserve: observed`` mode (proxy/observed.py)."""
    if not sized:
        return tuple(lim.hold(amount_for(lim.unit, worst_tokens, worst_micro_usd)) for lim in limits)
    out: list[Hold] = []
    for lim in limits:
        tokens, micro_usd = sized.get(lim.key, (worst_tokens, worst_micro_usd))
        out.append(lim.hold(amount_for(lim.unit, tokens, micro_usd)))
    return tuple(out)


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

"""The report's three charts, from its aggregates: spend per day per team, input per request by context part,
and the cost-per-request distribution. Each with its text alternative written from the numbers."""

from __future__ import annotations

from collections.abc import Sequence

from .report_data import CostBucket, DayContext, DaySpend
from .report_format import count, day_label, money, money_tick, tokens
from .report_svg import OTHER_COLOR, PALETTE, Chart, Series

MAX_TEAMS = len(PALETTE) - 1  # the rest share one "other teams" series
PARTS = (
    ("system", "System prompt", "#0072B2"),
    ("tools", "Tool definitions", "#009E73"),
    ("history", "History (re-sent turns)", "#D55E00"),
    ("new", "New input", "#E69F00"),
)


def spend_chart(days: Sequence[int], rows: Sequence[DaySpend]) -> Chart:
    by_team: dict[str, dict[int, int]] = {}
    for r in rows:
        by_team.setdefault(r.team, {})[r.day] = r.cost_micro
    ranked = sorted(by_team, key=lambda t: (-sum(by_team[t].values()), t))
    shown, rest = ranked[:MAX_TEAMS], ranked[MAX_TEAMS:]
    if len(rest) == 1:
        shown, rest = ranked, []
    series = [
        Series(team, tuple(float(by_team[team].get(d, 0)) for d in days), PALETTE[i]) for i, team in enumerate(shown)
    ]
    if rest:
        other = tuple(float(sum(by_team[t].get(d, 0) for t in rest)) for d in days)
        series.append(Series(f"{len(rest)} other teams", other, OTHER_COLOR))
    total = sum(r.cost_micro for r in rows)
    daily = [sum(s.values[i] for s in series) for i in range(len(days))]
    peak = max(range(len(days)), key=lambda i: daily[i]) if days else 0
    top = ", ".join(f"{t} {money(sum(by_team[t].values()))}" for t in ranked[:3])
    desc = (
        f"Stacked bars, one per day from {day_label(days[0])} to {day_label(days[-1])}, one segment per team. "
        f"Total {money(total)}; the dearest day {day_label(days[peak])} at {money(daily[peak])}. "
        f"Largest teams: {top}."
        if days
        else "No spend."
    )
    return Chart(
        "chart-spend",
        "Spend per day per team",
        desc,
        "Day (UTC)",
        "Spend (USD)",
        tuple(day_label(d) for d in days),
        tuple(series),
        money,
        money_tick,
    )


def context_chart(days: Sequence[int], rows: Sequence[DayContext]) -> Chart:
    by_day = {r.day: r for r in rows}

    def avg(day: int, part: str) -> float:
        r = by_day.get(day)
        return getattr(r, part) / r.requests if r is not None and r.requests else 0.0

    series = tuple(Series(name, tuple(avg(d, part) for d in days), color) for part, name, color in PARTS)
    seen = [d for d in days if d in by_day]
    if seen:
        first, last = seen[0], seen[-1]
        moves = "; ".join(
            f"{name.split(' (')[0].lower()} {tokens(avg(first, p))} to {tokens(avg(last, p))}" for p, name, _ in PARTS
        )
        desc = (
            f"Stacked bars, one per day: the average counted input per request, split into system prompt, tool "
            f"definitions, re-sent history and new input. From {day_label(first)} to {day_label(last)}: {moves}."
        )
    else:
        desc = "No request in the period recorded its input by part."
    return Chart(
        "chart-context",
        "Input tokens per request by context part",
        desc,
        "Day (UTC)",
        "Input tokens per request",
        tuple(day_label(d) for d in days),
        series,
        tokens,
        lambda v: tokens(v, unit=False),
    )


def bucket_label(b: CostBucket) -> str:
    if b.low_micro == 0:
        return "$0"
    if b.high_micro is None:
        return f"\u2265 {money_tick(b.low_micro)}"
    return f"{money_tick(b.low_micro)}\u2013{money_tick(b.high_micro)}"


def cost_chart(buckets: Sequence[CostBucket]) -> Chart:
    n = sum(b.requests for b in buckets)
    mode = max(buckets, key=lambda b: b.requests) if buckets else None
    desc = (
        f"Histogram of the cost of each of {count(n)} charged requests, in buckets that grow 1-2-5 per decade "
        f"(a log scale), from {bucket_label(buckets[0])} to {bucket_label(buckets[-1])}. The most requests, "
        f"{count(mode.requests)}, cost {bucket_label(mode)}."
        if mode is not None
        else "No charged request."
    )
    return Chart(
        "chart-cost",
        "Cost per request",
        desc,
        "Cost per request (log buckets)",
        "Requests",
        tuple(bucket_label(b) for b in buckets),
        (Series("Requests", tuple(float(b.requests) for b in buckets), PALETTE[0]),),
        lambda v: f"{count(round(v))} requests",
        lambda v: count(round(v)) if v == int(v) else f"{v:g}",
        tuple(money_tick(b.low_micro) for b in buckets),
        at_edges=True,
    )

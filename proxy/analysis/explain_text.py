"""The words of ``explain``: the one sentence a finance reader needs first, the notes, the text table.

The sentence names the change in spend and in requests, then the largest driver in the direction of the
change (summed over a team's models), its share of the change, how its per-request value moved, and the
first day its daily value crossed the midpoint between the two periods' values (from daily aggregates).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from datetime import UTC, datetime

from ..units import human_count
from . import lmdi
from .db import LedgerDB
from .explain import Effect, Explanation, Sums, by_team, daily, dollars
from .periods import Period

WHAT = {
    "requests": "request volume",
    "input_system": "system-prompt tokens per request",
    "input_tools": "tool-definition tokens per request",
    "input_history": "history tokens per request",
    "input_new": "new input tokens per request",
    "output": "output tokens per request",
    "cache": "the cache hit share",
    "model_mix": "the model mix",
    "price": "price changes",
}


def money(micro: int) -> str:
    """``$1,236`` from $100 on, ``$4.12`` from $1, two significant digits below (``$0.0059``)."""
    d = micro / 1_000_000
    if abs(d) >= 100:
        return f"${d:,.0f}"
    if abs(d) >= 1 or d == 0:
        return f"${d:,.2f}"
    return f"${d:.{max(2, 1 - math.floor(math.log10(abs(d))))}f}"


def shown(driver: str, v: float) -> str:
    return f"{v:.0%}" if driver == "cache" else human_count(round(v))


def _spend(b: int, p: int) -> str:
    if b == p:
        return f"Spend was unchanged at {money(p)}"
    verb = "rose" if p > b else "fell"
    ratio = f" ({p / b:.1f}x)" if b > 0 and p > 0 else ""
    return f"Spend {verb} from {money(b)} to {money(p)}{ratio}"


def _requests(b: int, p: int) -> str:
    if b == p == 0:
        return "there were no requests"
    if b == 0:
        return f"requests went from none to {p:,}"
    pct = (p - b) / b
    if abs(pct) < 0.05:
        return f"requests were flat ({pct:+.0%})"
    return f"requests {'rose' if pct > 0 else 'fell'} {abs(pct):.0%}"


def crossing(days: list[tuple[int, Sums]], driver: str, v0: float, v1: float) -> str | None:
    """The first day whose value is past the midpoint from ``v0`` (earlier) towards ``v1`` (later)."""
    mid = (v0 + v1) / 2
    for day, s in days:
        v = s.metric(driver)
        if v is not None and (v >= mid if v1 > v0 else v <= mid) and v != v0:
            return datetime.fromtimestamp(day * 86_400, UTC).strftime("%Y-%m-%d")
    return None


async def _movement(
    db: LedgerDB, baseline: Period, period: Period, team: str, driver: str, sums: tuple[Sums, Sums], model: str | None
) -> str:
    """``, which rose from 2.9K to 11.8K after 2026-03-04`` (empty when the driver has no single value)."""
    vb, vp = sums[0].metric(driver), sums[1].metric(driver)
    if vb is None or vp is None or vb == vp:
        return ""
    text = f", which {'rose' if vp > vb else 'fell'} from {shown(driver, vb)} to {shown(driver, vp)}"
    if driver == "requests":  # a day's requests are compared with each period's requests per day
        vb, vp = vb * 86_400 / baseline.seconds, vp * 86_400 / period.seconds
    early, late = (baseline, period) if baseline.start <= period.start else (period, baseline)
    v0, v1 = (vb, vp) if early is baseline else (vp, vb)
    days = await daily(db, early.start, late.end, team, model)
    day = crossing([d for d in days if early.start <= d[0] * 86_400 < late.end], driver, v0, v1)
    return text + (f" after {day}" if day else "")


async def sentence(
    db: LedgerDB,
    baseline: Period,
    period: Period,
    before: Mapping[tuple[str, str], Sums],
    after: Mapping[tuple[str, str], Sums],
    effects: list[Effect],
    model: str | None,
) -> str:
    b, p = sum(before.values(), Sums()), sum(after.values(), Sums())
    head = f"{_spend(b.cost, p.cost)} while {_requests(b.requests, p.requests)}"
    change = p.cost - b.cost
    if change == 0 or not effects:
        return head + "."
    totals = lmdi.totals(((e.team, e.model, e.driver), e.micro_usd) for e in effects)
    (team, driver), v = max(totals.items(), key=lambda kv: (kv[1] * (1 if change > 0 else -1), kv[0]))
    share = v / change
    direction = "increase" if change > 0 else "decrease"
    teams_b, teams_p = by_team(before), by_team(after)
    sums = (teams_b.get(team, Sums()), teams_p.get(team, Sums()))
    moved = await _movement(db, baseline, period, team, driver, sums, model)
    return f"{head}; {share:.0%} of the {direction} is {WHAT[driver]} in team {team}{moved}."


def notes(b: Sums, p: Sums) -> list[str]:
    out = []
    old = b.unparted + p.unparted
    if old:
        out.append(
            f"{old:,} of {b.requests + p.requests:,} requests were recorded without input parts (an older "
            "ledger): their input is counted as input_new."
        )
    return out


def render(e: Explanation) -> str:
    """The sentence, the periods, then the effects table (largest first, zero effects left out)."""
    lines = [e.sentence, ""]
    lines.append(f"baseline {e.baseline.label()}: {money(e.baseline_cost_micro)}, {e.baseline_requests:,} requests")
    lines.append(f"period   {e.period.label()}: {money(e.period_cost_micro)}, {e.period_requests:,} requests")
    lines.append("")
    rows = [(x.team, x.model, x.driver, dollars(x.micro_usd)) for x in e.effects if x.micro_usd]
    rows.append(("total", "", "", dollars(e.change_micro)))
    header = ("team", "model", "driver", "change_usd")
    widths = [max(len(r[i]) for r in (header, *rows)) for i in range(4)]
    for r in (header, *rows):
        lines.append(
            "  ".join((c.rjust(w) if i == 3 else c.ljust(w)) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        )
    lines.extend(f"note: {n}" for n in e.notes)
    lines.append("method: LMDI-I; effects rounded to micro-USD, the residue on the largest; they sum to the total.")
    return "\n".join(line.rstrip() for line in lines)

"""The report's numbers, aggregated in SQL (``GROUP BY`` day and team, never a row per request in Python).

Every query is written once for SQLite and PostgreSQL against ``db.LedgerDB``; the one thing the two spell
differently, flooring an epoch to a UTC day, is ``db.day_bucket``. Only requests that reached the provider
(``charged``) are spend, as in ``quotagate usage``.
"""

from __future__ import annotations

from ..values import value
from .db import LedgerDB, day_bucket

DAY = 86_400

# Cost-per-request buckets in micro-USD: 1-2-5 per decade, from a micro-dollar to $100 (a log scale);
# bucket 0 is a request charged nothing, bucket i (1..) costs [EDGES[i-1], EDGES[i]), the last one more.
EDGES: tuple[int, ...] = tuple(m * 10**e for e in range(9) for m in (1, 2, 5) if m * 10**e <= 100_000_000)


@value
class DaySpend:
    day: int  # days since the epoch (UTC)
    team: str
    cost_micro: int
    requests: int


@value
class DayContext:
    """Counted input of one day's requests that recorded their parts, summed by part."""

    day: int
    requests: int
    system: int
    tools: int
    history: int
    new: int


@value
class CostBucket:
    low_micro: int  # inclusive
    high_micro: int | None  # exclusive; None: no upper bound
    requests: int


@value
class Totals:
    requests: int
    cost_micro: int
    input_tokens: int
    output_tokens: int


async def spend_by_day(db: LedgerDB, start: float, end: float) -> list[DaySpend]:
    day = day_bucket(db.dialect, "ts")
    rows = await db.fetch(
        f"SELECT {day} AS d, team, SUM(cost_micro_usd), COUNT(*) FROM ledger "
        "WHERE ts >= ? AND ts < ? AND charged GROUP BY 1, 2 ORDER BY 1, 2",
        (start, end),
    )
    return [DaySpend(int(d), str(t), int(c or 0), int(n)) for d, t, c, n in rows]


async def context_by_day(db: LedgerDB, start: float, end: float) -> list[DayContext]:
    day = day_bucket(db.dialect, "ts")
    rows = await db.fetch(
        f"SELECT {day} AS d, COUNT(*), SUM(COALESCE(input_system, 0)), SUM(COALESCE(input_tools, 0)), "
        "SUM(COALESCE(input_history, 0)), SUM(COALESCE(input_new, 0)) FROM ledger "
        "WHERE ts >= ? AND ts < ? AND charged AND input_system IS NOT NULL GROUP BY 1 ORDER BY 1",
        (start, end),
    )
    return [DayContext(int(d), int(n), int(s or 0), int(t or 0), int(h or 0), int(w or 0)) for d, n, s, t, h, w in rows]


async def cost_histogram(db: LedgerDB, start: float, end: float) -> list[CostBucket]:
    """Every bucket from the cheapest to the dearest one holding a request (empty ones between kept)."""
    cases = " ".join(f"WHEN cost_micro_usd < ? THEN {j}" for j in range(1, len(EDGES)))
    rows = await db.fetch(
        f"SELECT CASE WHEN cost_micro_usd <= 0 THEN 0 {cases} ELSE {len(EDGES)} END AS b, COUNT(*) "
        "FROM ledger WHERE ts >= ? AND ts < ? AND charged GROUP BY 1 ORDER BY 1",
        (*EDGES[1:], start, end),
    )
    counts = {int(b): int(n) for b, n in rows}
    if not counts:
        return []
    return [bucket(j, counts.get(j, 0)) for j in range(min(counts), max(counts) + 1)]


def bucket(j: int, requests: int) -> CostBucket:
    """Bucket 0: charged nothing; j in 1..len(EDGES)-1: [EDGES[j-1], EDGES[j]); len(EDGES): EDGES[-1] or more."""
    if j == 0:
        return CostBucket(0, 1, requests)
    return CostBucket(EDGES[j - 1], EDGES[j] if j < len(EDGES) else None, requests)


async def totals(db: LedgerDB, start: float, end: float) -> Totals:
    rows = await db.fetch(
        "SELECT COUNT(*), SUM(cost_micro_usd), SUM(COALESCE(input_tokens, counted_input, 0)), "
        "SUM(COALESCE(output_tokens, counted_output, 0)) FROM ledger WHERE ts >= ? AND ts < ? AND charged",
        (start, end),
    )
    n, cost, inp, out = rows[0] if rows else (0, 0, 0, 0)
    return Totals(int(n or 0), int(cost or 0), int(inp or 0), int(out or 0))


async def spent_since(
    db: LedgerDB, since: float, until: float, *, by_key: bool
) -> dict[tuple[str, str], tuple[int, int]]:
    """(team, key name or "") -> (micro-USD, tokens) charged in [since, until): what budgets count."""
    key = "key_name" if by_key else "''"
    rows = await db.fetch(
        f"SELECT team, {key}, SUM(cost_micro_usd), "
        "SUM(COALESCE(input_tokens, counted_input, 0) + COALESCE(output_tokens, counted_output, 0)) "
        "FROM ledger WHERE ts >= ? AND ts < ? AND charged GROUP BY 1, 2",
        (since, until),
    )
    return {(str(t), str(k)): (int(c or 0), int(n or 0)) for t, k, c, n in rows}

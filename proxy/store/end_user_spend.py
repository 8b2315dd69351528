"""A team's top end users by spend since a time: the ledger query behind ``GET /v1/usage``'s ``end_users.top``.

Every ledger answers it (``top_end_users(team, since, limit, by)``): SQLite and PostgreSQL in one SQL text
(``TOP_END_USERS``, ``?`` placeholders; PostgreSQL's are translated), memory and Redis by ``top_end_users``
over the records (Redis reads the stream from ``since`` on: one bounded scan of the current window's
entries, of every team, capped by ``ledger_stream_max_len``). Tokens and cost add up as ``usage`` does: tokens
only of requests that reached the provider (provider-reported, else counted), cost as charged. Ranked by
cost (``by="cost"``) or tokens, the other one next, then by end user; rows without an end user are left out.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Literal

from proxy.store.base import LedgerRecord
from proxy.values import value

SpendBy = Literal["cost", "tokens"]
_ORDER: dict[SpendBy, str] = {"cost": "4 DESC, 3 DESC, 1", "tokens": "3 DESC, 4 DESC, 1"}


@value
class EndUserSpend:
    """One end user's requests, tokens (input + output, charged requests only) and cost in micro-USD."""

    end_user: str
    requests: int
    tokens: int
    cost_micro_usd: int


def top_end_users_sql(by: SpendBy) -> str:
    """Parameters: since, team, limit."""
    return f"""
SELECT end_user, COUNT(*),
       CAST(SUM(CASE WHEN charged THEN COALESCE(input_tokens, counted_input, 0)
                                       + COALESCE(output_tokens, counted_output, 0) ELSE 0 END) AS BIGINT),
       CAST(SUM(cost_micro_usd) AS BIGINT)
FROM ledger WHERE ts >= ? AND team = ? AND end_user IS NOT NULL
GROUP BY end_user ORDER BY {_ORDER[by]} LIMIT ?
"""


def top_end_users(records: Iterable[LedgerRecord], limit: int, by: SpendBy = "cost") -> list[EndUserSpend]:
    """The same ranking as the SQL, over records already filtered by team and time."""
    acc: dict[str, list[int]] = {}
    for r in records:
        if r.end_user is None:
            continue
        row = acc.setdefault(r.end_user, [0, 0, 0])
        row[0] += 1
        row[2] += r.cost_micro_usd
        if r.charged:
            row[1] += _first(r.input_tokens, r.counted_input) + _first(r.output_tokens, r.counted_output)
    rows = [EndUserSpend(user, *vals) for user, vals in acc.items()]
    if by == "cost":
        rows.sort(key=lambda s: (-s.cost_micro_usd, -s.tokens, s.end_user))
    else:
        rows.sort(key=lambda s: (-s.tokens, -s.cost_micro_usd, s.end_user))
    return rows[: max(limit, 0)]


def _first(reported: int | None, counted: int | None) -> int:
    return reported if reported is not None else (counted or 0)

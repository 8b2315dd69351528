"""What the ledger says the counters were charged, per team, key and model over a time range: the drift
reconcile's expected values and the seed's (``proxy/drift.py``, ``proxy/seed.py``).

``SQL`` is the one query (``?`` placeholders; SQLite and PostgreSQL alike): every row whose arrival ``ts`` is in
``[since, until)``, grouped by ``(team, key_name, model)``, adding up ``charged_tokens`` (NULL in rows from
before the column: 0) and ``cost_micro_usd``. ``sum_records`` is the same in Python, for the ledgers that have
no SQL (the memory store, the Redis stream).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol, runtime_checkable

from proxy.store.base import LedgerRecord
from proxy.values import value

SQL = """
SELECT team, key_name, model, COUNT(*),
       CAST(SUM(COALESCE(charged_tokens, 0)) AS BIGINT), CAST(SUM(cost_micro_usd) AS BIGINT)
FROM ledger WHERE ts >= ? AND ts < ? GROUP BY team, key_name, model ORDER BY team, key_name, model
"""


@value
class ChargedSum:
    """The ledger's rows of one (team, key name, model) in a time range, and what they charged."""

    team: str
    key_name: str
    model: str
    rows: int
    tokens: int  # sum of charged_tokens
    micro_usd: int  # sum of cost_micro_usd


@runtime_checkable
class ChargedSums(Protocol):
    """A ledger that adds up ``charged_sums`` itself (in SQL): the SQLite store, the PostgreSQL ledger."""

    async def charged_sums(self, since: float, until: float) -> list[ChargedSum]: ...


def sums_of(rows: Iterable[Sequence[Any]]) -> list[ChargedSum]:
    """``SQL``'s rows as values (a SUM over no rows is NULL: 0)."""
    return [ChargedSum(str(t), str(k), str(m), int(n), int(tok or 0), int(usd or 0)) for t, k, m, n, tok, usd in rows]


def sum_records(records: Iterable[LedgerRecord], since: float, until: float) -> list[ChargedSum]:
    """``SQL`` over records in memory."""
    acc: dict[tuple[str, str, str], list[int]] = {}
    for r in records:
        if since <= r.ts < until:
            a = acc.setdefault((r.team, r.key_name, r.model), [0, 0, 0])
            a[0] += 1
            a[1] += r.charged_tokens or 0
            a[2] += r.cost_micro_usd
    return [ChargedSum(t, k, m, n, tok, usd) for (t, k, m), (n, tok, usd) in sorted(acc.items())]

"""What history would have cost at another price table, beside what was charged, per team and model.

Nothing recorded is changed: the ledger is only read. The recorded usage (billed input, cache reads, cache
writes by lifetime, output, the service tier that served it) is summed in SQL by team, model, service tier
and long-context bucket (how many of the table's ``long_context.above`` thresholds the request's input
exceeds, so that a request past its model's threshold is priced at the long tier, as ``Price.rates`` does
for one request), and each sum is priced with ``pricing.Price`` (``Price.parts``). The pico-USD are added
up per team and model and rounded up to micro-USD once: the gateway rounds each request up, so the
repriced figure may be lower than a per-request repricing by less than one micro-USD per request.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from ..pricing import Price
from ..usage import Usage
from ..values import value
from . import sql
from .db import LedgerDB
from .explain import dollars
from .periods import Period


@value
class RepriceRow:
    team: str
    model: str
    requests: int
    charged_micro: int
    repriced_micro: int | None  # None: the model has no price in the table or the config

    def to_json(self) -> dict[str, Any]:
        delta = None if self.repriced_micro is None else self.repriced_micro - self.charged_micro
        return {
            "team": self.team,
            "model": self.model,
            "requests": self.requests,
            "charged_usd": dollars(self.charged_micro),
            "charged_micro_usd": self.charged_micro,
            "repriced_usd": None if self.repriced_micro is None else dollars(self.repriced_micro),
            "repriced_micro_usd": self.repriced_micro,
            "change_usd": None if delta is None else dollars(delta),
        }


def thresholds(prices: Mapping[str, Price]) -> list[int]:
    found = {p.above for price in prices.values() for p in (price, *(t for _, t in price.tiers))}
    return sorted(a for a in found if a is not None)


def _flat(price: Price, tier: str | None, bucket: int, above: list[int]) -> Price:
    """The one set of rates a group of requests is priced at: its tier's, long or not."""
    p = price.served(tier)
    long = p.long is not None and p.above is not None and bucket > above.index(p.above)
    return replace(p, base=p.long if long and p.long is not None else p.base, long=None, tiers=())


def group_pico(price: Price, tier: str | None, bucket: int, above: list[int], s: list[int]) -> int:
    """Pico-USD of one group's summed usage (``sql.SUMS`` order: requests, cost, input, cached, w5m, w1h, out)."""
    usage = Usage(input=s[2], cached_input=s[3], output=s[6], cache_write_5m=s[4], cache_write_1h=s[5])
    return sum(_flat(price, tier, bucket, above).parts(usage).values())


async def reprice(
    db: LedgerDB, since: Period, prices: Mapping[str, Price], *, team: str | None = None
) -> list[RepriceRow]:
    """Per (team, model): charged requests, what was charged, and the cost at ``prices`` (by model name)."""
    above = thresholds(prices)
    bucket = " + ".join(f"CASE WHEN {sql.BILLED_INPUT} > ? THEN 1 ELSE 0 END" for _ in above) or "0"
    clause, params = sql.where(since, team)
    rows = await db.fetch(
        f"SELECT team, model, service_tier, {bucket}, {sql.SUMS} FROM ledger {clause} "
        "GROUP BY 1, 2, 3, 4",  # by position: the bucket's parameters appear once
        [*above, *params],
    )
    counts: dict[tuple[str, str], tuple[int, int]] = {}
    pico: dict[tuple[str, str], int | None] = {}
    for r in rows:
        cell, s = (str(r[0]), str(r[1])), sql.ints(r[4:])
        n, c = counts.get(cell, (0, 0))
        counts[cell] = (n + s[0], c + s[1])
        price, before = prices.get(cell[1]), pico.get(cell, 0)
        pico[cell] = None if price is None or before is None else before + group_pico(price, r[2], int(r[3]), above, s)
    return [
        RepriceRow(t, m, n, c, None if (p := pico[(t, m)]) is None else -(-p // 1_000_000))
        for (t, m), (n, c) in sorted(counts.items())
    ]

"""Why spend changed between two periods: additive effects per team and model that sum to the change exactly.

Method: the log-mean Divisia index, LMDI-I (``lmdi.py`` has the model and the treatment of zeros). Why
LMDI-I rather than a sequential or Shapley decomposition: it is exact (no residual term) and independent of
the order in which factors are taken, as Shapley is, but costs one logarithm per factor and term instead
of 2^factors evaluations, and it is the standard index decomposition of energy and cost accounting, so the
numbers can be checked by anyone who knows it.

The cost model of one (team, model) cell: spend = requests x (sum over input parts of billed input tokens
per request of that part x the input rate given the cache hit share + output tokens per request x the
output rate) x the price factor. Drivers: ``requests`` (the team's request volume), ``input_system``,
``input_tools``, ``input_history``, ``input_new`` (billed input tokens per request by part: the provider's
input split in the proportions of quotagate's counted parts), ``output`` (output tokens per request),
``cache`` (the cache hit and write share, through the blended reference input rate), ``model_mix`` (the
cell's share of its team's requests), ``price`` (what was charged over the cost at the reference prices:
a change of price version, long-context tiers, rounding). Reference prices are the given ``prices`` (the
current config's, by model name), else the shipped price table's (``builtin_prices``), else for a model in
neither generic weights (input 1, cache read 0.5, output 4). The reference only weighs input against
output and cache within a cell (it is the same in both periods); the effects add up to the change whatever
it is.

Money is integer micro-USD throughout; the effects are rounded to micro-USD and the residue of that
rounding (a few micro-USD) is put on the largest effect, so that they sum to the change exactly. Only
charged rows count (requests = charged rows). Rows without parts (older ledgers) count their input as
``input_new``, and a note says how many. Aggregation is in SQL (``GROUP BY team, model``, and by day for
the date the sentence names).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from decimal import Decimal
from pathlib import Path
from typing import Any

from ..pricing import Price, price_of
from ..settings import ModelSettings
from ..settings_raw import apply_price_table, load_price_table
from ..units import rfc3339
from ..values import value
from . import lmdi, sql
from .db import LedgerDB
from .periods import Period

GENERIC = (1_000_000, 500_000, 1_000_000, 1_000_000, 4_000_000)  # pico-USD: uncached, read, w5m, w1h, out


@value
class Sums:
    """Charged rows of one group (a cell, a team, a day), as ``sql.SUMS`` adds them up."""

    requests: int = 0
    cost: int = 0
    billed_in: int = 0
    cached: int = 0
    write_5m: int = 0
    write_1h: int = 0
    output: int = 0
    parts: tuple[int, int, int, int] = (0, 0, 0, 0)
    unparted: int = 0

    @staticmethod
    def of(row: list[int]) -> Sums:
        return Sums(row[0], row[1], row[2], row[3], row[4], row[5], row[6], (row[7], row[8], row[9], row[10]), row[11])

    def __add__(self, o: Sums) -> Sums:
        parts = tuple(a + b for a, b in zip(self.parts, o.parts, strict=True))
        return Sums(
            self.requests + o.requests, self.cost + o.cost, self.billed_in + o.billed_in, self.cached + o.cached,
            self.write_5m + o.write_5m, self.write_1h + o.write_1h, self.output + o.output,
            (parts[0], parts[1], parts[2], parts[3]), self.unparted + o.unparted,
        )  # fmt: skip

    def billed_parts(self) -> tuple[float, float, float, float]:
        """The billed input split in the proportions of the counted parts (all new input when none)."""
        counted = sum(self.parts)
        if counted == 0:
            return (0.0, 0.0, 0.0, float(self.billed_in))
        s, t, h, n = (self.billed_in * p / counted for p in self.parts)
        return (s, t, h, n)

    def metric(self, driver: str) -> float | None:
        """The per-request value a driver moves (None: no single value, or no request)."""
        if not self.requests:
            return None
        if driver == "requests":
            return float(self.requests)
        if driver in lmdi.PARTS:
            return self.billed_parts()[lmdi.PARTS.index(driver)] / self.requests
        if driver == "output":
            return self.output / self.requests
        if driver == "cache":
            return self.cached / self.billed_in if self.billed_in else None
        return None


@value
class Effect:
    team: str
    model: str
    driver: str  # one of lmdi.DRIVERS
    micro_usd: int

    @property
    def usd(self) -> str:
        return dollars(self.micro_usd)


@value
class Explanation:
    period: Period
    baseline: Period
    sentence: str
    baseline_cost_micro: int
    period_cost_micro: int
    baseline_requests: int
    period_requests: int
    effects: list[Effect]  # every (team, model, driver) of either period; they sum to the change exactly
    notes: list[str]
    team: str | None = None
    model: str | None = None

    @property
    def change_micro(self) -> int:
        return self.period_cost_micro - self.baseline_cost_micro

    def to_json(self) -> dict[str, Any]:
        """Money as decimal strings of dollars from integer micro-USD (exact: the effects' ``usd`` add up to
        ``change_usd``), and as integers in ``*_micro_usd``."""

        def side(p: Period, cost: int, requests: int) -> dict[str, Any]:
            return {"start": rfc3339(p.start), "end": rfc3339(p.end), "cost_usd": dollars(cost), "cost_micro_usd": cost,
                    "requests": requests}  # fmt: skip

        return {
            "method": "LMDI-I",
            "sentence": self.sentence,
            "team": self.team,
            "model": self.model,
            "baseline": side(self.baseline, self.baseline_cost_micro, self.baseline_requests),
            "period": side(self.period, self.period_cost_micro, self.period_requests),
            "change_usd": dollars(self.change_micro),
            "change_micro_usd": self.change_micro,
            "effects": [
                {"team": e.team, "model": e.model, "driver": e.driver, "usd": e.usd, "micro_usd": e.micro_usd}
                for e in self.effects
            ],
            "notes": self.notes,
        }


def dollars(micro: int) -> str:
    """Exact decimal dollars of integer micro-USD: ``-1.5`` for -1_500_000."""
    d = Decimal(micro).scaleb(-6)
    return format(d.normalize(), "f") if micro else "0"


async def cells(db: LedgerDB, period: Period, team: str | None, model: str | None) -> dict[tuple[str, str], Sums]:
    clause, params = sql.where(period, team, model)
    rows = await db.fetch(f"SELECT team, model, {sql.SUMS} FROM ledger {clause} GROUP BY team, model", params)
    return {(str(r[0]), str(r[1])): Sums.of(sql.ints(r[2:])) for r in rows}


async def daily(db: LedgerDB, start: float, end: float, team: str, model: str | None) -> list[tuple[int, Sums]]:
    """(UTC day number, sums) of one team's charged rows, oldest first."""
    clause, params = sql.where(Period(start, end), team, model)
    day = sql.day_floor(db.dialect, "ts")
    rows = await db.fetch(f"SELECT {day}, {sql.SUMS} FROM ledger {clause} GROUP BY {day} ORDER BY {day}", params)
    return [(int(r[0]), Sums.of(sql.ints(r[1:]))) for r in rows]


@functools.cache
def builtin_prices() -> dict[str, Price]:
    """The shipped price table's price of each model it lists (the reference when none is given)."""
    table, version = load_price_table("builtin", Path("."))
    raw: dict[str, Any] = {"models": {name: {"provider": "-"} for name in table}}
    apply_price_table(raw, table, version)  # as a config naming the model gets it
    out: dict[str, Price] = {}
    for name, entry in raw["models"].items():
        try:
            out[name] = price_of(ModelSettings.model_validate(entry))
        except ValueError:  # an entry without a price: the generic weights for that model
            continue
    return out


def reference(price: Price | None) -> tuple[int, int, int, int, int]:
    if price is None:
        return GENERIC
    r = price.base
    w5m, w1h = r.write_rates()
    rates = (r.input, r.cached_input, w5m, w1h, r.output)
    return rates if r.input or r.output else GENERIC


def factors(s: Sums, team_requests: int, rates: tuple[int, int, int, int, int]) -> lmdi.Factors:
    inp = s.billed_in
    cached = min(s.cached, inp)
    w5m = min(s.write_5m, inp - cached)
    w1h = min(s.write_1h, inp - cached - w5m)
    uncached = inp - cached - w5m - w1h
    ru, rc, r5, r1, ro = rates
    ref_in = uncached * ru + cached * rc + w5m * r5 + w1h * r1
    ref = ref_in + s.output * ro
    g = ref_in / inp if inp else float(ru)
    price = s.cost / ref if ref else 1.0  # micro-USD charged per pico-USD at the reference: terms in micro-USD
    per = tuple(x / s.requests for x in s.billed_parts())
    return lmdi.Factors(
        float(team_requests), s.requests / team_requests, (per[0], per[1], per[2], per[3]),
        s.output / s.requests, g, float(ro), price,
    )  # fmt: skip


def by_team(cs: Mapping[tuple[str, str], Sums]) -> dict[str, Sums]:
    out: dict[str, Sums] = {}
    for (team, _), s in cs.items():
        out[team] = out.get(team, Sums()) + s
    return out


def all_factors(
    cs: Mapping[tuple[str, str], Sums], prices: Mapping[str, Price] | None
) -> dict[tuple[str, str], lmdi.Factors]:
    teams = by_team(cs)
    return {
        cell: factors(s, teams[cell[0]].requests, reference((prices or builtin_prices()).get(cell[1])))
        for cell, s in cs.items()
        if s.requests
    }


async def explain(
    db: LedgerDB,
    period: Period,
    baseline: Period,
    *,
    team: str | None = None,
    model: str | None = None,
    prices: Mapping[str, Price] | None = None,
) -> Explanation:
    """The spend change from ``baseline`` to ``period`` (of one team, one model), decomposed (LMDI-I)."""
    from .explain_text import notes, sentence

    before, after = await cells(db, baseline, team, model), await cells(db, period, team, model)
    b, p = sum(before.values(), Sums()), sum(after.values(), Sums())
    change = p.cost - b.cost
    split = lmdi.decompose(all_factors(before, prices), all_factors(after, prices), change)
    effects = [Effect(t, m, d, v) for (t, m, d), v in split.items()]
    effects.sort(key=lambda e: (-abs(e.micro_usd), e.team, e.model, lmdi.DRIVERS.index(e.driver)))
    text = await sentence(db, baseline, period, before, after, effects, model)
    return Explanation(
        period, baseline, text, b.cost, p.cost, b.requests, p.requests, effects, notes(b, p), team, model
    )

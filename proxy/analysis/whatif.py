"""What a proposed policy would have done to the requests of the ledger, replayed in order, per team.

Every charged request since the start is replayed, oldest first (read in pages of ``PAGE`` rows), against
the proposed settings with the gateway's own code: the context cap with ``policy.enforce_context`` (reject,
or trim), the output cap with ``policy.output_cap``, the budget windows and counters with
``limits.limits_for`` / ``limits.amount_for``, prices with ``pricing.price_of`` / ``Price.cost`` /
``Price.worst_case``. A request is admitted when its worst case (input + output cap; at the dearest tier it
may be served at) fits every budget, as ``store.reserve`` admits it, and then charged what it used; a budget
with ``downgrade_to`` serves the cheaper model once its used share reaches ``warn_at`` or when the
requested model would not fit, as ``admit.py`` does.

Trimming needs the messages, which the ledger does not keep: the request is rebuilt from its recorded
parts as a system message (pinned), its history as as many equal turns as it had messages
(``history_messages``; ``HISTORY_TURNS`` for a row recorded before that column), and its new input as the
latest user turn (pinned), the tools and any input out of sight kept; ``enforce_context`` then drops the
oldest history turns first, as the gateway does, and refuses when even no history would not fit. A request
recorded without parts (an older ledger) has all its input as new input, so it can only be kept or rejected.

Stated limits (``LIMITS``, printed with every answer).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from .. import limits, policy
from ..errors import ContextLengthExceeded
from ..pricing import Price, price_of
from ..protocols import ENDPOINTS
from ..settings import BudgetSettings, RateLimitSettings, Settings, TeamSettings
from ..usage import Usage
from .db import LedgerDB
from .explain import dollars
from .periods import Period

PAGE = 5000
HISTORY_TURNS = 10
LIMITS = (
    "output that a trim would have changed is assumed unchanged (capped only by the output cap);",
    "the provider's cache hits are assumed unchanged in share (trimmed input scales them down);",
    "a trim is modelled from the recorded parts: history as equal turns, one per recorded history message "
    f"({HISTORY_TURNS} for older rows), dropped oldest first;",
    "budgets start empty at the start of the period; key budgets, rate limits and concurrency are not replayed;",
    "a downgraded request is assumed to use the same tokens on the cheaper model;",
    "requests refused or failed at the time (not charged) are counted, not replayed;",
    "a request trimmed at the time is replayed as it was sent (the turns dropped then are not recorded).",
)
_ENDPOINTS = {e.name: e for e in ENDPOINTS.values()}
_COLUMNS = (
    "request_id, ts, team, model, endpoint, counted_input, input_tokens, cached_input_tokens, output_tokens, "
    "counted_output, cache_write_5m_tokens, cache_write_1h_tokens, service_tier, cost_micro_usd, output_cap, "
    "input_system, input_tools, input_history, input_new, history_messages"
)
_NAMES = tuple(c.strip() for c in _COLUMNS.split(","))


@dataclass(slots=True)
class TeamReplay:
    team: str
    requests: int = 0
    cost_micro: int = 0
    would_cost_micro: int = 0
    rejected: int = 0
    trimmed: int = 0
    trimmed_tokens: int = 0
    output_capped: int = 0
    downgraded: int = 0
    budget_refused: int = 0
    not_charged: int = 0  # refused or failed at the time: not replayed
    # budget ("day usd") -> (the first day it refused, days it refused on, the last such day)
    ran_out: dict[str, tuple[str, int, str]] = field(default_factory=dict)
    used: dict[str, int] = field(default_factory=dict)  # budget counter key -> used (tokens or micro-USD)

    def to_json(self) -> dict[str, Any]:
        return {
            "team": self.team, "requests": self.requests,
            "cost_usd": dollars(self.cost_micro), "cost_micro_usd": self.cost_micro,
            "would_cost_usd": dollars(self.would_cost_micro), "would_cost_micro_usd": self.would_cost_micro,
            "rejected": self.rejected, "trimmed": self.trimmed, "trimmed_tokens": self.trimmed_tokens,
            "output_capped": self.output_capped, "downgraded": self.downgraded,
            "budget_refused": self.budget_refused, "not_charged": self.not_charged,
            "budget_ran_out": self.runs_out(),
        }  # fmt: skip

    def runs_out(self) -> list[dict[str, Any]]:
        return [{"budget": b, "first_day": d, "days": n} for b, (d, n, _) in sorted(self.ran_out.items())]


def _day(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d")


def _n(v: Any) -> int:
    return int(v or 0)


def synthetic(row: dict[str, Any]) -> tuple[list[Any] | None, int]:
    """The request rebuilt from its parts for ``enforce_context`` (None: it has none, or is not a chat), and
    the tokens a count adds to the messages' (tools, input out of sight)."""
    if row["input_system"] is None or row["endpoint"] != "chat":
        return None, 0
    system, tools, history, new = (_n(row[k]) for k in ("input_system", "input_tools", "input_history", "input_new"))
    fixed = tools + max(_n(row["counted_input"]) - system - tools - history - new, 0)
    n = _n(row["history_messages"]) or HISTORY_TURNS
    turns = [history // n + (1 if i < history % n else 0) for i in range(n)]
    msgs: list[Any] = [{"role": "system", "n": system}] if system else []
    msgs += [{"role": ("user", "assistant")[i % 2], "n": n} for i, n in enumerate(turns) if n]
    msgs.append({"role": "user", "n": new})
    return msgs, fixed


def context(team_name: str, team: TeamSettings | None, row: dict[str, Any]) -> int | None:
    """Counted tokens the proposed context cap would trim (0: none), None: it would reject the request."""
    tokens = _n(row["counted_input"]) or _n(row["input_tokens"])
    msgs, fixed = synthetic(row)
    try:
        _, _, trimmed = policy.enforce_context(team_name, team, tokens, msgs, lambda m: fixed + sum(x["n"] for x in m))
    except ContextLengthExceeded:
        return None
    return trimmed


class Replay:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.teams: dict[str, TeamReplay] = {}
        self._prices: dict[str, Price] = {}

    def price(self, model: str) -> Price | None:
        if model not in self._prices and model in self.settings.models:
            self._prices[model] = price_of(self.settings.models[model])
        return self._prices.get(model)

    def usage(self, row: dict[str, Any], trimmed: int, model: str) -> tuple[Usage, int]:
        """What the request would have used (its input less the trim, its output within the proposed cap),
        and the output cap it would have been reserved at."""
        inp = _n(row["input_tokens"]) if row["input_tokens"] is not None else _n(row["counted_input"])
        kept = max(inp - trimmed, 0)

        def scaled(k: str) -> int:
            return _n(row[k]) * kept // inp if inp else 0

        ep = _ENDPOINTS.get(row["endpoint"])
        team = self.settings.teams.get(row["team"]) if ep is None or ep.cap_fields else None
        requested = row["output_cap"] if ep is None or ep.has_output else 0
        m = self.settings.models[model]
        cap = policy.output_cap(requested, team, m, ep.default_cap if ep else None, kept).worst_case
        out = _n(row["output_tokens"]) if row["output_tokens"] is not None else _n(row["counted_output"])
        writes = scaled("cache_write_5m_tokens"), scaled("cache_write_1h_tokens")
        return Usage(kept, scaled("cached_input_tokens"), min(out, cap), None, *writes, row["service_tier"]), cap

    def budgets(self, team: str, ts: float) -> list[limits.Limit]:
        t = self.settings.teams.get(team)
        budgets: tuple[BudgetSettings, ...] = t.budgets if t is not None else ()
        none = RateLimitSettings()
        return limits.limits_for(team, "", budgets, none, (), none, ts)

    def refusing(
        self, tally: TeamReplay, lims: list[limits.Limit], model: str, usage: Usage, cap: int, row: dict[str, Any]
    ) -> limits.Limit | None:
        price = self.price(model)
        assert price is not None
        worst_usd = price.worst_case(usage.input or 0, cap, service_tier=row["service_tier"])
        worst_tokens = (usage.input or 0) + cap
        for lim in lims:
            if tally.used.get(lim.key, 0) + limits.amount_for(lim.unit, worst_tokens, worst_usd) > lim.limit:
                return lim
        return None

    def one(self, row: dict[str, Any]) -> None:
        tally = self.teams.setdefault(row["team"], TeamReplay(row["team"]))
        tally.requests += 1
        tally.cost_micro += _n(row["cost_micro_usd"])
        model = row["model"]
        if model not in self.settings.models:  # a model the config no longer has: kept as it was charged
            tally.would_cost_micro += _n(row["cost_micro_usd"])
            return
        trimmed = context(row["team"], self.settings.teams.get(row["team"]), row)
        if trimmed is None:
            tally.rejected += 1
            return
        if trimmed:
            tally.trimmed += 1
            tally.trimmed_tokens += trimmed
        self.admit(tally, row, model, trimmed)

    def admit(self, tally: TeamReplay, row: dict[str, Any], model: str, trimmed: int) -> None:
        lims = self.budgets(row["team"], float(row["ts"]))
        served = self.downgrade(tally, lims, model) or model
        usage, cap = self.usage(row, trimmed, served)
        refused = self.refusing(tally, lims, served, usage, cap, row)
        cheaper = refused.budget.downgrade_to if refused and refused.budget and served == model else None
        if refused is not None and cheaper is not None and cheaper != model:
            served = cheaper
            usage, cap = self.usage(row, trimmed, served)
            refused = self.refusing(tally, lims, served, usage, cap, row)
        if refused is not None:
            self.refuse(tally, refused, float(row["ts"]))
            return
        recorded_out = _n(row["output_tokens"]) if row["output_tokens"] is not None else _n(row["counted_output"])
        tally.output_capped += (usage.output or 0) < recorded_out
        tally.downgraded += served != model
        price = self.price(served)
        assert price is not None
        cost = price.cost(usage)
        tally.would_cost_micro += cost
        for key, amount in limits.charges(lims, usage.total, cost).items():
            tally.used[key] = tally.used.get(key, 0) + amount

    def downgrade(self, tally: TeamReplay, lims: list[limits.Limit], model: str) -> str | None:
        """The cheaper model of the first budget past ``warn_at`` (``Reservations.downgrade_target``)."""
        for lim in lims:
            b = lim.budget
            if b is None or b.downgrade_to is None or b.downgrade_to == model or b.warn_at is None:
                continue
            if tally.used.get(lim.key, 0) >= b.warn_at * lim.limit:
                return b.downgrade_to
        return None

    def refuse(self, tally: TeamReplay, lim: limits.Limit, ts: float) -> None:
        tally.budget_refused += 1
        name, day = f"{lim.window or 'rolling ' + lim.rolling} {lim.unit}", _day(ts)
        first, days, last = tally.ran_out.get(name, (day, 0, ""))
        tally.ran_out[name] = (first, days + (last != day), day)


async def rows(db: LedgerDB, since: Period, team: str | None) -> AsyncIterator[dict[str, Any]]:
    """Charged rows in (ts, request_id) order, a page at a time (keyset: never an OFFSET scan)."""
    after: tuple[float, str] = (since.start - 1, "")
    extra, params = (" AND team = ?", [team]) if team is not None else ("", [])
    while True:
        page = await db.fetch(
            f"SELECT {_COLUMNS} FROM ledger WHERE charged AND ts >= ? AND ts < ?{extra} "
            "AND (ts > ? OR (ts = ? AND request_id > ?)) ORDER BY ts, request_id LIMIT ?",
            [since.start, since.end, *params, after[0], after[0], after[1], PAGE],
        )
        for r in page:
            yield dict(zip(_NAMES, r, strict=True))
        if len(page) < PAGE:
            return
        after = (float(page[-1][1]), str(page[-1][0]))


async def whatif(db: LedgerDB, settings: Settings, since: Period, *, team: str | None = None) -> list[TeamReplay]:
    """Per team: what was charged, what the proposed ``settings`` would have charged, and what they refuse."""
    replay = Replay(settings)
    async for row in rows(db, since, team):
        replay.one(row)
    extra, params = (" AND team = ?", [team]) if team is not None else ("", [])
    for t, n in await db.fetch(
        f"SELECT team, COUNT(*) FROM ledger WHERE NOT charged AND ts >= ? AND ts < ?{extra} GROUP BY team",
        [since.start, since.end, *params],
    ):
        replay.teams.setdefault(str(t), TeamReplay(str(t))).not_charged = int(n)
    return sorted(replay.teams.values(), key=lambda t: t.team)

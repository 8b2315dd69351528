"""Budget burn: for each budget in the config, what the ledger says was spent in its current window, against
its limit, and when it runs out at the window's rate so far.

Spent is read from the ledger (charged requests since the window's start, the sum the budget counts: cost
in micro-USD, or input plus output tokens), not from the store's counters; a runtime override
(``quotagate budgets set``) is not in the config and so not here.
"""

from __future__ import annotations

from typing import Literal

from ..limits import budget_bounds
from ..settings import BudgetSettings, Settings
from ..values import value
from .db import LedgerDB
from .report_data import DAY, spent_since

# Below an hour into a window, its rate so far says little: the projection uses at least an hour.
MIN_ELAPSED_S = 3600.0


@value
class Burn:
    scope: Literal["team", "key"]
    team: str
    key_name: str | None
    window: str  # the budget's window and its calendar when not UTC's: ``day``, ``day@Europe/Paris``
    unit: Literal["tokens", "usd"]
    limit: int  # tokens, or micro-USD
    spent: int
    window_start: float
    window_end: float
    exhausts_at: float | None  # when spent reaches limit at the rate so far; None: not in this window
    daily_rate: float  # spent per day so far in the window (the projection's rate)

    @property
    def fraction(self) -> float:
        return self.spent / self.limit if self.limit > 0 else 0.0

    @property
    def exhausted(self) -> bool:
        return self.spent >= self.limit


def project(spent: int, limit: int, start: float, end: float, now: float) -> float | None:
    """When ``spent`` reaches ``limit`` at the rate since ``start``; None if not before ``end`` (or no spend).
    Already reached: ``now``."""
    if spent >= limit:
        return now
    if spent <= 0:
        return None
    rate = spent / max(now - start, MIN_ELAPSED_S)  # per second
    at = now + (limit - spent) / rate
    return at if at < end else None


async def budget_burn(db: LedgerDB, settings: Settings, now: float) -> list[Burn]:
    """Every team budget (teams in name order), then every key budget of the config."""
    wanted: list[tuple[Literal["team", "key"], str, str | None, BudgetSettings]] = [
        ("team", team, None, b) for team, ts in sorted(settings.teams.items()) for b in ts.budgets
    ]
    wanted += [("key", k.team, k.display_name, b) for k in settings.keys for b in k.budgets]
    cache: dict[tuple[float, bool], dict[tuple[str, str], tuple[int, int]]] = {}
    out: list[Burn] = []
    for scope, team, key_name, b in wanted:
        _, start, end = budget_bounds(b, now)
        by_key = key_name is not None
        if (start, by_key) not in cache:  # one query per window start (today, this month...) and scope
            cache[start, by_key] = await spent_since(db, start, now + 1, by_key=by_key)
        cost, tokens = cache[start, by_key].get((team, key_name or ""), (0, 0))
        spent = cost if b.unit == "usd" else tokens
        at = project(spent, b.limit, start, end, now)
        rate = spent * DAY / max(now - start, MIN_ELAPSED_S)
        window = f"{b.period}{b.calendar}"  # day, day@Europe/Paris, week/sunday, quarter/q4, rolling 24h
        out.append(Burn(scope, team, key_name, window, b.unit, b.limit, spent, start, end, at, rate))
    return out

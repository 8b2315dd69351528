"""Which counters the ledger can account for, and what it says each should hold. No store I/O but the
ledger's sums.

A *target* is one budget counter in its current calendar window whose charges the ledger records by a column
it has: the org's (every row), a team's (``team``), a config key's (``team`` and ``key_name``, the key's
display name) and a model's within a team (``team`` and ``model``). Its expected ``used`` is the sum, over
the ledger rows whose arrival ``ts`` lies in the window, of ``charged_tokens`` (a tokens budget) or
``cost_micro_usd`` (a USD budget): what settle and the reaper charged each of those requests.

Left out, because the ledger cannot say what they were charged: end users and tags (the reaper's rows
carry neither: ``LeaseMeta`` has no subject), sessions (not in the ledger), rolling budgets (each request
is charged on several overlapping spans), rate limits (a minute is over before the ledger has it all) and
concurrency slots (never committed).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence

from .budgets import BudgetsInForce
from .ledger_sink import LedgerReads, StoreLedger
from .limits import Limit, Subject, budget_bounds, subject_limits
from .settings import BudgetSettings, Settings
from .store.base import LedgerRecord
from .store.ledger_sums import ChargedSum, ChargedSums, sum_records
from .values import value

SCAN_MAX = 1_000_000  # rows a ledger without SQL (memory, the Redis stream) is read for, at most, per window


class LedgerTooLong(RuntimeError):
    """A ledger without SQL holds more rows in a window than ``SCAN_MAX``: not added up."""


@value
class Target:
    key: str  # the counter
    hash_tag: str  # {team}, or the org's {qg-org}
    team: str  # "" for the org
    scope: str  # org | team | key | model
    entity: str  # the key's name or the model; "" for the org and a team
    window: str  # the budget's window and calendar, as its counter names them: day, month@Europe/Paris
    unit: str  # tokens | usd
    start: float  # the window, epoch seconds
    end: float
    expires_at: float  # what a write to the counter gives it (Limit.hold)

    def expected(self, sums: Iterable[ChargedSum]) -> int:
        """What the ledger's rows of this window say the counter was charged (``sums`` over the window)."""
        total = 0
        for s in sums:
            if self.scope == "org" or (
                s.team == self.team
                and (
                    self.scope == "team"
                    or (self.scope == "key" and s.key_name == self.entity)
                    or (self.scope == "model" and s.model == self.entity)
                )
            ):
                total += s.tokens if self.unit == "tokens" else s.micro_usd
        return total


def targets(settings: Settings, budgets: BudgetsInForce, now: float) -> list[Target]:
    """Every budget counter in force that the ledger accounts for (see the module docstring), once each."""
    out: dict[str, Target] = {}
    for team, t in settings.teams.items():
        lims = budgets.limits(team, "", now)
        for model in t.model_limits:
            lims = [*lims, *(lim for lim in subject_limits(team, t, Subject(model=model), now) if lim.scope == "model")]
        _add(out, team, lims, now)
    names = Counter((k.team, k.display_name) for k in settings.keys)
    for k in settings.keys:  # a key's rows are known by its name: two keys of a team named alike are left out
        if k.budgets and names[(k.team, k.display_name)] == 1:
            lims = [lim for lim in budgets.limits(k.team, k.digest, now) if lim.scope == "key"]
            _add(out, k.team, lims, now, k.display_name)
    return list(out.values())


def _add(out: dict[str, Target], team: str, lims: Sequence[Limit], now: float, key_name: str = "") -> None:
    for lim in lims:
        b = lim.budget
        if not isinstance(b, BudgetSettings) or b.window is None or lim.unit not in ("tokens", "usd"):
            continue  # rate limits, slots, rolling budgets
        if lim.scope not in ("org", "team", "key", "model") or lim.key in out:
            continue
        _, start, end = budget_bounds(b, now)
        org = lim.scope == "org"
        out[lim.key] = Target(
            key=lim.key,
            hash_tag=lim.key.split(":", 1)[0],
            team="" if org else team,
            scope=lim.scope,
            entity=lim.entity if lim.scope == "model" else key_name if lim.scope == "key" else "",
            window=f"{b.window}{b.calendar}",
            unit=lim.unit,
            start=start,
            end=end,
            expires_at=lim.hold(0).expires_at,
        )


async def charged_sums(ledger: LedgerReads, since: float, until: float) -> list[ChargedSum]:
    """The ledger's charges in ``[since, until)`` per team, key name and model: in SQL where the ledger has it
    (SQLite, PostgreSQL), else added up from its rows (memory, the Redis stream: at most ``SCAN_MAX``)."""
    reader: object = ledger.store if isinstance(ledger, StoreLedger) else ledger
    if isinstance(reader, ChargedSums):
        return await reader.charged_sums(since, until)
    rows: list[LedgerRecord] = await ledger.ledger(since, None, SCAN_MAX)
    if len(rows) >= SCAN_MAX:
        raise LedgerTooLong(f"the ledger holds more than {SCAN_MAX} rows since {since}: use a SQL ledger")
    return sum_records(rows, since, until)

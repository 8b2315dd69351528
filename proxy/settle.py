"""The accountant, split by concern; this module keeps the pipeline's one handle on it while the pipeline
is restructured.

In request order::

    budgets.py       budgets in force: config + runtime overrides (re-read), the limits they make, status
    reservations.py  reserve the worst case, settle what was used, release, extend; fail-open; downgrades
    refusals.py      the 429 texts, retry-after and x-ratelimit-* headers, the refusing limit in a few words
    reaper.py        background: reconcile, refresh overrides, reap expired leases into ledger records

``Accountant`` builds the three services and forwards the pipeline's calls (``reserve``, ``settle``,
``release``, ``extend``, ``renew_at``, ``downgrade_target``) to ``Reservations``, which has the same
methods, and ``budgeted`` to ``BudgetsInForce``: once the pipeline takes a ``Reservations``, this facade goes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from .budgets import BudgetsInForce
from .ids import ids
from .limits import Subject
from .observed import Sizing
from .reaper import Reaper
from .refusals import refusal_limit
from .reservations import LeaseMeta, Reservation, Reservations, Watch
from .settings import BudgetSettings, Settings
from .store.base import LedgerRecord, Store

# what callers import from here today (pipeline, objects, tests); new code imports from the modules above
__all__ = ["Accountant", "LeaseMeta", "Reservation", "ids", "refusal_limit"]


class Accountant:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        local: Store,
        *,
        clock: Callable[[], float] = time.time,
        on_reaped: Callable[[LedgerRecord], None] | None = None,
        watch: Watch | None = None,
    ) -> None:
        self.budgets = BudgetsInForce(settings, store, clock=clock)
        self.reservations = Reservations(settings, store, local, self.budgets, clock=clock, watch=watch)
        self.reaper = Reaper(settings, store, self.budgets, self.reservations, clock=clock, on_reaped=on_reaped)

    async def reserve(
        self,
        team: str,
        key_digest: str,
        model: str,
        worst_tokens: int,
        worst_micro_usd: int,
        meta: LeaseMeta | Mapping[str, Any],
        subject: Subject | None = None,
        *,
        sizing: Sizing | None = None,
    ) -> Reservation | None:
        return await self.reservations.reserve(
            team, key_digest, model, worst_tokens, worst_micro_usd, meta, subject, sizing=sizing
        )

    async def settle(self, res: Reservation, tokens: int, micro_usd: int, output_tokens: int | None = None) -> None:
        await self.reservations.settle(res, tokens, micro_usd, output_tokens)

    async def release(self, res: Reservation) -> None:
        await self.reservations.release(res)

    async def extend(self, res: Reservation) -> None:
        await self.reservations.extend(res)

    def renew_at(self, res: Reservation | None) -> float:
        return self.reservations.renew_at(res)

    def downgrade_target(self, team: str, key_digest: str, model: str) -> BudgetSettings | None:
        return self.reservations.downgrade_target(team, key_digest, model)

    def budgeted(self, team: str, key_digest: str) -> bool:
        return self.budgets.budgeted(team, key_digest)

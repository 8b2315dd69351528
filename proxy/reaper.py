"""The accounting background loop of every process: replay what could not be written while the store was
away, re-read the budget overrides any process set, add this process' output histograms to the store and
re-read the fleet's (proxy/observed_outputs.py), and reap the leases whose process died before
settling (charged in full, each recorded in the ledger as ``lease_expired``)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from .budgets import BudgetsInForce
from .errors import StoreUnavailable
from .limits import tag
from .pause import pause
from .reservations import LeaseMeta, Reservations
from .settings import Settings
from .store.base import Lease, LedgerRecord, Store

log = logging.getLogger("quotagate.settle")


class Reaper:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        budgets: BudgetsInForce,
        reservations: Reservations,
        *,
        clock: Callable[[], float] = time.time,
        on_reaped: Callable[[LedgerRecord], None] | None = None,
    ) -> None:
        self._s = settings
        self._store = store
        self._budgets = budgets
        self._reservations = reservations
        self._clock = clock
        self._on_reaped = on_reaped
        self.tags: set[str] = {tag(t) for t in settings.teams}  # the hash tags whose leases are reaped

    async def reap(self) -> int:
        """Charge every expired lease in full and hand its ledger record on; how many there were."""
        now = self._clock()
        n = 0
        for htag in sorted(self.tags):
            for lease in await self._store.reap(htag, now):
                n += 1
                if self._on_reaped is not None:
                    self._on_reaped(_reaped_record(lease))
        return n

    async def run(self, interval: float = 1.0) -> None:
        """Background: replay what could not be written, refresh overrides set by any process, reap."""
        reap_every = max(1.0, min(30.0, self._s.lease_seconds / 10))
        refresh_every = self._s.overrides_refresh_seconds
        interval = min(interval, refresh_every)
        next_reap = 0.0
        next_refresh = time.monotonic() + refresh_every
        while True:
            try:
                if self._reservations.pending:
                    await self._reservations.reconcile()
                if time.monotonic() >= next_refresh:
                    next_refresh = time.monotonic() + refresh_every
                    await self._budgets.load_overrides()
                if time.monotonic() >= next_reap:
                    next_reap = time.monotonic() + reap_every
                    await self.reap()
                await self._reservations.observed.tick()  # output histograms: flush, refresh quantiles
            except StoreUnavailable:
                pass  # try again on the next tick; nothing is dropped
            except Exception:
                log.exception("accounting background task")
            await pause(interval)


def _reaped_record(lease: Lease) -> LedgerRecord:
    m = LeaseMeta.from_json(lease.meta)
    return LedgerRecord(
        request_id=m.request_id or lease.id,
        ts=m.ts,
        team=m.team,
        key_name=m.key_name,
        model=m.model,
        provider=m.provider,
        endpoint=m.endpoint,
        stream=m.stream,
        status=0,
        outcome="lease_expired",
        counted_input=m.counted_input,
        counted_output=m.worst_tokens - (m.counted_input or 0),
        input_tokens=None,
        cached_input_tokens=None,
        output_tokens=None,
        reasoning_tokens=None,
        cost_micro_usd=m.worst_micro_usd,
        latency_ms=None,
        ttft_ms=None,
        error="lease expired unsettled (replica died?): charged the full reservation",
        end_user=m.end_user,
        tags=m.tags,
        charged_tokens=m.worst_tokens,  # reap commits every hold in full: tokens counters held worst_tokens
    )

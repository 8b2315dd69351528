"""Seeding budget counters from the ledger after a store loss, idempotently: N replicas restarting on a
Redis that lost its data (restarted empty, FLUSHALL, a replica promoted before it had synced) set each
counter once, from the ledger, and never add to it.

Every ``counters.seed_check_seconds`` (0: never; first at startup), each process looks for the seed marker
of every hash tag that has budget counters the ledger accounts for (``drift_targets``; one pipelined EXISTS
per tag, ``store/redis_seed.py``). A tag without one is seeded: the ledger's sums for its counters' current
windows (what ``drift.py`` expects) go to one Lua script that, unless the marker exists by then, raises
each counter to ``max(used, ledger)`` and sets the marker. Of replicas seeding at once exactly one writes;
the others find the marker and write nothing; a replay never adds.

Between the loss and the seed (up to ``seed_check_seconds``) requests are admitted against the counters as
the store has them (empty, plus what was charged since); max() then counts what was charged meanwhile
once, whether its ledger row had landed or not, so a budget is exact again from the seed on, less any
charge whose lease the loss took (its settle finds no lease) and whose row lands after the seed: the
drift gauge shows it.

Only the Redis store is seeded, and only from a ledger that outlives it: ``ledger: postgresql://...``. The
Redis stream ledger is lost with the counters (a seed from it finds nothing and changes nothing); the
SQLite store keeps its counters and ledger in one file, and the memory store starts empty by design: for
both, nothing to seed. A first start on a store never seeded (an upgrade) seeds too: with max() it only
raises a counter the ledger shows short.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import defaultdict
from collections.abc import Callable

from .budgets import BudgetsInForce
from .drift_targets import LedgerTooLong, Target, charged_sums, targets
from .errors import StoreUnavailable
from .ledger_sink import LedgerReads, StoreLedger
from .metrics_drift import DriftMetrics
from .pause import pause
from .settings import Settings
from .store.base import Store
from .store.ledger_sums import ChargedSum
from .store.redis import RedisStore
from .store.redis_seed import seed, unseeded

log = logging.getLogger("quotagate.drift")


class Seeder:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        ledger: LedgerReads,
        budgets: BudgetsInForce,
        metrics: DriftMetrics | None = None,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._s = settings
        self._store = store
        self._ledger = ledger
        self._budgets = budgets
        self._metrics = metrics
        self._clock = clock
        self._who = f"{socket.gethostname()}:{os.getpid()}"

    @property
    def applies(self) -> bool:
        return isinstance(self._store, RedisStore)

    async def check(self) -> dict[str, int | None]:
        """Seed every hash tag whose marker is missing: tag -> counters raised here (None: already seeded)."""
        store = self._store
        if not isinstance(store, RedisStore):
            return {}
        now = self._clock()
        by_tag: dict[str, list[Target]] = defaultdict(list)
        for t in targets(self._s, self._budgets, now):
            by_tag[t.hash_tag].append(t)
        missing = await unseeded(store, by_tag)
        if not missing:
            return {}
        if isinstance(self._ledger, StoreLedger):
            log.warning(
                "counters of %s have no seed marker (a new or emptied Redis): the ledger is the Redis stream, "
                "lost with them, so they cannot be seeded from it (set `ledger: postgresql://...`)",
                ", ".join(missing),
            )
        sums: dict[tuple[float, float], list[ChargedSum]] = {}
        out: dict[str, int | None] = {}
        for tag in missing:
            values: dict[str, int] = {}
            for t in by_tag[tag]:
                span = (t.start, t.end)
                if span not in sums:
                    sums[span] = await charged_sums(self._ledger, *span)
                values[t.key] = t.expected(sums[span])
            expires = {t.key: t.expires_at for t in by_tag[tag]}
            out[tag] = raised = await seed(store, tag, values, expires, f"{self._who} at {now:.3f}")
            self._count("already" if raised is None else "seeded")
            if raised is not None:
                (log.warning if raised else log.info)(  # a new, empty store: nothing to raise
                    "counters of %s had no seed marker (the store lost its data, or was never seeded): set from "
                    "the ledger, %d of %d raised",
                    tag,
                    raised,
                    len(values),
                )
        return out

    async def run(self) -> None:
        """Background: a check at once, then every ``counters.seed_check_seconds``; never raises."""
        every = self._s.counters.seed_check_seconds
        if not every or not self.applies:
            return
        while True:
            try:
                await self.check()
            except (StoreUnavailable, LedgerTooLong) as e:
                log.warning("counter seed check skipped: %s", e)
            except Exception:
                log.exception("counter seed check")
            await pause(every)

    def _count(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.seeds.labels(result).inc()

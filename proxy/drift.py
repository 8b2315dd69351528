"""The periodic reconcile of budget counters with the ledger: ``quotagate_budget_drift_{tokens,usd}``.

Every ``counters.reconcile_seconds`` (0: never), each process compares the budget counters the ledger
accounts for (``drift_targets``: the org's, the teams', the config keys', the models' within a team, in
their current calendar windows) with what the ledger's rows of each window say they were charged::

    drift = counter used - sum(charged_tokens | cost_micro_usd of the ledger rows whose ts is in the window)

A row reaches the ledger a little after its request settled (the ledger writes in batches, off the hot
path), so a counter is compared only *at rest*: nothing reserved on it now or at the previous pass, and
``used`` unchanged since then, so that every request it was charged for has had ``reconcile_seconds`` to
reach the ledger; and only while this process's own ledger has nothing waiting. At rest, the stores and
the ledger agree exactly: drift is 0. A counter that never rests (a busy team) keeps the value it had when
it last did.

What a drift that stays means: > 0, the counter holds charges the ledger lacks (ledger rows lost: a process
killed with records in memory, a ledger write set aside, or rows written before version 3, whose
``charged_tokens`` read 0); < 0, the ledger holds charges the counter lacks (the counter was lost or cut:
a store restarted empty before seeding, a budget reset, which starts the window over on purpose, usage
queued by ``on_store_error: open`` that died with its process, or a change behind quotagate's back). A
request that arrived in one window and reserved in the next is charged to the later counter and recorded
in the earlier window: at a window boundary both may read a few tokens off until the earlier one ends.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence

from .budgets import BudgetsInForce
from .drift_targets import LedgerTooLong, Target, charged_sums, targets
from .errors import StoreUnavailable
from .ledger_sink import LedgerReads
from .metrics_drift import DriftMetrics
from .pause import pause
from .settings import Settings
from .store.base import CounterValue, Store
from .store.ledger_sums import ChargedSum
from .values import value

log = logging.getLogger("quotagate.drift")


@value
class Drift:
    """One counter compared with the ledger, at rest."""

    target: Target
    used: int  # the counter's
    expected: int  # the ledger's

    @property
    def drift(self) -> int:
        return self.used - self.expected


class Reconciler:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        ledger: LedgerReads,
        budgets: BudgetsInForce,
        metrics: DriftMetrics | None = None,
        *,
        clock: Callable[[], float] = time.time,
        pending: Callable[[], int] = lambda: 0,
    ) -> None:
        self._s = settings
        self._store = store
        self._ledger = ledger
        self._budgets = budgets
        self._metrics = metrics
        self._clock = clock
        self._pending = pending  # records this process's ledger has not written yet
        self._last: dict[str, CounterValue] = {}  # each target's counter at the previous pass
        self._logged: dict[str, int] = {}  # the drift last logged per counter

    async def check(self) -> list[Drift]:
        """One pass: the counters at rest compared with the ledger (the gauges set, drift logged)."""
        if self._pending():
            self._count("skipped")
            return []
        now = self._clock()
        found = targets(self._s, self._budgets, now)
        values = await self._store.counters([t.key for t in found]) if found else {}
        last, self._last = self._last, values
        resting = [t for t in found if values[t.key].reserved == 0 and last.get(t.key) == values[t.key]]
        sums: dict[tuple[float, float], list[ChargedSum]] = {}
        out: list[Drift] = []
        for t in resting:
            span = (t.start, t.end)
            if span not in sums:
                sums[span] = await charged_sums(self._ledger, *span)
            out.append(Drift(t, values[t.key].used, t.expected(sums[span])))
        self._publish(out)
        self._count("drift" if any(d.drift for d in out) else "ok")
        return out

    async def run(self) -> None:
        """Background: a pass every ``counters.reconcile_seconds``; never raises."""
        every = self._s.counters.reconcile_seconds
        if not every:
            return
        while True:
            await pause(every)
            try:
                await self.check()
            except (StoreUnavailable, LedgerTooLong) as e:
                self._count("failed")
                log.warning("counter drift check skipped: %s", e)
            except Exception:
                self._count("failed")
                log.exception("counter drift check")

    def _publish(self, drifts: Sequence[Drift]) -> None:
        worst: dict[tuple[str, str, str, str], int] = {}
        for d in drifts:
            t = d.target
            labels = (t.unit, t.team, t.scope, t.window)
            if labels not in worst or abs(d.drift) > abs(worst[labels]):
                worst[labels] = d.drift
            if d.drift and self._logged.get(t.key) != d.drift:
                log.warning(
                    "counter drift: %s budget %s%s (%s, %s) reads used %d, the ledger says %d (drift %+d)",
                    t.scope,
                    t.team or "org",
                    f"/{t.entity}" if t.entity else "",
                    t.window,
                    t.unit,
                    d.used,
                    d.expected,
                    d.drift,
                )
            self._logged[t.key] = d.drift
        if len(self._logged) > 10_000:  # window keys roll over
            self._logged = {d.target.key: d.drift for d in drifts}
        if self._metrics is None:
            return
        for (unit, team, scope, window), v in worst.items():
            if unit == "tokens":
                self._metrics.tokens.labels(team, scope, window).set(v)
            else:
                self._metrics.usd.labels(team, scope, window).set(v / 1e6)  # dollars, as every usd metric

    def _count(self, result: str) -> None:
        if self._metrics is not None:
            self._metrics.checks.labels(result).inc()

"""Budget threshold notifications: each ``notify_at`` threshold of a budget fires once per window, fleet-wide.

Flow::

    reserve answer (Admitted: every counter just after; Denied: the refusing one)   no extra round trip
    sweep (every ``sweep_seconds``: the org's, teams' and config keys' budgets)      one round trip
        -> committed ``used`` >= threshold * limit, not yet seen by this process    (memo, no I/O)
        -> store.claim(counter key + threshold, until a day after the window)       one caller wins
        -> the winner counts quotagate_budget_threshold_crossed_total, queues it per webhook (notify_send.py)

Detection reads committed usage, not what requests in flight hold, so a threshold is crossed by what was
spent. A reserve answer shows what earlier requests settled; the sweep sees a crossing that no later
request shows (the last settlement reached the threshold, and nobody asked since). The sweep has its own
task, apart from the reaper's loop, so that neither a slow store read here nor a webhook delays reaping.

Who sends is decided by the store (``claim``: SET NX in Redis, a row in SQLite), so three replicas seeing
the same crossing send it once; the process-local memo keeps a process from asking again for a threshold
it claimed or lost. A claim the store could not answer is forgotten, to be tried on the next answer.
A new window is a new counter key, hence a new claim: thresholds fire again each window.

Calendar windows only: a rolling budget is refused ``notify_at`` by the config (its used share ebbs and
flows step by step, so "once per window" has no window), and session budgets have none (one per agent run).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence

from .budgets import BudgetsInForce, configured_budgets
from .errors import StoreUnavailable
from .limits import Limit, budget_bounds
from .metrics_notify import NotifyMetrics
from .notify_payload import Crossing
from .notify_send import WebhookSender
from .pause import pause
from .settings import BudgetSettings, Settings
from .store.base import Admitted, CounterValue, Denied, Store

log = logging.getLogger("quotagate.notify")
CLAIM_RETAIN_S = 86_400.0  # a claim outlives its window by a day, as the counter does
_SEEN_MAX = 100_000  # claim keys name their window: past this many, drop them wholesale (the store still decides)


def claim_key(lim: Limit, threshold: float) -> str:
    """``{team}:t:b:day:tokens:2026-11-24:n:0.8``: the counter's key names the window instance and starts
    with its hash tag, so the claim shares the counter's Redis Cluster slot."""
    return f"{lim.key}:n:{threshold:g}"


class Notifier:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        metrics: NotifyMetrics,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._s = settings
        self._cfg = settings.notifications
        self._store = store
        self._m = metrics
        self._clock = clock
        self.senders = [WebhookSender(w, self._cfg, metrics) for w in self._cfg.webhooks]
        self._key_names = {k.digest: k.display_name for k in settings.keys}
        self._seen: set[str] = set()  # claim keys this process claimed, lost, or is claiming
        self._claims: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None
        if not self.senders and _any_notify_at(settings):
            log.warning(
                "budgets have `notify_at` but `notifications.webhooks` is empty: crossings are only counted "
                "(quotagate_budget_threshold_crossed_total)"
            )

    # ---- detection --------------------------------------------------------------------------------------
    def observe(self, team: str, key_digest: str, lims: Sequence[Limit], result: Admitted | Denied) -> None:
        """A reserve answer of the shared store (``Reservations`` watch): the crossings it shows. No I/O."""
        values: Mapping[str, CounterValue]
        if isinstance(result, Denied):
            values = {result.hold.key: CounterValue(result.used, result.reserved)}
        else:
            values = result.values
        for lim in lims:
            b = lim.budget
            if isinstance(b, BudgetSettings) and b.notify_at and lim.key in values:
                self._check(team, key_digest, lim, b, values[lim.key].used)

    async def sweep(self, budgets: BudgetsInForce) -> int:
        """Read the configured org, team and key budgets that have thresholds still to cross in this window (one
        store round trip) and check them; how many budgets were read."""
        now = self._clock()
        todo: dict[str, tuple[str, str, Limit]] = {}
        for team, digest in [(t, "") for t in self._s.teams] + [(k.team, k.digest) for k in self._s.keys]:
            for lim in budgets.limits(team, digest, now):
                own = lim.scope == "key" if digest else lim.scope in ("org", "team")  # a key's pass: its own only
                if own and lim.key not in todo and self._pending(lim):  # the org's counter is every team's
                    todo[lim.key] = (team, digest, lim)
        if not todo:
            return 0
        values = await self._store.counters(list(todo))
        for key, (team, digest, lim) in todo.items():
            assert isinstance(lim.budget, BudgetSettings)
            self._check(team, digest, lim, lim.budget, values.get(key, CounterValue()).used)
        return len(todo)

    def _pending(self, lim: Limit) -> bool:
        b = lim.budget
        if not isinstance(b, BudgetSettings) or not b.notify_at or lim.window is None:
            return False
        return any(claim_key(lim, f) not in self._seen for f in b.notify_at)

    def _check(self, team: str, key_digest: str, lim: Limit, b: BudgetSettings, used: int) -> None:
        if lim.window is None:
            return
        for f in b.notify_at:  # ascending
            if used < f * lim.limit:
                return
            key = claim_key(lim, f)
            if key in self._seen:
                continue
            if len(self._seen) >= _SEEN_MAX:
                self._seen.clear()
            self._seen.add(key)
            wid, start, end = budget_bounds(b, lim.window_end - 1)  # the window the counter names
            entity = self._key_names.get(key_digest, f"key-{key_digest[:8]}") if lim.scope == "key" else lim.entity
            c = Crossing(
                key, lim.scope, "" if lim.scope == "org" else team, entity, lim.window, wid, start, end,
                lim.unit, lim.limit, used, f, self._clock(),
            )  # fmt: skip
            task = asyncio.ensure_future(self._claim(c))
            self._claims.add(task)
            task.add_done_callback(self._claims.discard)

    async def _claim(self, c: Crossing) -> None:
        try:
            won = await self._store.claim(c.key, c.window_end + CLAIM_RETAIN_S)
        except StoreUnavailable as e:
            self._seen.discard(c.key)  # not decided: the next answer or sweep asks again
            log.warning("could not claim notification %s: %s", c.key, e)
            return
        except Exception:
            self._seen.discard(c.key)
            log.exception("claiming notification %s", c.key)
            return
        if not won:
            return  # another process (or this one, before a restart) sends it
        self._m.crossed.labels(c.team, c.scope, c.window, c.unit, f"{c.threshold:g}").inc()
        log.info("budget threshold crossed: %s (used %d of %d)", c.key, c.used, c.limit)
        for sender in self.senders:
            sender.put(c)

    async def claimed(self, within: float | None = None) -> None:
        """Wait for the claims in flight (each decided, counted and queued)."""
        if self._claims:
            await asyncio.wait(set(self._claims), timeout=within)

    # ---- lifecycle --------------------------------------------------------------------------------------
    def start(self, budgets: BudgetsInForce) -> None:
        for sender in self.senders:
            sender.start()
        if self._cfg.sweep_seconds > 0:  # runtime overrides may add thresholds: sweeping nothing reads nothing
            self._sweeper = asyncio.create_task(self._sweep_loop(budgets), name="quotagate-notify-sweep")

    async def _sweep_loop(self, budgets: BudgetsInForce) -> None:
        while True:
            await pause(self._cfg.sweep_seconds)
            try:
                await self.sweep(budgets)
            except StoreUnavailable:
                pass  # the next sweep reads again
            except Exception:
                log.exception("notification sweep")

    async def stop(self) -> None:
        """Stop sweeping, let claims in flight finish, send what is queued within ``drain_seconds``."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sweeper
            self._sweeper = None
        deadline = time.monotonic() + self._cfg.drain_seconds
        await self.claimed(self._cfg.drain_seconds)
        for sender in self.senders:
            await sender.close(max(deadline - time.monotonic(), 0.0))


def _any_notify_at(s: Settings) -> bool:
    """A configured budget (org, team and its levels, key) has thresholds (for the startup warning: runtime
    overrides may add some later, and detection reads the budgets in force)."""
    return any(b.notify_at for b in configured_budgets(s))

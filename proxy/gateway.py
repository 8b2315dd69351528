"""Everything one running gateway owns, built once from the settings: the store, the accounting services,
the upstream pool, the ledger, the metrics, the pipeline and the set of in-flight settlement tasks.
Nothing global.

Shutdown order (SIGTERM): uvicorn stops accepting and lets in-flight requests (streams included) finish
within its graceful timeout; then ``stop`` drains settlement tasks, flushes the ledger, and closes the
store and the upstream pool.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import CollectorRegistry

from . import tokenize
from .admin import AdminServices
from .auth import KeyRing
from .budgets import BudgetsInForce
from .count import Counter
from .drift import Reconciler
from .errors import StoreUnavailable
from .ledger import Ledger, spill_dir
from .ledger_sink import LedgerSink, copy_stream, ledger_sink, start_sink
from .limits import tag
from .metrics import Metrics
from .metrics_drift import DriftMetrics
from .metrics_notify import NotifyMetrics
from .notify import Notifier
from .pipeline import Pipeline
from .precount import Precount
from .protocols import ENDPOINTS
from .reaper import Reaper
from .reservations import Reservations
from .seed import Seeder
from .settings import Settings
from .settle import Accountant
from .store import open_store
from .store.base import Store
from .upstream import Upstream

log = logging.getLogger("quotagate")


@dataclass
class Gateway:
    """Everything one running gateway owns."""

    settings: Settings
    store: Store
    local: Store
    keyring: KeyRing
    counter: Counter
    budgets: BudgetsInForce
    reservations: Reservations
    reaper: Reaper
    upstream: Upstream
    ledger: Ledger
    metrics: Metrics
    pipeline: Pipeline
    clock: Callable[[], float]
    precount: Precount
    sink: LedgerSink  # where the ledger is written and read: the store's, or ``ledger:`` (PostgreSQL)
    notifier: Notifier | None = None  # budget threshold notifications (notify_at, ``notifications:``)
    reconciler: Reconciler | None = None  # counters vs the ledger (``counters.reconcile_seconds``)
    seeder: Seeder | None = None  # counters from the ledger after a store loss (``counters.seed_check_seconds``)
    tasks: set[asyncio.Task[None]] = field(default_factory=set)
    background: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def admin(self) -> AdminServices:
        """What the admin API (and ``GET /v1/usage``) may use: budgets, keys, usage reads, settings."""
        return AdminServices(self.settings, self.budgets, self.store, self.keyring, self.sink)

    def spawn(self, coro: Awaitable[None]) -> None:
        task: asyncio.Task[None] = asyncio.ensure_future(coro)
        self.tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("settlement task failed", exc_info=task.exception())

    async def start(self) -> None:
        await self.store.open()
        await start_sink(self.sink)  # a ledger database that is down is logged: the ledger queues and spills
        await self.local.open()
        await self.upstream.start()
        with contextlib.suppress(Exception):
            await self.budgets.load_overrides()
        for key in await _safe_list_keys(self.store):
            self.reaper.tags.add(tag(key.team))
        self.ledger.start()
        self.background.append(asyncio.create_task(self._copy_stream(), name="quotagate-ledger-copy"))
        await self.precount.load(self.sink, _scaled_endpoints())
        for model, factor in self.precount.samples():
            if self.settings.providers[self.settings.models[model].provider].kind == "anthropic":
                self.metrics.set_precount(model, factor)
        # Everything built at boot (config, encodings, the count cache's tables) is permanent: keep it out of
        # the collector's way, and collect the young generation less often (a request allocates a few
        # hundred objects, nearly all short-lived).
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 20, 20)
        self.background.append(asyncio.create_task(self.reaper.run(), name="quotagate-accounting"))
        for checks, name in ((self.seeder, "quotagate-seed"), (self.reconciler, "quotagate-drift")):
            if checks is not None:
                self.background.append(asyncio.create_task(checks.run(), name=name))
        if self.notifier is not None:
            self.notifier.start(self.budgets)

    async def _copy_stream(self) -> None:
        await copy_stream(self.store, self.sink)  # the Redis ledger stream, into ``ledger:`` (if set)

    async def stop(self) -> None:
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=self.settings.shutdown_grace_seconds)
        for t in self.background:
            t.cancel()
        for t in self.background:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        with contextlib.suppress(Exception):
            await self.reservations.reconcile()
        with contextlib.suppress(Exception):  # what this process served, for the fleet's output histograms
            await self.reservations.observed.flush()
        if self.notifier is not None:
            await self.notifier.stop()  # claims need the store: before it closes
        await self.ledger.close()
        await self.sink.close()
        await self.upstream.close()
        await self.local.close()
        await self.store.close()

    async def scrape(self) -> tuple[bytes, str]:
        """The /metrics body: budget gauges read from the store now (one round trip), then every metric."""
        try:
            samples = await self.budgets.budget_samples()
        except StoreUnavailable as e:
            log.warning("budget gauges left out of this scrape: %s", e)
            self.metrics.set_budgets(())
        else:
            self.metrics.set_budgets(
                (b.team, b.window, b.unit, b.limit / d, b.used / d, b.reserved / d)
                for b in samples
                for d in (1e6 if b.unit == "usd" else 1.0,)  # gauges in dollars, as the dashboards read them
            )
        return self.metrics.render()


def _scaled_endpoints() -> frozenset[str]:
    """Endpoints whose count is scaled by a learned pre-count factor (their ledger rows teach it)."""
    return frozenset(e.name for e in ENDPOINTS.values() if e.protocol.precount_scaled)


async def _safe_list_keys(store: Store) -> list[Any]:
    try:
        return await store.list_keys()
    except Exception:
        return []


def build_gateway(
    settings: Settings,
    *,
    store: Store | None = None,
    clock: Callable[[], float] = time.time,
    registry: CollectorRegistry | None = None,
) -> Gateway:
    if store is None:
        store = open_store(settings.store, clock=clock, ledger_stream_max_len=settings.ledger_stream_max_len)
    sink = ledger_sink(settings, store)
    local = open_store("memory://", clock=clock)
    registry = registry if registry is not None else CollectorRegistry()  # shared with the notification metrics
    metrics = Metrics(
        teams=list(settings.teams),
        models={name: m.provider for name, m in settings.models.items()},
        registry=registry,
    )
    ledger = Ledger(
        sink,
        flush_seconds=settings.ledger_flush_seconds,
        queue_max=settings.ledger_queue_max,
        spill_dir=spill_dir(settings.store, settings.ledger_spill_dir),
        metrics=metrics,
    )
    keyring = KeyRing(settings, store)
    counter = Counter()
    hooks = [w.label for w in settings.notifications.webhooks]
    notifier = Notifier(settings, store, NotifyMetrics(registry, hooks), clock=clock)
    accountant = Accountant(settings, store, local, clock=clock, on_reaped=ledger.append, watch=notifier.observe)
    upstream = Upstream(settings)
    tokenize.install(counter, settings, upstream)  # models with their own tokenizer get their own Counter
    holder: dict[str, Gateway] = {}

    def spawn(coro: Awaitable[None]) -> None:
        holder["gw"].spawn(coro)

    precount = Precount(settings, upstream)
    drift = DriftMetrics(registry)
    pipeline = Pipeline(settings, keyring, counter, accountant, upstream, ledger, metrics, spawn, precount)
    gw = holder["gw"] = Gateway(
        settings,
        store,
        local,
        keyring,
        counter,
        accountant.budgets,
        accountant.reservations,
        accountant.reaper,
        upstream,
        ledger,
        metrics,
        pipeline,
        clock,
        precount,
        sink,
        notifier=notifier,
        reconciler=Reconciler(
            settings, store, sink, accountant.budgets, drift, clock=clock, pending=lambda: ledger.pending
        ),
        seeder=Seeder(settings, store, sink, accountant.budgets, drift, clock=clock),
    )
    return gw

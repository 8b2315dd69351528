"""Budget threshold notifications (proxy/notify*.py): the config, the store's ``claim`` on every store, detection
and fleet-wide dedup (two replicas on one store, real memory/SQLite/Redis), the next window and the sweep.

Delivery to a real HTTP receiver: tests/test_notifications_delivery.py; the three-replica acceptance over real
gateway processes: tests/test_notifications_replicas.py.
"""

from __future__ import annotations

import asyncio
import collections
import sqlite3
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from proxy.budgets import BudgetsInForce
from proxy.errors import BudgetExceeded, StoreUnavailable
from proxy.metrics_notify import NotifyMetrics
from proxy.notify import Notifier
from proxy.reservations import Reservations
from proxy.settings import ConfigError, Settings, hash_key, parse
from proxy.settings_budget import BudgetSettings
from proxy.store import MemoryStore, Store, open_store
from proxy.store.base import Admitted, CounterValue
from tests.redis_server import start_redis

T0 = 1_800_000_030.0  # 2027-01-15 08:00:30 UTC, mid-minute; far from Redis' own clock on purpose
DAY_END = 1_800_057_600.0  # the end of T0's UTC day
KEY = "sk-app-0001"
DIGEST = hash_key(KEY)
CROSSED = "quotagate_budget_threshold_crossed_total"


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def config(store: str, **over: Any) -> Settings:
    raw: dict[str, Any] = {
        "store": store,
        "price_table": None,
        "providers": {"p": {"base_url": "http://127.0.0.1:9/v1"}},
        "models": {"m": {"provider": "p", "price": {"input": 1, "output": 1}}},
        "org": {"budgets": [{"window": "month", "tokens": 10_000, "notify_at": [0.5]}]},
        "teams": {"search": {"budgets": [{"window": "day", "tokens": 1000, "notify_at": [0.5, 0.8, 1.0]}]}},
        "keys": [
            {
                "team": "search",
                "name": "app",
                "key": KEY,
                "budgets": [{"window": "month", "usd": 1, "notify_at": [0.5]}],
            }
        ],
    }
    raw.update(over)
    return parse(raw)


# ---- config -------------------------------------------------------------------------------------------------


def test_notify_at_is_sorted_validated_and_survives_an_override_round_trip() -> None:
    b = BudgetSettings(window="day", tokens=10, notify_at=[1.0, 0.5, 0.8])  # type: ignore[arg-type]
    assert b.notify_at == (0.5, 0.8, 1.0)
    assert b.model_dump(mode="json", exclude_defaults=True) == {
        "window": "day",
        "tokens": 10,
        "notify_at": [0.5, 0.8, 1.0],
    }
    assert "notify_at" not in BudgetSettings(window="day", tokens=10).model_dump(exclude_defaults=True)
    for bad, says in (([0], r"\(0, 1\]"), ([1.01], r"\(0, 1\]"), ([0.5, 0.5], "each threshold once")):
        with pytest.raises(ConfigError, match=r"teams\.search\.budgets\.0"):
            config("memory://", teams={"search": {"budgets": [{"window": "day", "tokens": 5, "notify_at": bad}]}})
        with pytest.raises(ValueError, match=says):
            BudgetSettings(window="day", tokens=10, notify_at=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="calendar windows"):
        BudgetSettings(rolling="24h", tokens=10, notify_at=[0.5])  # type: ignore[arg-type]
    # every level that takes budgets takes thresholds
    s = config(
        "memory://",
        teams={
            "search": {
                "end_user_budgets": [{"window": "day", "tokens": 5, "notify_at": [0.9]}],
                "tags": {"budgets": {"etl": [{"window": "day", "tokens": 5, "notify_at": [0.9]}]}},
                "model_limits": {"m": {"budgets": [{"window": "day", "tokens": 5, "notify_at": [0.9]}]}},
            }
        },
    )
    assert s.teams["search"].tags.budgets["etl"][0].notify_at == (0.9,)


async def test_an_override_with_thresholds_reaches_another_process() -> None:
    s = config("memory://")
    store = MemoryStore()
    one, other = BudgetsInForce(s, store), BudgetsInForce(s, store)
    budget = BudgetSettings(window="day", tokens=50, notify_at=[0.25, 1.0])  # type: ignore[arg-type]
    await one.set_override("search", [budget])
    assert await other.load_overrides()
    assert other.team_budgets("search") == (budget,)


def test_notifications_block() -> None:
    s = config(
        "memory://",
        notifications={
            "webhooks": [
                {"url": "https://hooks.slack.com/services/T0/B0/secret", "format": "slack"},
                {"url": "http://owners.internal:8080/budget", "name": "owners", "headers": {"authorization": "x"}},
            ],
            "queue_size": 10,
        },
    )
    hooks = s.notifications.webhooks
    assert [(w.label, w.format) for w in hooks] == [("hooks.slack.com", "slack"), ("owners", "json")]
    assert (s.notifications.retries, s.notifications.timeout_s, s.notifications.queue_size) == (5, 5.0, 10)
    assert config("memory://").notifications.webhooks == ()
    for bad, says in (
        ({"webhooks": [{"url": "ftp://x"}]}, "http"),
        ({"webhooks": [{"url": "http://a/1"}, {"url": "http://a/2"}]}, "distinct `name`"),
        ({"webhooks": [{"url": "http://a", "format": "teams"}]}, "format"),
        ({"queue_size": 0}, "queue_size"),
        ({"retry": 3}, "retry"),
    ):
        with pytest.raises(ConfigError, match=says):
            config("memory://", notifications=bad)


# ---- the store's claim, on every store ----------------------------------------------------------------------


@dataclass
class Backend:
    name: str
    make: Callable[[], Store]  # a new store object over the same data (the same object for memory)


@pytest.fixture(params=["memory", "sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> Backend:
    if request.param == "memory":
        shared = MemoryStore(clock=clock)
        return Backend("memory", lambda: shared)
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'store.db'}"
        return Backend("sqlite", lambda: open_store(url, clock=clock))
    url = request.getfixturevalue("clean_redis")
    return Backend("redis", lambda: open_store(url, clock=clock))


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def stores(backend: Backend) -> AsyncIterator[tuple[Store, Store]]:
    a, b = backend.make(), backend.make()
    await a.open()
    await b.open()
    yield a, b
    await a.close()
    await b.close()


async def test_claim_is_once_per_key_until_it_expires(stores: tuple[Store, Store], clock: Clock) -> None:
    a, b = stores
    key = "{search}:t:b:day:tokens:2027-01-15:n:0.5"
    assert await a.claim(key, T0 + 100) is True
    assert await a.claim(key, T0 + 100) is False
    assert await b.claim(key, T0 + 100) is False  # another replica
    assert await b.claim("{search}:t:b:day:tokens:2027-01-15:n:0.8", T0 + 100) is True  # another key
    assert await a.claim("{qg-org}:o:b:month:tokens:2027-01:n:0.5", T0 + 100) is True
    clock.now = T0 + 99.9
    assert await b.claim(key, T0 + 200) is False
    clock.now = T0 + 100  # expired by the store's clock: claimable again
    assert await b.claim(key, T0 + 200) is True
    assert await a.claim(key, T0 + 200) is False


async def test_concurrent_claims_have_exactly_one_winner(stores: tuple[Store, Store]) -> None:
    a, b = stores
    keys = [f"{{t{i % 3}}}:t:b:day:tokens:2027-01-15:n:{i}" for i in range(10)]
    calls = [(k, s) for k in keys for s in (a, b) for _ in range(10)]  # 20 callers per key, on two store objects
    won = await asyncio.gather(*(s.claim(k, T0 + 60) for k, s in calls))
    assert collections.Counter(k for (k, _), w in zip(calls, won, strict=True) if w) == dict.fromkeys(keys, 1)


async def test_sqlite_claims_of_past_windows_are_cleaned(tmp_path: Path, clock: Clock) -> None:
    store = open_store(f"sqlite:///{tmp_path / 'c.db'}", clock=clock)
    await store.open()
    try:
        for i in range(5):
            assert await store.claim(f"{{t}}:old:{i}", T0 + 10)
        clock.now = T0 + 10
        assert await store.claim("{t}:new", T0 + 20)
        with sqlite3.connect(tmp_path / "c.db") as con:
            assert con.execute("SELECT key FROM claims").fetchall() == [("{t}:new",)]
    finally:
        await store.close()


# ---- detection and fleet-wide dedup -------------------------------------------------------------------------


@dataclass
class Replica:
    store: Store
    budgets: BudgetsInForce
    reservations: Reservations
    notifier: Notifier
    registry: CollectorRegistry

    async def spend(self, tokens: int, micro_usd: int = 0) -> None:
        res = await self.reservations.reserve("search", DIGEST, "m", tokens, micro_usd, {})
        assert res is not None
        await self.reservations.settle(res, tokens, micro_usd)

    async def probe(self) -> None:
        """A one-token request (admitted and given back, or refused): the reserve answer shows the counters."""
        try:
            res = await self.reservations.reserve("search", DIGEST, "m", 1, 0, {})
        except BudgetExceeded:
            pass
        else:
            assert res is not None
            await self.reservations.release(res)
        await self.notifier.claimed()

    def crossed(self, **labels: str) -> float:
        want = {"team": "search", "scope": "team", "window": "day", "unit": "tokens", **labels}
        return self.registry.get_sample_value(CROSSED, want) or 0.0


async def make_replica(s: Settings, store: Store, clock: Clock) -> Replica:
    await store.open()
    registry = CollectorRegistry()
    notifier = Notifier(s, store, NotifyMetrics(registry, [w.label for w in s.notifications.webhooks]), clock=clock)
    budgets = BudgetsInForce(s, store, clock=clock)
    reservations = Reservations(s, store, MemoryStore(clock=clock), budgets, clock=clock, watch=notifier.observe)
    return Replica(store, budgets, reservations, notifier, registry)


@pytest.fixture
async def replicas(backend: Backend, clock: Clock) -> AsyncIterator[list[Replica]]:
    s = config("memory://")
    reps = [await make_replica(s, backend.make(), clock) for _ in range(2)]
    yield reps
    for r in reps:
        await r.store.close()


def total(reps: list[Replica], threshold: str, **labels: str) -> float:
    return sum(r.crossed(threshold=threshold, **labels) for r in reps)


async def test_each_threshold_fires_once_across_replicas_then_again_next_window(
    replicas: list[Replica], clock: Clock
) -> None:
    a, b = replicas
    await a.spend(499)
    await a.probe()
    await b.probe()
    assert total(replicas, "0.5") == 0  # 499 of 1000: not yet
    await b.spend(101)  # 600 committed; this reserve answer still showed 499
    assert total(replicas, "0.5") == 0
    await asyncio.gather(a.probe(), b.probe(), a.probe(), b.probe())  # both see 600 at once
    assert total(replicas, "0.5") == 1 and total(replicas, "0.8") == 0
    await a.spend(400)  # 1000: the 0.8 and 1.0 thresholds at once
    await asyncio.gather(*(r.probe() for r in (a, b, a, b)))  # refused: the refusal shows used
    assert [total(replicas, t) for t in ("0.5", "0.8", "1")] == [1, 1, 1]
    for _ in range(3):
        await asyncio.gather(a.probe(), b.probe())
    assert [total(replicas, t) for t in ("0.5", "0.8", "1")] == [1, 1, 1]

    clock.now = DAY_END + 30  # the next day: a new counter, a new claim
    await a.spend(900)
    await asyncio.gather(a.probe(), b.probe())
    assert [total(replicas, t) for t in ("0.5", "0.8", "1")] == [2, 2, 1]


async def test_sweep_sees_a_crossing_no_request_shows(replicas: list[Replica], clock: Clock) -> None:
    """The last request's settlement reached the threshold and nobody asked since: the sweep of each replica
    reads the configured org, team and key budgets; one of them wins each claim."""
    a, b = replicas
    await a.spend(800, micro_usd=600_000)  # team 80%, the key's month USD budget 60%, org 8%
    await asyncio.gather(a.notifier.sweep(a.budgets), b.notifier.sweep(b.budgets))
    await asyncio.gather(a.notifier.claimed(), b.notifier.claimed())
    assert [total(replicas, t) for t in ("0.5", "0.8", "1")] == [1, 1, 0]
    key = {"team": "search", "scope": "key", "window": "month", "unit": "usd", "threshold": "0.5"}
    assert sum(r.registry.get_sample_value(CROSSED, key) or 0 for r in replicas) == 1
    await a.spend(200)  # org 10%: still short of its 50%
    assert await a.notifier.sweep(a.budgets) == 2  # what is left to cross: team 1.0 (now crossed), org 0.5
    await a.notifier.claimed()
    assert total(replicas, "1") == 1
    org = {"team": "", "scope": "org", "window": "month", "unit": "tokens", "threshold": "0.5"}
    assert sum(r.registry.get_sample_value(CROSSED, org) or 0 for r in replicas) == 0
    assert await a.notifier.sweep(a.budgets) == 1  # only the org's threshold remains


async def test_a_claim_the_store_could_not_answer_is_asked_again(clock: Clock) -> None:
    server = start_redis()
    try:
        rep = await make_replica(config(server.url, on_store_error="open"), open_store(server.url, clock=clock), clock)
        await rep.spend(600)
        server.stop()
        with pytest.raises(StoreUnavailable):
            await rep.store.claim("{search}:x", T0 + 10)
        rep.notifier.observe("search", DIGEST, rep.budgets.limits("search", DIGEST, T0), _answer(rep, 600))
        await rep.notifier.claimed()
        assert rep.crossed(threshold="0.5") == 0
        server.start()  # empty again (no persistence): the next answer that shows 600 is claimed
        rep.notifier.observe("search", DIGEST, rep.budgets.limits("search", DIGEST, T0), _answer(rep, 600))
        await rep.notifier.claimed()
        assert rep.crossed(threshold="0.5") == 1
        await rep.store.close()
    finally:
        server.close()


def _answer(rep: Replica, used: int) -> Admitted:
    return Admitted({lim.key: CounterValue(used, 0) for lim in rep.budgets.limits("search", DIGEST, T0)})

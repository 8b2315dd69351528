"""One contract suite, run unchanged against every store: memory, SQLite (a real file), Redis (a real server).

Followed by what only some stores promise: durability across reopen, atomicity across processes, and
``StoreUnavailable`` when the backend is gone.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import sqlite3
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import redis

from proxy.errors import StoreUnavailable
from proxy.store import (
    Admitted,
    CounterValue,
    Denied,
    Hold,
    KeyRecord,
    Lease,
    LedgerRecord,
    MemoryStore,
    RedisStore,
    SqliteStore,
    Store,
    UsageRow,
    open_store,
)
from proxy.store.base import OBJECT_RETENTION_S, ObjectRecord
from tests.redis_server import free_port, start_redis

T0 = 1_800_000_000.0  # the fake clock starts in the future: nothing may rely on Redis' own clock
TAG = "{search}"
DAY = f"{TAG}:b:day:cost"
RPM = f"{TAG}:r:min:requests"
CONC = f"{TAG}:g:concurrency"


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Backend:
    name: str
    make: Callable[[], Store]  # a new store object over the same data
    durable: bool


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture(params=["memory", "sqlite", "redis"])
def backend(request: pytest.FixtureRequest, tmp_path: Path, clock: FakeClock) -> Backend:
    if request.param == "memory":
        return Backend("memory", lambda: open_store("memory://", clock=clock), durable=False)
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'nested' / 'store.db'}"
        return Backend("sqlite", lambda: open_store(url, clock=clock), durable=True)
    url = request.getfixturevalue("clean_redis")
    return Backend("redis", lambda: open_store(url, clock=clock), durable=True)


@pytest.fixture
async def store(backend: Backend) -> AsyncIterator[Store]:
    s = backend.make()
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def lease(*holds: Hold, expires_in: float = 60.0, meta: dict[str, Any] | None = None, tag: str = TAG) -> Lease:
    return Lease(
        id=uuid.uuid4().hex,
        hash_tag=tag,
        holds=holds,
        expires_at=T0 + expires_in,
        meta=meta or {},
    )


def hold(key: str = DAY, limit: int = 100, amount: int = 10, window: float = 86_400.0) -> Hold:
    return Hold(key=key, limit=limit, amount=amount, expires_at=T0 + window if window else 0.0)


async def value(store: Store, key: str) -> CounterValue:
    return (await store.counters([key]))[key]


# reserve / settle


async def test_reserve_is_all_or_nothing(store: Store) -> None:
    budget, rate = hold(DAY, limit=100, amount=50), hold(RPM, limit=10, amount=11)
    denied = await store.reserve(lease(budget, rate))
    assert denied == Denied(hold=rate, used=0, reserved=0)
    assert await store.counters([DAY, RPM]) == {DAY: CounterValue(0, 0), RPM: CounterValue(0, 0)}

    ok = lease(budget, hold(RPM, limit=10, amount=10))
    assert isinstance(await store.reserve(ok), Admitted)
    assert await store.counters([DAY, RPM]) == {DAY: CounterValue(0, 50), RPM: CounterValue(0, 10)}
    # the first hold that does not fit is reported, with the counter's state
    first, second = hold(DAY, limit=100, amount=51), hold(RPM, limit=10, amount=1)
    assert await store.reserve(lease(first, second)) == Denied(hold=first, used=0, reserved=50)
    assert await store.counters([DAY, RPM]) == {DAY: CounterValue(0, 50), RPM: CounterValue(0, 10)}


async def test_admission_boundary_is_exact(store: Store) -> None:
    assert isinstance(await store.reserve(lease(hold(amount=60))), Admitted)
    assert await store.reserve(lease(hold(amount=41))) == Denied(hold(amount=41), used=0, reserved=60)
    assert isinstance(await store.reserve(lease(hold(amount=40))), Admitted)  # used + reserved + amount == limit
    assert await store.reserve(lease(hold(amount=1))) == Denied(hold(amount=1), used=0, reserved=100)
    assert await value(store, DAY) == CounterValue(0, 100)


async def test_two_holds_on_one_counter_are_admitted_together(store: Store) -> None:
    a, b = hold(amount=60), hold(amount=50)
    assert await store.reserve(lease(a, b)) == Denied(b, used=0, reserved=0)
    assert await value(store, DAY) == CounterValue(0, 0)


async def test_unlimited_hold_is_tracked_never_refused(store: Store) -> None:
    big = hold(CONC, limit=-1, amount=10**15, window=0)
    assert isinstance(await store.reserve(lease(big)), Admitted)
    assert isinstance(await store.reserve(lease(big)), Admitted)
    assert await value(store, CONC) == CounterValue(0, 2 * 10**15)


async def test_settle_charges_actual_and_releases_the_rest(store: Store) -> None:
    first = lease(hold(amount=80), hold(RPM, limit=5, amount=1, window=60))
    assert isinstance(await store.reserve(first), Admitted)
    assert isinstance(await store.reserve(lease(hold(amount=71))), Denied)
    assert await store.settle(first.id, TAG, {DAY: 30, RPM: 1}) is True
    assert await store.counters([DAY, RPM]) == {DAY: CounterValue(30, 0), RPM: CounterValue(1, 0)}
    assert isinstance(await store.reserve(lease(hold(amount=71))), Denied)
    assert isinstance(await store.reserve(lease(hold(amount=70))), Admitted)  # the released 50 admits more
    assert await value(store, DAY) == CounterValue(30, 70)


async def test_settle_is_idempotent(store: Store) -> None:
    one = lease(hold(amount=40))
    assert isinstance(await store.reserve(one), Admitted)
    assert await store.settle(one.id, TAG, {DAY: 25}) is True
    assert await store.settle(one.id, TAG, {DAY: 25}) is False
    assert await store.settle("never-reserved", TAG, {DAY: 25}) is False
    assert await value(store, DAY) == CounterValue(25, 0)


async def test_reserving_the_same_lease_twice_is_a_noop(store: Store) -> None:
    one = lease(hold(amount=40))
    assert isinstance(await store.reserve(one), Admitted)
    assert isinstance(await store.reserve(one), Admitted)
    assert await value(store, DAY) == CounterValue(0, 40)


async def test_concurrent_reserves_admit_exactly_what_fits(store: Store) -> None:
    k, worst, actual = 37, 10, 7
    leases = [lease(hold(limit=k * worst, amount=worst), hold(CONC, limit=-1, amount=1, window=0)) for _ in range(200)]
    results = await asyncio.gather(*(store.reserve(x) for x in leases))
    admitted = [x for x, r in zip(leases, results, strict=True) if isinstance(r, Admitted)]
    assert len(admitted) == k
    assert all(isinstance(r, Denied) and r.hold.key == DAY for r in results if not isinstance(r, Admitted))
    v = await value(store, DAY)
    assert v.used + v.reserved <= k * worst
    assert v == CounterValue(0, k * worst)
    assert await value(store, CONC) == CounterValue(0, k)

    settled = await asyncio.gather(*(store.settle(x.id, TAG, {DAY: actual, CONC: 0}) for x in leases))
    assert sum(settled) == k
    assert await value(store, DAY) == CounterValue(k * actual, 0)
    assert await value(store, CONC) == CounterValue(0, 0)


# time


async def test_counter_expires_at_its_window_end(store: Store, clock: FakeClock) -> None:
    one = lease(hold(limit=100, amount=100, window=60))
    assert isinstance(await store.reserve(one), Admitted)
    assert await store.settle(one.id, TAG, {DAY: 100}) is True
    assert isinstance(await store.reserve(lease(hold(limit=100, amount=1, window=60))), Denied)
    clock.advance(59.9)
    assert await value(store, DAY) == CounterValue(100, 0)
    clock.advance(0.1)
    assert await value(store, DAY) == CounterValue(0, 0)
    fresh = Hold(DAY, limit=100, amount=100, expires_at=clock.now + 60)
    assert isinstance(await store.reserve(Lease("next-window", TAG, (fresh,), clock.now + 60)), Admitted)
    assert await value(store, DAY) == CounterValue(0, 100)


async def test_settling_after_the_window_ended_charges_nothing(store: Store, clock: FakeClock) -> None:
    one = lease(hold(limit=100, amount=50, window=60), expires_in=3600)
    assert isinstance(await store.reserve(one), Admitted)
    clock.advance(61)
    assert await store.settle(one.id, TAG, {DAY: 50}) is True
    assert await value(store, DAY) == CounterValue(0, 0)


async def test_reap_charges_expired_leases_in_full(store: Store, clock: FakeClock) -> None:
    meta = {"request_id": "req-1", "model": "gpt-4o", "n": [1, 2.5, None]}
    stale = lease(hold(amount=40), hold(RPM, limit=10, amount=1, window=60), expires_in=30, meta=meta)
    live = lease(hold(amount=10), expires_in=300)
    other_team = lease(hold("{other}:b:day:cost", amount=5), expires_in=30, tag="{other}")
    for x in (stale, live, other_team):
        assert isinstance(await store.reserve(x), Admitted)
    assert await store.reap(TAG, clock.now) == []
    clock.advance(31)

    reaped = await store.reap(TAG, clock.now)
    assert [(x.id, x.hash_tag, x.holds, dict(x.meta)) for x in reaped] == [(stale.id, TAG, stale.holds, meta)]
    assert reaped[0].expires_at == pytest.approx(stale.expires_at)
    assert await store.counters([DAY, RPM]) == {DAY: CounterValue(40, 10), RPM: CounterValue(1, 0)}
    assert await store.settle(stale.id, TAG, {DAY: 1}) is False  # too late: charged in full already
    assert await store.counters([DAY, RPM]) == {DAY: CounterValue(40, 10), RPM: CounterValue(1, 0)}
    assert await store.reap(TAG, clock.now) == []
    assert await value(store, "{other}:b:day:cost") == CounterValue(0, 5)  # another tag: untouched
    assert await store.settle(live.id, TAG, {DAY: 3}) is True
    assert await value(store, DAY) == CounterValue(43, 0)


async def test_extend_prevents_reap(store: Store, clock: FakeClock) -> None:
    long = lease(hold(amount=40), expires_in=30)
    assert isinstance(await store.reserve(long), Admitted)
    assert await store.extend(long.id, TAG, clock.now + 300) is True
    assert await store.extend("unknown", TAG, clock.now + 300) is False
    clock.advance(31)
    assert await store.reap(TAG, clock.now) == []
    assert await store.settle(long.id, TAG, {DAY: 12}) is True
    assert await value(store, DAY) == CounterValue(12, 0)
    assert await store.extend(long.id, TAG, clock.now + 300) is False


async def test_add_usage_charges_unconditionally(store: Store, clock: FakeClock) -> None:
    window = {DAY: clock.now + 60}
    await store.add_usage(TAG, {DAY: 70}, window)
    await store.add_usage(TAG, {DAY: 70}, window)
    assert await value(store, DAY) == CounterValue(140, 0)  # over the limit: it was already spent
    assert isinstance(await store.reserve(lease(hold(limit=150, amount=11))), Denied)
    await store.add_usage(TAG, {RPM: 5}, {RPM: clock.now - 1})  # a window already over: ignored
    assert await value(store, RPM) == CounterValue(0, 0)
    clock.advance(60)
    assert await value(store, DAY) == CounterValue(0, 0)


async def test_missing_counters_read_zero(store: Store) -> None:
    assert await store.counters(["{x}:nothing", DAY]) == {"{x}:nothing": CounterValue(), DAY: CounterValue()}
    assert await store.counters([]) == {}


# keys and overrides


async def test_keys(store: Store) -> None:
    a = KeyRecord(sha256="a" * 64, team="search", name="ci", created_at=T0 + 0.123456)
    b = KeyRecord(sha256="b" * 64, team="search", name="batch", created_at=T0)
    c = KeyRecord(sha256="c" * 64, team="ads", name='odd "revoked":false name', created_at=T0)
    for r in (a, b, c):
        await store.put_key(r)
    assert await store.find_key(a.sha256) == a
    assert await store.find_key("f" * 64) is None
    assert await store.list_keys() == [c, b, a]
    assert await store.list_keys("search") == [b, a]
    assert await store.revoke_key(a.sha256) is True
    assert await store.revoke_key(c.sha256) is True
    assert await store.revoke_key(a.sha256) is True  # already revoked: still known
    assert await store.revoke_key("f" * 64) is False
    assert await store.find_key(a.sha256) == KeyRecord(a.sha256, "search", "ci", a.created_at, revoked=True)
    assert await store.find_key(c.sha256) == KeyRecord(c.sha256, "ads", c.name, T0, revoked=True)
    assert await store.find_key(b.sha256) == b


async def test_overrides(store: Store) -> None:
    assert await store.get_overrides() == {}
    budgets = [{"window": "day", "limit_usd": 12.5, "metric": "cost"}, {"window": "minute", "limit": 100}]
    await store.set_override("search", budgets)
    await store.set_override("ads", [])
    await store.set_override("search", budgets[:1])
    assert await store.get_overrides() == {"search": budgets[:1], "ads": []}


async def test_state_survives_reopen(backend: Backend, store: Store) -> None:
    if not backend.durable:
        pytest.skip("the memory store is not durable by design")
    key = KeyRecord(sha256="a" * 64, team="search", name="ci", created_at=T0)
    await store.put_key(key)
    await store.set_override("search", [{"limit": 1}])
    open_lease = lease(hold(amount=30))
    assert isinstance(await store.reserve(open_lease), Admitted)
    await store.add_usage(TAG, {DAY: 5}, {DAY: T0 + 86_400})
    await store.write_ledger([record("r1", T0)])
    await store.close()

    again = backend.make()
    await again.open()
    try:
        assert await again.find_key(key.sha256) == key
        assert await again.get_overrides() == {"search": [{"limit": 1}]}
        assert await value(again, DAY) == CounterValue(5, 30)
        assert await again.settle(open_lease.id, TAG, {DAY: 20}) is True
        assert await value(again, DAY) == CounterValue(25, 0)
        assert await again.ledger(0) == [record("r1", T0)]
    finally:
        await again.close()


# ledger


def record(rid: str, ts: float, team: str = "search", model: str = "gpt-4o", **kw: Any) -> LedgerRecord:
    base: dict[str, Any] = dict(
        request_id=rid,
        ts=ts,
        team=team,
        key_name="ci",
        model=model,
        provider="openai",
        endpoint="chat",
        stream=True,
        status=200,
        outcome="ok",
        counted_input=100,
        counted_output=50,
        input_tokens=101,
        cached_input_tokens=20,
        output_tokens=49,
        reasoning_tokens=None,
        cost_micro_usd=1234,
        latency_ms=812.5,
        ttft_ms=120.25,
    )
    base.update(kw)
    return LedgerRecord(**base)


async def test_ledger_and_usage(store: Store) -> None:
    records = [
        record("old", T0 - 3600),
        record("a1", T0 + 5),
        record("a2", T0 + 1, input_tokens=None, output_tokens=None, cached_input_tokens=None, cost_micro_usd=0),
        record("a3", T0 + 3, model="gpt-4o-mini", reasoning_tokens=7, stream=False, estimated=True, seed=42),
        record(
            "b1",
            T0 + 2,
            team="ads",
            status=429,
            outcome="budget_exceeded",
            counted_output=None,
            output_tokens=None,
            error="over budget",
            system_fingerprint="fp_1",
            upstream_model="gpt-4o-2024",
        ),
    ]
    await store.write_ledger(records[:3])
    await store.write_ledger(records[3:])
    await store.write_ledger([])
    late = record("a0", T0 + 0.5, team="search")  # arrives last, happened earlier
    await store.write_ledger([late])

    assert await store.usage(T0) == [
        UsageRow("ads", "gpt-4o", 1, 101, 20, 0, 0, 1234),
        UsageRow("search", "gpt-4o", 3, 101 + 100 + 101, 20 + 0 + 20, 49 + 50 + 49, 0, 1234 + 0 + 1234),
        UsageRow("search", "gpt-4o-mini", 1, 101, 20, 49, 7, 1234),
    ]
    assert await store.usage(T0, team="ads") == [UsageRow("ads", "gpt-4o", 1, 101, 20, 0, 0, 1234)]
    assert [r.team for r in await store.usage(0)] == ["ads", "search", "search"]
    assert (await store.usage(0, team="search"))[0].requests == 4
    assert await store.usage(T0 + 10) == []

    by_id = {r.request_id: r for r in [*records, late]}
    newest_first = await store.ledger(T0)
    assert [r.request_id for r in newest_first] == ["a1", "a3", "b1", "a2", "a0"]
    assert newest_first == [by_id[r.request_id] for r in newest_first]  # every field round-trips
    assert [r.request_id for r in await store.ledger(T0, team="search")] == ["a1", "a3", "a2", "a0"]
    assert [r.request_id for r in await store.ledger(0, team="search", limit=2)] == ["a1", "a3"]
    assert [r.request_id for r in await store.ledger(0)][-1] == "old"


# open_store


def test_open_store_urls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert isinstance(open_store("memory://"), MemoryStore)
    assert isinstance(open_store("redis://:secret@127.0.0.1:6390/2"), RedisStore)
    assert isinstance(open_store("rediss://127.0.0.1:6390/0"), RedisStore)
    with pytest.raises(ValueError, match="unknown store URL scheme 'postgres'"):
        open_store("postgres://db/quotagate")
    with pytest.raises(ValueError, match="SQLite"):
        open_store("sqlite://")
    monkeypatch.chdir(tmp_path)
    relative = open_store("sqlite:///data/dir/q.db")
    assert isinstance(relative, SqliteStore)

    async def touch() -> None:
        await relative.open()
        await relative.ping()
        await relative.close()

    asyncio.run(touch())
    assert (tmp_path / "data" / "dir" / "q.db").is_file()


# outages


async def test_redis_on_a_closed_port_is_unavailable() -> None:
    store = open_store(f"redis://127.0.0.1:{free_port()}/0")
    await store.open()
    started = time.monotonic()
    try:
        with pytest.raises(StoreUnavailable, match="unavailable"):
            await store.ping()
        with pytest.raises(StoreUnavailable):
            await store.reserve(lease(hold()))
        with pytest.raises(StoreUnavailable):
            await store.counters([DAY])
        with pytest.raises(StoreUnavailable):
            await store.ledger(0)
    finally:
        await store.close()
    assert time.monotonic() - started < 3


async def test_redis_outage_then_recovery() -> None:
    server = start_redis()
    store = open_store(server.url)
    await store.open()
    try:
        one = lease(hold(amount=40))
        assert isinstance(await store.reserve(one), Admitted)
        server.stop()
        with pytest.raises(StoreUnavailable):
            await store.settle(one.id, TAG, {DAY: 10})
        with pytest.raises(StoreUnavailable):
            await store.write_ledger([record("r", T0)])
        server.start()  # same port, empty (nothing persisted): the pooled sockets are stale
        assert isinstance(await store.reserve(lease(hold(amount=40))), Admitted)
        assert await value(store, DAY) == CounterValue(0, 40)
    finally:
        await store.close()
        server.close()


async def test_sqlite_locked_past_busy_timeout_is_unavailable(tmp_path: Path) -> None:
    path = tmp_path / "locked.db"
    store = SqliteStore(path, busy_timeout=0.1)
    await store.open()
    blocker = sqlite3.connect(path, isolation_level=None)
    try:
        blocker.execute("BEGIN IMMEDIATE")
        with pytest.raises(StoreUnavailable, match="locked"):
            await store.reserve(lease(hold()))
        blocker.execute("ROLLBACK")
        assert isinstance(await store.reserve(lease(hold())), Admitted)
    finally:
        blocker.close()
        await store.close()


# Redis specifics


async def test_redis_keys_share_the_lease_hash_tag(clean_redis: str) -> None:
    store = RedisStore(clean_redis, clock=FakeClock(1_000_000_000.0))  # a clock far in the past
    await store.open()
    client = redis.Redis.from_url(clean_redis, decode_responses=True)
    try:
        one = Lease("L1", TAG, (Hold(DAY, 100, 10, 1_000_000_060.0),), 1_000_000_030.0)
        assert isinstance(await store.reserve(one), Admitted)
        keys = sorted(client.keys("*"))
        assert keys == [f"qg:c:{DAY}", "qg:{search}:l:L1", "qg:{search}:leases"]
        # GC TTL relative to the caller's clock: window (60 s) + grace, not "already past"
        assert 60_000 < client.pttl(f"qg:c:{DAY}") <= 120_000
        assert client.pttl("qg:{search}:l:L1") == -1  # leases are never dropped by Redis
    finally:
        client.close()
        await store.close()


# across processes


def _mp_worker(url: str, attempts: int, limit: int, barrier: Any, results: Any) -> None:
    async def main() -> int:
        store = open_store(url)
        await store.open()
        try:
            barrier.wait(30)
            leases = [
                Lease(
                    uuid.uuid4().hex,
                    "{mp}",
                    (Hold("{mp}:tokens", limit, 10, time.time() + 3600),),
                    time.time() + 60,
                )
                for _ in range(attempts)
            ]
            outcomes = await asyncio.gather(*(store.reserve(x) for x in leases))
            return sum(1 for o in outcomes if isinstance(o, Admitted))
        finally:
            await store.close()

    try:
        results.put(asyncio.run(main()))
    except BaseException as e:  # hand the failure to the parent instead of leaving it waiting
        results.put(f"{type(e).__name__}: {e}")
        raise


def _run_processes(url: str, processes: int, attempts: int, k: int) -> int:
    ctx = multiprocessing.get_context("spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    procs = [ctx.Process(target=_mp_worker, args=(url, attempts, k * 10, barrier, results)) for _ in range(processes)]
    for p in procs:
        p.start()
    try:
        outcomes = [results.get(timeout=60) for _ in procs]
    finally:
        for p in procs:
            p.join(timeout=30)
    failures = [o for o in outcomes if not isinstance(o, int)]
    assert not failures, failures
    assert all(p.exitcode == 0 for p in procs)
    return sum(outcomes)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_reserve_is_atomic_across_processes(kind: str, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    url = f"sqlite:///{tmp_path / 'shared.db'}" if kind == "sqlite" else request.getfixturevalue("clean_redis")
    if kind == "sqlite":  # create the schema once, so the workers race on reserves only
        init = open_store(url)
        await init.open()
        await init.close()
    k = 53
    admitted = await asyncio.to_thread(_run_processes, url, 3, 60, k)
    assert admitted == k
    store = open_store(url)
    await store.open()
    try:
        assert await value(store, "{mp}:tokens") == CounterValue(0, k * 10)
    finally:
        await store.close()


async def test_admitted_reports_counters_after_the_reservation(store: Store) -> None:
    first = await store.reserve(lease(hold(amount=30)))
    assert isinstance(first, Admitted)
    assert first.values[DAY] == CounterValue(used=0, reserved=30)
    second = await store.reserve(lease(hold(amount=20)))
    assert isinstance(second, Admitted)
    assert second.values[DAY] == CounterValue(used=0, reserved=50)


async def test_reap_releases_slots_without_committing_them(store: Store, clock: FakeClock) -> None:
    slot = Hold("{search}:t:conc", 2, 1, 0.0, commit=False)
    budget = hold(amount=40)
    dead = Lease("dead-slot", TAG, (slot, budget), clock.now + 5)
    assert isinstance(await store.reserve(dead), Admitted)
    reaped = await store.reap(TAG, clock.now + 10)
    assert [x.id for x in reaped] == ["dead-slot"]
    assert reaped[0].holds[0].commit is False
    values = await store.counters([slot.key, DAY])
    assert values[slot.key] == CounterValue(used=0, reserved=0)  # the slot is free again, nothing committed
    assert values[DAY] == CounterValue(used=40, reserved=0)  # the budget is charged in full


# objects: who owns a provider-side id (stateful endpoints)


def obj(object_id: str, team: str = "search", kind: str = "response", created_at: float = T0) -> ObjectRecord:
    return ObjectRecord(kind, object_id, team, "openai", created_at)


async def test_objects_record_owner_and_provider(store: Store) -> None:
    await store.put_object(obj("resp_a"))
    await store.put_object(obj("resp_b", team="ads"))
    await store.put_object(obj("resp_a", kind="chat.completion", team="ads"))  # kinds are separate namespaces
    found = await store.find_objects("response", ["resp_a", "resp_b", "resp_never", "resp_a"])
    assert found == {"resp_a": obj("resp_a"), "resp_b": obj("resp_b", team="ads")}
    assert await store.find_objects("chat.completion", ["resp_a"]) == {
        "resp_a": obj("resp_a", kind="chat.completion", team="ads")
    }
    assert await store.find_objects("response", []) == {}


async def test_deleting_an_object_marks_it(store: Store) -> None:
    await store.put_object(obj("resp_a"))
    assert await store.delete_object("response", "resp_a") is True
    assert await store.delete_object("response", "resp_a") is True  # already deleted: still known
    assert await store.delete_object("response", "resp_never") is False
    assert await store.find_objects("response", ["resp_a"]) == {"resp_a": replace(obj("resp_a"), deleted=True)}
    assert await store.find_objects("response", ["resp_never"]) == {}  # deleting an unknown id created nothing


async def test_objects_are_forgotten_after_their_retention(store: Store, clock: FakeClock) -> None:
    await store.put_object(obj("resp_old", created_at=clock.now - OBJECT_RETENTION_S + 60))
    await store.put_object(obj("resp_new"))
    assert set(await store.find_objects("response", ["resp_old", "resp_new"])) == {"resp_old", "resp_new"}
    clock.advance(61)
    assert set(await store.find_objects("response", ["resp_old", "resp_new"])) == {"resp_new"}
    assert await store.delete_object("response", "resp_old") is False
    await store.put_object(obj("resp_next", created_at=clock.now))  # a write sweeps what expired
    assert set(await store.find_objects("response", ["resp_old", "resp_new", "resp_next"])) == {"resp_new", "resp_next"}


async def test_objects_survive_reopen(backend: Backend, store: Store) -> None:
    if not backend.durable:
        pytest.skip("memory store is not durable")
    await store.put_object(obj("resp_a", team="ads"))
    await store.delete_object("response", "resp_a")
    await store.put_object(obj("chatcmpl-1", kind="chat.completion"))
    again = backend.make()
    await again.open()
    try:
        assert await again.find_objects("response", ["resp_a"]) == {
            "resp_a": replace(obj("resp_a", team="ads"), deleted=True)
        }
        assert await again.find_objects("chat.completion", ["chatcmpl-1"]) == {
            "chatcmpl-1": obj("chatcmpl-1", kind="chat.completion")
        }
    finally:
        await again.close()

"""Budgets in force, reservations and the reaper against real stores (memory, SQLite file, Redis server)
with an injected clock, through the pipeline's ``Accountant`` handle.

Reserve the worst case, settle the actual; released budget admits more; expired leases are reaped in full
and recorded from their ``LeaseMeta``; calendar windows roll over at UTC midnight; ``on_store_error`` open
and closed; ``BudgetStatus`` renders the JSON the API returns.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from proxy.budgets import BudgetStatus
from proxy.errors import BudgetExceeded, RateLimited, StoreUnavailable
from proxy.reservations import LeaseMeta
from proxy.settings import BudgetSettings, Settings, hash_key, parse
from proxy.settle import Accountant, Reservation
from proxy.store import MemoryStore, RedisStore, SqliteStore
from proxy.store.base import Admitted, CounterValue, Denied, Hold, Lease, LedgerRecord, Store
from tests.redis_server import start_redis

T0 = datetime(2026, 11, 24, 12, 0, 0, tzinfo=UTC).timestamp()
MIDNIGHT = datetime(2026, 11, 25, tzinfo=UTC).timestamp()
MONTH_END = datetime(2026, 12, 1, tzinfo=UTC).timestamp()
KEY = "sk-acct-test"
DIGEST = hash_key(KEY)


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def settings(**over: Any) -> Settings:
    raw: dict[str, Any] = {
        "store": "memory://",
        "lease_seconds": 10,
        "providers": {"p": {"base_url": "http://127.0.0.1:9/v1"}},
        "models": {"gpt-4o-mini": {"provider": "p"}},
        "teams": {
            "t": {"budgets": [{"window": "day", "tokens": 1000}]},
            "usd": {"budgets": [{"window": "month", "usd": "0.01"}]},  # 10_000 micro-USD
            "c": {"rate_limits": {"concurrent": 1}, "budgets": [{"window": "day", "tokens": 10_000}]},
            "r": {"rate_limits": {"rpm": 3, "tpm": 1000}},
            "k": {},
        },
        "keys": [
            {"team": "t", "key": KEY},
            {"team": "k", "key": "sk-other", "budgets": [{"window": "hour", "tokens": 100}]},
        ],
    }
    raw.update(over)
    return parse(raw, env={})


class Flaky:
    """A real store that can be switched off: every call raises StoreUnavailable while ``down``."""

    def __init__(self, inner: Store) -> None:
        self.inner = inner
        self.down = False

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self.inner, name)
        if not callable(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            if self.down:
                raise StoreUnavailable("store switched off by the test")
            return await attr(*args, **kwargs)

        return call


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> AsyncIterator[Store]:
    s: Store
    if request.param == "memory":
        s = MemoryStore(clock=clock)
    elif request.param == "sqlite":
        s = SqliteStore(tmp_path / "quotagate.db", clock=clock)
    else:
        s = RedisStore(request.getfixturevalue("clean_redis"), clock=clock)
    await s.open()
    try:
        yield s
    finally:
        await s.close()


def accountant(store: Any, clock: Clock, reaped: list[LedgerRecord] | None = None, **over: Any) -> Accountant:
    sink = reaped.append if reaped is not None else None
    return Accountant(settings(**over), store, MemoryStore(clock=clock), clock=clock, on_reaped=sink)


def meta(**extra: Any) -> dict[str, Any]:
    return {"request_id": "req-1", "ts": T0, "team": "t", "key_name": "k1", "model": "gpt-4o-mini", **extra}


async def reserve(acct: Accountant, worst: int, team: str = "t", usd: int = 0, **m: Any) -> Reservation:
    res = await acct.reserve(team, DIGEST, "gpt-4o-mini", worst, usd, meta(team=team, **m))
    assert res is not None
    return res


async def status(acct: Accountant, team: str, key_digest: str = "") -> list[dict[str, Any]]:
    return [b.to_json() for b in await acct.budgets.budget_status(team, key_digest)]


async def day_status(acct: Accountant, team: str = "t") -> tuple[int, int]:
    (row,) = [b for b in await acct.budgets.budget_status(team) if b.window == "day"]
    return row.used, row.reserved


# ---- reserve and settle ----------------------------------------------------------------------------------


async def test_reserve_holds_the_worst_case_and_settle_commits_the_actual(store: Store, clock: Clock) -> None:
    acct = accountant(store, clock)
    r1 = await reserve(acct, 400)
    assert await day_status(acct) == (0, 400)
    await reserve(acct, 400)
    assert await day_status(acct) == (0, 800)
    with pytest.raises(BudgetExceeded) as e:
        await reserve(acct, 400)
    err = e.value
    assert (err.status, err.code, err.type) == (429, "insufficient_quota", "insufficient_quota")
    assert err.headers["x-should-retry"] == "false"
    wait = MIDNIGHT - T0
    assert err.headers["retry-after"] == str(math.ceil(wait))
    assert err.headers["retry-after-ms"] == str(int(wait * 1000))
    assert "used 0 tokens, held by requests in flight 800 tokens, this request needs up to 400 tokens" in err.message
    assert "renews in 12h0m0s" in err.message
    assert await day_status(acct) == (0, 800)  # a denial changes nothing

    await acct.settle(r1, 100, 0)
    assert await day_status(acct) == (100, 400)
    await reserve(acct, 400)  # 100 used + 400 held + 400 = 900 <= 1000
    with pytest.raises(BudgetExceeded):
        await reserve(acct, 101)  # 1001 > 1000
    await reserve(acct, 100)  # exactly the limit
    assert await day_status(acct) == (100, 900)
    assert await status(acct, "t") == [
        {
            "scope": "team",
            "window": "day",
            "rolling": None,
            "unit": "tokens",
            "limit": 1000,
            "used": 100,
            "reserved": 900,
            "remaining": 0,
            "limit_usd": None,
            "used_usd": None,
            "reserved_usd": None,
            "remaining_usd": None,
            "resets_at": "2026-11-25T00:00:00.000Z",
            "warn_at": None,
            "downgrade_to": None,
        }
    ]


async def test_released_budget_admits_more(store: Store, clock: Clock) -> None:
    """Worst case 600, actual 50, limit 1000: request i fits while i*50 + 600 <= 1000, i.e. 9 of them."""
    acct = accountant(store, clock)
    worst, actual, limit = 600, 50, 1000
    admitted = 0
    for _ in range(50):
        try:
            res = await reserve(acct, worst)
        except BudgetExceeded:
            break
        await acct.settle(res, actual, 0)
        admitted += 1
    assert admitted == (limit - worst) // actual + 1 == 9
    assert await day_status(acct) == (9 * actual, 0)


async def test_usd_budget_in_micro_usd(store: Store, clock: Clock) -> None:
    acct = accountant(store, clock)
    res = await reserve(acct, 10, team="usd", usd=6_000)
    with pytest.raises(BudgetExceeded) as e:
        await reserve(acct, 10, team="usd", usd=4_001)
    assert "(0.01 USD)" in e.value.message
    assert "held by requests in flight 0.006000 USD, this request needs up to 0.004001 USD" in e.value.message
    await acct.settle(res, 10, 1_234)
    (row,) = await status(acct, "usd")
    assert (row["unit"], row["limit"], row["used"], row["reserved"], row["remaining"]) == (
        "usd",
        10_000,
        1_234,
        0,
        8_766,
    )


async def test_key_budget_is_enforced_and_reported_separately(store: Store, clock: Clock) -> None:
    acct = accountant(store, clock)
    other = hash_key("sk-other")
    res = await acct.reserve("k", other, "gpt-4o-mini", 80, 0, meta(team="k"))
    assert res is not None
    with pytest.raises(BudgetExceeded, match="The key budget of team 'k' for this hour"):
        await acct.reserve("k", other, "gpt-4o-mini", 21, 0, meta(team="k"))
    # another key of the same team has no key budget and the team none: nothing to hold
    assert await acct.reserve("k", DIGEST, "gpt-4o-mini", 10**6, 0, meta(team="k")) is None
    await acct.settle(res, 30, 0)
    assert [(b["scope"], b["window"], b["used"], b["reserved"]) for b in await status(acct, "k", other)] == [
        ("key", "hour", 30, 0)
    ]
    assert await acct.budgets.budget_status("k") == []


# ---- leases: reap ----------------------------------------------------------------------------------------


async def test_expired_lease_is_charged_in_full_and_recorded(store: Store, clock: Clock) -> None:
    reaped: list[LedgerRecord] = []
    acct = accountant(store, clock, reaped)
    res = await reserve(
        acct,
        700,
        usd=321,
        request_id="req-dead",
        counted_input=200,
        worst_micro_usd=321,
        provider="p",
        endpoint="chat",
        stream=True,
    )
    clock.t = T0 + 9.999
    assert await acct.reaper.reap() == 0
    assert await day_status(acct) == (0, 700)
    clock.t = T0 + 10  # lease_seconds
    assert await acct.reaper.reap() == 1
    assert await acct.reaper.reap() == 0  # reaped once
    assert await day_status(acct) == (700, 0)
    (rec,) = reaped
    assert rec.outcome == "lease_expired"
    assert (rec.request_id, rec.team, rec.model, rec.provider, rec.endpoint) == (
        "req-dead",
        "t",
        "gpt-4o-mini",
        "p",
        "chat",
    )
    assert rec.stream is True
    assert rec.cost_micro_usd == 321
    assert rec.counted_input == 200
    assert rec.status == 0
    assert rec.ts == T0
    # the replica comes back and settles late: the lease is gone, so nothing is charged twice
    await acct.settle(res, 50, 10)
    assert await day_status(acct) == (700, 0)


async def test_reap_releases_concurrency_slots_without_committing_them(store: Store, clock: Clock) -> None:
    acct = accountant(store, clock, [])
    await reserve(acct, 100, team="c")
    with pytest.raises(RateLimited, match="Too many concurrent requests"):
        await reserve(acct, 100, team="c")
    clock.t = T0 + 11
    assert await acct.reaper.reap() == 1
    assert (await store.counters(["{c}:t:conc"]))["{c}:t:conc"] == CounterValue(0, 0)
    res = await reserve(acct, 100, team="c")  # the slot is free again
    await acct.settle(res, 40, 0)
    assert await day_status(acct, "c") == (140, 0)
    assert (await store.counters(["{c}:t:conc"]))["{c}:t:conc"] == CounterValue(0, 0)


# ---- calendar windows --------------------------------------------------------------------------------------


async def test_day_budget_rolls_over_at_utc_midnight(store: Store, clock: Clock) -> None:
    clock.t = MIDNIGHT - 1.5
    acct = accountant(store, clock)
    res = await reserve(acct, 1000)
    await acct.settle(res, 1000, 0)
    with pytest.raises(BudgetExceeded) as e:
        await reserve(acct, 1)
    assert e.value.headers["retry-after"] == "2"  # ceil(1.5 s to midnight)
    assert "renews in 1.5s" in e.value.message
    late = await reserve(acct, 0)  # at the limit a zero-sized hold still fits; it settles after midnight

    clock.t = MIDNIGHT + 0.001
    (row,) = await status(acct, "t")
    assert (row["used"], row["reserved"], row["resets_at"]) == (0, 0, "2026-11-26T00:00:00.000Z")
    res = await reserve(acct, 1000)  # the whole new day is available
    await acct.settle(res, 250, 0)
    assert await day_status(acct) == (250, 0)
    # a reservation made yesterday settles into yesterday's window, not today's
    await acct.settle(late, 0, 0)
    assert await day_status(acct) == (250, 0)
    clock.t = MIDNIGHT - 1
    assert await day_status(acct) == (1000, 0)


async def test_minute_rate_limit_rolls_over_and_reports_headers(store: Store, clock: Clock) -> None:
    clock.t = T0 + 50  # 10 s before the minute ends
    acct = accountant(store, clock)
    res = await reserve(acct, 300, team="r")
    assert res.headers == {
        "x-ratelimit-limit-tokens": "1000",
        "x-ratelimit-remaining-tokens": "700",
        "x-ratelimit-reset-tokens": "10s",
        "x-ratelimit-limit-requests": "3",
        "x-ratelimit-remaining-requests": "2",
        "x-ratelimit-reset-requests": "10s",
    }
    await acct.settle(res, 20, 0)
    await acct.settle(await reserve(acct, 10, team="r"), 10, 0)
    third = await reserve(acct, 10, team="r")
    assert third.headers["x-ratelimit-remaining-requests"] == "0"
    assert third.headers["x-ratelimit-remaining-tokens"] == str(1000 - 20 - 10 - 10)
    with pytest.raises(RateLimited) as e:
        await reserve(acct, 10, team="r")
    err = e.value
    assert (err.status, err.code, err.type) == (429, "rate_limit_exceeded", "requests")
    assert "on requests per min (RPM): Limit 3, Used 3, Requested 1" in err.message
    assert err.headers["retry-after"] == "10"
    assert err.headers["x-ratelimit-remaining-requests"] == "0"
    assert err.headers["x-ratelimit-reset-requests"] == "10s"
    assert "x-should-retry" not in err.headers  # waiting helps

    with pytest.raises(RateLimited) as big:
        await reserve(acct, 1001, team="r")
    assert "Request too large" in big.value.message
    assert big.value.headers["x-should-retry"] == "false"  # waiting cannot help

    clock.t = T0 + 60  # next minute
    fresh = await reserve(acct, 10, team="r")
    assert fresh.headers["x-ratelimit-remaining-requests"] == "2"
    assert fresh.headers["x-ratelimit-reset-requests"] == "1m0s"


# ---- overrides -------------------------------------------------------------------------------------------


async def test_overrides_persist_in_the_store(store: Store, clock: Clock) -> None:
    acct = accountant(store, clock)
    new = [BudgetSettings(window="day", tokens=50), BudgetSettings(window="week", usd=Decimal("2.5"), warn_at=0.8)]
    await acct.budgets.set_override("t", new)
    assert acct.budgets.team_budgets("t") == tuple(new)
    with pytest.raises(BudgetExceeded):
        await reserve(acct, 51)
    again = accountant(store, clock)
    assert again.budgets.team_budgets("t") == settings().teams["t"].budgets  # not loaded yet
    await again.budgets.load_overrides()
    assert again.budgets.team_budgets("t") == tuple(new)
    assert again.budgets.team_budgets("r") == ()


# ---- store errors: closed and open -----------------------------------------------------------------------


async def test_closed_mode_raises_store_unavailable(store: Store, clock: Clock) -> None:
    flaky = Flaky(store)
    acct = accountant(flaky, clock, on_store_error="closed")
    flaky.down = True
    with pytest.raises(StoreUnavailable) as e:
        await reserve(acct, 10)
    assert (e.value.status, e.value.code) == (503, "store_unavailable")
    flaky.down = False
    assert await day_status(acct) == (0, 0)


async def test_open_mode_admits_locally_and_reconcile_adds_the_usage(store: Store, clock: Clock) -> None:
    flaky = Flaky(store)
    acct = accountant(flaky, clock, on_store_error="open")
    before = await reserve(acct, 300)  # reserved on the real store
    await acct.settle(await reserve(acct, 100), 100, 0)
    flaky.down = True
    outage = [await reserve(acct, 200) for _ in range(3)]
    assert all(r.local for r in outage)
    with pytest.raises(BudgetExceeded):  # the local store enforces the limit on this replica meanwhile
        await reserve(acct, 801)
    for r in outage:
        await acct.settle(r, 150, 0)
    await acct.settle(before, 40, 0)  # cannot reach the store: queued
    assert acct.reservations.pending == 4
    with pytest.raises(StoreUnavailable):
        await acct.reservations.reconcile()
    assert acct.reservations.pending == 4  # nothing dropped
    flaky.down = False
    await acct.reservations.reconcile()
    assert acct.reservations.pending == 0
    assert await day_status(acct) == (100 + 40 + 3 * 150, 0)


# ---- a real Redis that goes away -------------------------------------------------------------------------


@pytest.fixture
def private_redis() -> Iterator[Any]:
    server = start_redis()
    try:
        yield server
    finally:
        server.close()


async def test_real_redis_outage(private_redis: Any, clock: Clock) -> None:
    store = RedisStore(private_redis.url, clock=clock)
    await store.open()
    try:
        closed = accountant(store, clock, on_store_error="closed")
        opened = accountant(store, clock, on_store_error="open")
        await opened.settle(await reserve(opened, 100), 60, 0)
        assert await day_status(opened) == (60, 0)
        private_redis.stop()

        t = time.monotonic()
        with pytest.raises(StoreUnavailable):
            await reserve(closed, 10)
        assert time.monotonic() - t < 2.5  # refused connections fail fast

        served = [await reserve(opened, 100) for _ in range(4)]
        assert all(r.local for r in served)
        for r in served:
            await opened.settle(r, 25, 0)
        assert opened.reservations.pending == 4

        private_redis.start()  # comes back empty: nothing was persisted
        await opened.reservations.reconcile()
        assert opened.reservations.pending == 0
        assert await day_status(opened) == (4 * 25, 0)  # every request served meanwhile is counted
        await closed.settle(await reserve(closed, 10), 10, 0)
        assert await day_status(closed) == (4 * 25 + 10, 0)
    finally:
        await store.close()


# ---- the store answer the Accountant relies on ------------------------------------------------------------


async def test_store_reserve_answers(store: Store, clock: Clock) -> None:
    lease = Lease("L1", "{x}", (Hold("{x}:a", 10, 4, T0 + 100), Hold("{x}:b", 5, 1, 0.0, commit=False)), T0 + 5)
    first = await store.reserve(lease)
    assert isinstance(first, Admitted)
    assert dict(first.values) == {"{x}:a": CounterValue(0, 4), "{x}:b": CounterValue(0, 1)}
    assert isinstance(await store.reserve(lease), Admitted)  # a retry admits nothing new
    assert await store.counters(["{x}:a"]) == {"{x}:a": CounterValue(0, 4)}
    denied = await store.reserve(Lease("L2", "{x}", (Hold("{x}:a", 10, 7, T0 + 100),), T0 + 5))
    assert denied == Denied(Hold("{x}:a", 10, 7, T0 + 100), 0, 4)


# ---- typed values: LeaseMeta, BudgetStatus ---------------------------------------------------------------


def lease_meta(**over: Any) -> LeaseMeta:
    fields: dict[str, Any] = {
        "request_id": "req-typed",
        "ts": T0,
        "team": "t",
        "key_name": "k1",
        "model": "gpt-4o-mini",
        "provider": "p",
        "endpoint": "responses",
        "stream": False,
        "counted_input": 30,
        "worst_tokens": 500,
        "worst_micro_usd": 77,
        **over,
    }
    return LeaseMeta(**fields)


def test_lease_meta_round_trips_through_json() -> None:
    m = lease_meta(counted_input=None, end_user="u-1", tags="checkout,beta")
    assert LeaseMeta.from_json(m.to_json()) == m
    assert set(m.to_json()) == set(LeaseMeta.__dataclass_fields__)
    assert "end_user" not in lease_meta().to_json()  # who it was for is written only when known
    old = LeaseMeta.from_json({})  # a lease written without meta still reads
    assert (old.request_id, old.counted_input, old.worst_tokens, old.stream) == ("", None, 0, False)


async def test_a_lease_meta_is_stored_as_json_and_read_back_by_the_reaper(store: Store, clock: Clock) -> None:
    reaped: list[LedgerRecord] = []
    acct = accountant(store, clock, reaped)
    meta = lease_meta(end_user="u-1", tags="checkout")
    assert await acct.reserve("t", DIGEST, "gpt-4o-mini", 500, 77, meta) is not None
    assert await acct.reserve("t", DIGEST, "gpt-4o-mini", 100, 0, {}) is not None  # a bare mapping, as before
    clock.t = T0 + 10
    assert await acct.reaper.reap() == 2
    typed, bare = sorted(reaped, key=lambda r: r.request_id != "req-typed")
    assert (typed.request_id, typed.endpoint, typed.key_name, typed.stream) == ("req-typed", "responses", "k1", False)
    assert (typed.counted_input, typed.counted_output, typed.cost_micro_usd) == (30, 470, 77)
    assert (typed.end_user, typed.tags, typed.charged_tokens) == ("u-1", "checkout", 500)  # whom it was for
    assert bare.request_id.startswith("l-") and (bare.counted_input, bare.cost_micro_usd) == (None, 0)  # the lease id


async def test_budget_status_of_a_usd_budget_renders_dollars(store: Store, clock: Clock) -> None:
    acct = accountant(store, clock)
    await acct.settle(await reserve(acct, 10, team="usd", usd=3_000), 10, 1_234)
    (row,) = await acct.budgets.budget_status("usd")
    assert row == BudgetStatus("team", "month", "usd", 10_000, 1_234, 0, 8_766, MONTH_END, None, None)
    assert row.to_json() == {
        "scope": "team",
        "window": "month",
        "rolling": None,
        "unit": "usd",
        "limit": 10_000,
        "used": 1_234,
        "reserved": 0,
        "remaining": 8_766,
        "limit_usd": 0.01,
        "used_usd": 0.001234,
        "reserved_usd": 0.0,
        "remaining_usd": 0.008766,
        "resets_at": "2026-12-01T00:00:00.000Z",
        "warn_at": None,
        "downgrade_to": None,
    }

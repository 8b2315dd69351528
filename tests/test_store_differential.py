"""Differential: the memory, SQLite and Redis stores answer the same random calls identically.

The counter rule exists twice, by necessity: ``proxy/store/rules.py`` (memory, and SQLite with its
write-behind counter cache) and ``proxy/store/lua/lib_counters.lua`` (Redis). Hypothesis drives random
sequences of reserve (repeated keys, limits, slots, windows that end mid-run, retries), settle, extend,
reap, add_usage, ledger writes and clock steps against the three stores on one fake clock, and requires
every answer and every counter after every step, and the ledger, to be the same everywhere.

Times stay on a millisecond grid (whole and half seconds): Redis sees them in ms, the others as floats.
``QUOTAGATE_DIFF_EXAMPLES`` raises the number of examples (default sized for CI, well under a minute).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from proxy.store import CounterValue, Hold, Lease, LedgerRecord, MemoryStore, RedisStore, SqliteStore, Store, rules
from proxy.store.redis import _ms, counter_key

T0 = 1_800_000_000.0
KEYS = {"{a}": ("{a}:x", "{a}:y"), "{b}": ("{b}:x",)}
ALL_KEYS = tuple(k for ks in KEYS.values() for k in ks)
WINDOW_ENDS = (0.0, T0 - 1, T0 + 1, T0 + 4, T0 + 9, T0 + 30)  # 0 = never; T0 - 1 has ended already
EXAMPLES = int(os.environ.get("QUOTAGATE_DIFF_EXAMPLES", "150"))


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


# operations


@dataclass(frozen=True)
class Reserve:
    tag: str
    holds: tuple[Hold, ...]
    expires_in: float
    retry: int | None = None  # reserve an earlier lease again (same id), by index


@dataclass(frozen=True)
class Settle:
    lease: int  # index into the leases reserved so far (modulo); -1 = an unknown id
    charges: dict[str, int]
    wrong_tag: bool = False


@dataclass(frozen=True)
class Extend:
    lease: int
    expires_in: float


@dataclass(frozen=True)
class Reap:
    tag: str
    offset: float  # the lease cutoff, relative to the clock


@dataclass(frozen=True)
class AddUsage:
    tag: str
    charges: dict[str, int]
    ends: dict[str, float]


@dataclass(frozen=True)
class Advance:
    seconds: float


@dataclass(frozen=True)
class WriteLedger:
    records: tuple[LedgerRecord, ...]


Op = Reserve | Settle | Extend | Reap | AddUsage | Advance | WriteLedger

tags = st.sampled_from(sorted(KEYS))
lease_refs = st.integers(-1, 40)
amounts = st.sampled_from([0, 1, 50, 100]) | st.integers(0, 120)


def holds_of(tag: str) -> st.SearchStrategy[tuple[Hold, ...]]:
    hold = st.builds(
        Hold,
        key=st.sampled_from(KEYS[tag]),
        limit=st.one_of(st.just(-1), st.integers(0, 300)),
        amount=amounts,
        expires_at=st.sampled_from(WINDOW_ENDS),
        commit=st.booleans(),
    )
    return st.lists(hold, max_size=4).map(tuple)


reserves = tags.flatmap(
    lambda t: st.builds(
        Reserve,
        tag=st.just(t),
        holds=holds_of(t),
        expires_in=st.sampled_from([1.0, 5.0, 20.0]),
        retry=st.none() | st.integers(0, 40),
    )
)

ledger_records = st.builds(
    LedgerRecord,
    request_id=st.just("set by Run.plan"),
    ts=st.integers(-3000, 3000).map(lambda ms: T0 + ms / 1000),
    team=st.sampled_from(["a", "b"]),
    key_name=st.sampled_from(["k1", "k2"]),
    model=st.sampled_from(["m1", "m2"]),
    provider=st.just("mock"),
    endpoint=st.sampled_from(["chat", "responses"]),
    stream=st.booleans(),
    status=st.sampled_from([0, 200, 429]),
    outcome=st.sampled_from(["ok", "budget_exceeded", "lease_expired"]),
    counted_input=st.none() | st.integers(0, 10**6),
    counted_output=st.none() | st.integers(0, 10**6),
    input_tokens=st.none() | st.integers(0, 10**6),
    cached_input_tokens=st.none() | st.integers(0, 10**6),
    output_tokens=st.none() | st.integers(0, 10**6),
    reasoning_tokens=st.none() | st.integers(0, 10**6),
    cost_micro_usd=st.integers(0, 10**9),
    latency_ms=st.none() | st.floats(0, 1e5, allow_nan=False),
    ttft_ms=st.none() | st.floats(0, 1e5, allow_nan=False),
    trimmed_tokens=st.integers(0, 1000),
    estimated=st.booleans(),
    seed=st.none() | st.integers(-(2**31), 2**31),
    system_fingerprint=st.none() | st.text(max_size=6),
    upstream_model=st.none() | st.just("up-m1"),
    error=st.none() | st.text(max_size=6),
    charged=st.booleans(),
)

operations: st.SearchStrategy[Op] = st.one_of(
    reserves,
    st.builds(
        Settle,
        lease=lease_refs,
        charges=st.dictionaries(st.sampled_from(ALL_KEYS), amounts, max_size=4),
        wrong_tag=st.booleans(),
    ),
    st.builds(Extend, lease=lease_refs, expires_in=st.sampled_from([-1.0, 2.0, 10.0, 60.0])),
    st.builds(Reap, tag=tags, offset=st.sampled_from([-3.0, 0.0, 2.0, 100.0])),
    st.builds(
        AddUsage,
        tag=tags,
        charges=st.dictionaries(st.sampled_from(ALL_KEYS), amounts, max_size=3),
        ends=st.dictionaries(st.sampled_from(ALL_KEYS), st.sampled_from(WINDOW_ENDS), max_size=3),
    ),
    st.builds(Advance, seconds=st.sampled_from([0.5, 1.0, 3.0, 7.0])),
    st.builds(WriteLedger, records=st.lists(ledger_records, min_size=1, max_size=3).map(tuple)),
)


# running one sequence against every store


class Run:
    def __init__(self, clock: FakeClock) -> None:
        self.clock = clock
        self.leases: list[Lease] = []
        self.records = 0

    def lease_ref(self, index: int) -> tuple[str, str]:
        if index < 0 or not self.leases:
            return "unknown", "{a}"
        chosen = self.leases[index % len(self.leases)]
        return chosen.id, chosen.hash_tag

    def plan(self, op: Op) -> Op | Lease:
        """The call's arguments, fixed before any store sees it (lease and request ids, absolute times)."""
        if isinstance(op, WriteLedger):
            # Unique request ids: what a repeated one means differs between the stores for now (SQLite skips
            # a known request_id, Redis a repeated batch, memory neither), and that is not the counter rule.
            self.records += len(op.records)
            ids = range(self.records - len(op.records), self.records)
            return WriteLedger(tuple(replace(r, request_id=f"r{i}") for r, i in zip(op.records, ids, strict=True)))
        if isinstance(op, Advance):
            self.clock.now += op.seconds  # once, for every store, before their counters are compared
        if not isinstance(op, Reserve):
            return op
        if op.retry is not None and self.leases:
            return self.leases[op.retry % len(self.leases)]
        n = len(self.leases)
        lease = Lease(f"L{n}", op.tag, op.holds, self.clock.now + op.expires_in, {"n": n, "x": [1, 2.5, None]})
        self.leases.append(lease)
        return lease

    async def call(self, store: Store, op: Op | Lease) -> Any:
        now = self.clock.now
        if isinstance(op, Lease):
            return await store.reserve(op)
        if isinstance(op, Settle):
            lease_id, tag = self.lease_ref(op.lease)
            return await store.settle(lease_id, "{b}" if op.wrong_tag and tag == "{a}" else tag, op.charges)
        if isinstance(op, Extend):
            lease_id, tag = self.lease_ref(op.lease)
            return await store.extend(lease_id, tag, now + op.expires_in)
        if isinstance(op, Reap):
            reaped = await store.reap(op.tag, now + op.offset)
            return sorted((x.id, x.hash_tag, x.holds, x.expires_at, dict(x.meta)) for x in reaped)
        if isinstance(op, AddUsage):
            return await store.add_usage(op.tag, op.charges, op.ends)
        if isinstance(op, WriteLedger):
            return await store.write_ledger(op.records)
        return None  # Advance: the clock moved in plan()


async def ledger_view(store: Store) -> Any:
    return (
        await store.ledger(0.0),
        await store.ledger(T0, team="a", limit=3),
        await store.usage(0.0),
        await store.usage(T0 + 1, team="b"),
    )


async def run_sequence(ops: Sequence[Op], db: Path, redis_url: str) -> None:
    clock = FakeClock()
    stores: dict[str, Store] = {
        "memory": MemoryStore(clock=clock),
        "sqlite": SqliteStore(db, clock=clock),
        "redis": RedisStore(redis_url, clock=clock),
    }
    for s in stores.values():
        await s.open()
    run = Run(clock)
    try:
        for step, op in enumerate(ops):
            planned = run.plan(op)
            answers = {name: await run.call(s, planned) for name, s in stores.items()}
            counters = {name: await s.counters(ALL_KEYS) for name, s in stores.items()}
            for name in ("sqlite", "redis"):
                where = f"step {step} ({planned}), {name} vs memory"
                assert answers[name] == answers["memory"], where
                assert counters[name] == counters["memory"], f"counters after {where}"
        views = {name: await ledger_view(s) for name, s in stores.items()}
        assert views["sqlite"] == views["memory"]
        assert views["redis"] == views["memory"]
    finally:
        for s in stores.values():
            await s.close()


@pytest.fixture
def flush(redis_url: str) -> Any:
    client = redis.Redis.from_url(redis_url)
    yield client.flushdb
    client.close()


def _settle_case(key: str = "{a}:x") -> list[Op]:
    """The measured disagreement: one lease holding one counter twice, settled at 30."""
    twice = (Hold(key, 1000, 50, T0 + 30), Hold(key, 1000, 50, T0 + 30))
    return [Reserve("{a}", twice, 5.0), Settle(0, {key: 30})]


def _reap_case(key: str = "{a}:x") -> list[Op]:
    """...and two holds of 100 on one counter, reaped: 200 charged."""
    twice = (Hold(key, 1000, 100, T0 + 30), Hold(key, 1000, 100, T0 + 30))
    return [Reserve("{a}", twice, 1.0), Advance(3.0), Reap("{a}", 0.0)]


def _restamp_case(key: str = "{a}:x") -> list[Op]:
    """A zero-amount hold still moves its counter's window end (the last hold's, as any other)."""
    return [
        Reserve("{a}", (Hold(key, -1, 50, T0 + 30),), 20.0),
        Reserve("{a}", (Hold(key, -1, 0, T0 + 1),), 20.0),
        Advance(1.0),
    ]


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(ops=st.lists(operations, max_size=25))
@example(ops=_settle_case())
@example(ops=_reap_case())
@example(ops=_restamp_case())
def test_stores_agree(ops: list[Op], tmp_path: Path, redis_url: str, flush: Any) -> None:
    flush()
    db = tmp_path / f"{uuid.uuid4().hex}.db"
    try:
        asyncio.run(run_sequence(ops, db, redis_url))
    finally:
        for f in tmp_path.glob(f"{db.name}*"):
            f.unlink()


def test_repeated_keys_follow_the_documented_rule(tmp_path: Path, redis_url: str, flush: Any) -> None:
    """Beyond agreeing: settle charges a repeated counter once, reap charges each hold (base.py)."""

    async def main() -> None:
        clock = FakeClock()
        for store in (
            MemoryStore(clock=clock),
            SqliteStore(tmp_path / "rule.db", clock=clock),
            RedisStore(redis_url, clock=clock),
        ):
            flush()
            clock.now = T0
            await store.open()
            try:
                x, y = "{a}:x", "{a}:y"
                settled = Lease("s", "{a}", (Hold(x, 1000, 50, 0.0), Hold(x, 1000, 50, 0.0)), T0 + 5)
                reaped = Lease("r", "{a}", (Hold(y, 1000, 100, 0.0), Hold(y, 1000, 100, 0.0)), T0 + 5)
                await store.reserve(settled)
                await store.reserve(reaped)
                assert await store.counters([x, y]) == {x: CounterValue(0, 100), y: CounterValue(0, 200)}
                assert await store.settle("s", "{a}", {x: 30})
                assert [r.id for r in await store.reap("{a}", T0 + 10)] == ["r"]
                assert await store.counters([x, y]) == {x: CounterValue(30, 0), y: CounterValue(200, 0)}
            finally:
                await store.close()

    asyncio.run(main())


def test_redis_settles_and_reaps_leases_in_the_v1_layout(redis_url: str, flush: Any) -> None:
    """A lease reserved by a replica still on reserve_v1 (same fields; holds without the reap commit when
    older still) is settled and reaped by the v2 scripts."""

    async def main() -> None:
        clock = FakeClock()
        store = RedisStore(redis_url, clock=clock)
        await store.open()
        client = redis.asyncio.Redis.from_url(redis_url)
        try:
            x, y = "{a}:x", "{a}:y"
            cx, cy = counter_key(x), counter_key(y)
            for lease_id, holds in (("old", [[cx, "40", "0", "40"]]), ("older", [[cy, "25", "0"], [cy, "5", "0"]])):
                doc = Lease(lease_id, "{a}", (), T0 + 5)
                await client.hset(
                    f"qg:{{a}}:l:{lease_id}",
                    mapping={"d": rules.lease_json(doc), "h": orjson.dumps(holds), "e": _ms(T0 + 5), "x": repr(T0 + 5)},
                )
                await client.zadd("qg:{a}:leases", {lease_id: _ms(T0 + 5)})
            await client.hset(cx, mapping={"used": 0, "reserved": 40, "exp": 0})
            await client.hset(cy, mapping={"used": 0, "reserved": 30, "exp": 0})
            assert await store.settle("old", "{a}", {x: 12})
            assert [r.id for r in await store.reap("{a}", T0 + 10)] == ["older"]
            assert await store.counters([x, y]) == {x: CounterValue(12, 0), y: CounterValue(30, 0)}
        finally:
            await client.aclose()
            await store.close()

    flush()
    asyncio.run(main())

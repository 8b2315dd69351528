"""Reservations sized from observed output (``reserve: observed``, proxy/observed.py) on real stores.

The histogram and its quantile (never under the sample's quantile); the histogram store methods on memory,
SQLite and Redis (atomic adds, expiry by the store's clock, shared by two clients of one Redis); cold start
(the worst case until the window holds ``observed_min_samples``); the mode per budget, per team, for TPM and
for the org; the overshoot bound on random interleavings of reserve and settle (hypothesis); and the
``x-quotagate-reserved-tokens`` header through the in-process gateway.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.errors import BudgetExceeded
from proxy.observed import EDGES, OVERFLOW, ObservedPolicy, Sizing, bucket, quantile
from proxy.observed_outputs import ObservedOutputs
from proxy.settings import Settings, hash_key, parse
from proxy.settle import Accountant, Reservation
from proxy.store import MemoryStore, RedisStore, SqliteStore
from proxy.store.base import Store
from tests.inprocess import chat_answer, json_reply, running
from tests.inprocess import config as gateway_config

T0 = 1_764_000_000.0  # 2025-11-24T16:00:00Z
KEY = "sk-observed"
DIGEST = hash_key(KEY)
MODEL = "gpt-4o-mini"


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


# ---- the histogram --------------------------------------------------------------------------------------
def test_buckets_grow_by_a_quarter_and_cover_every_count() -> None:
    assert EDGES[:8] == (0, 1, 2, 3, 4, 5, 7, 9)
    assert all(b <= math.ceil(a * 1.25) or b == a + 1 for a, b in itertools.pairwise(EDGES[1:]))
    assert EDGES[-1] >= 2**24
    assert [bucket(n) for n in (0, 1, 6, 7, 8)] == [0, 1, 6, 6, 7]
    assert bucket(EDGES[-1] + 1) == OVERFLOW


@given(st.lists(st.integers(0, 100_000), min_size=1, max_size=300), st.floats(0.01, 0.999))
def test_the_quantile_never_understates_and_overstates_by_under_a_quarter(values: list[int], q: float) -> None:
    counts: dict[int, int] = {}
    for v in values:
        counts[bucket(v)] = counts.get(bucket(v), 0) + 1
    true = sorted(values)[max(1, math.ceil(q * len(values))) - 1]  # the rank-th smallest
    est = quantile(counts, q)
    assert est is not None
    assert true <= est <= max(true * 1.25, true + 1)


def test_an_empty_histogram_or_an_overflow_quantile_has_no_answer() -> None:
    assert quantile({}, 0.99) is None
    assert quantile({OVERFLOW: 5}, 0.5) is None
    assert quantile({bucket(300): 99, OVERFLOW: 1}, 0.99) == EDGES[bucket(300)]
    assert quantile({bucket(300): 98, OVERFLOW: 2}, 0.99) is None


def test_slots_are_a_24th_of_the_window_and_expire_once_out_of_it() -> None:
    day = ObservedPolicy(0.99, 86_400, 100)
    key, expires = day.slot_key("t", MODEL, T0 + 10)
    assert day.slot_s == 3600 and key == f"{{t}}:h1:out:{MODEL}:3600:{int(T0 // 3600)}"
    assert expires == (int(T0 // 3600) + 1) * 3600 + 86_400
    keys = day.window_keys("t", MODEL, T0 + 10)
    assert len(keys) == 24 and keys[-1] == key
    assert ObservedPolicy(0.99, 600, 1).slot_s == 60  # a minute at least


# ---- the store methods ----------------------------------------------------------------------------------
@pytest.fixture
def clock() -> Clock:
    return Clock()


async def _open(kind: str, tmp: Path, clock: Clock, request: pytest.FixtureRequest) -> Store:
    s: Store
    if kind == "memory":
        s = MemoryStore(clock=clock)
    elif kind == "sqlite":
        s = SqliteStore(tmp / "quotagate.db", clock=clock)
    else:
        s = RedisStore(request.getfixturevalue("clean_redis"), clock=clock)
    await s.open()
    return s


@pytest.fixture(params=["memory", "sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path, clock: Clock) -> AsyncIterator[Store]:
    s = await _open(request.param, tmp_path, clock, request)
    try:
        yield s
    finally:
        await s.close()


async def test_histogram_adds_merge_and_expire_by_the_stores_clock(store: Store, clock: Clock) -> None:
    await store.add_histogram("{t}:h", {3: 2, 10: 1}, T0 + 100)
    await store.add_histogram("{t}:h", {3: 5, 11: 4}, T0 + 100)
    await store.add_histogram("{u}:h", {1: 1}, T0 + 50)
    assert await store.histograms(["{t}:h", "{u}:h", "{none}:h"]) == {
        "{t}:h": {3: 7, 10: 1, 11: 4},
        "{u}:h": {1: 1},
        "{none}:h": {},
    }
    clock.t = T0 + 60  # {u} is past its expiry: it reads as empty, and an add starts it afresh
    assert (await store.histograms(["{u}:h"]))["{u}:h"] == {}
    await store.add_histogram("{u}:h", {2: 3}, T0 + 200)
    await store.add_histogram("{t}:h", {3: 1}, T0 + 59)  # already expired: nothing is written
    assert await store.histograms(["{t}:h", "{u}:h"]) == {"{t}:h": {3: 7, 10: 1, 11: 4}, "{u}:h": {2: 3}}


async def test_redis_histograms_are_shared_by_two_clients(clean_redis: str, clock: Clock) -> None:
    cfg = team_settings({"reserve": "observed", "observed_min_samples": 4})
    a, b = RedisStore(clean_redis, clock=clock), RedisStore(clean_redis, clock=clock)
    await a.open()
    await b.open()
    try:
        one, two = ObservedOutputs(cfg, a, clock=clock), ObservedOutputs(cfg, b, clock=clock)
        assert one.output("t", MODEL) is None and two.output("t", MODEL) is None  # asked for: refreshed next
        for n in (100, 120):
            one.record("t", MODEL, n)
        for n in (200, 1000):
            two.record("t", MODEL, n)
        await one.flush()
        await two.flush()
        await one.refresh()
        await two.refresh()
        # each replica sees all four samples: p99 of {100, 120, 200, 1000} is 1000's bucket
        assert one.samples("t", MODEL) == two.samples("t", MODEL) == 4
        assert one.output("t", MODEL) == two.output("t", MODEL) == EDGES[bucket(1000)]
    finally:
        await a.close()
        await b.close()


# ---- sizing the holds -----------------------------------------------------------------------------------
def team_settings(team: dict[str, Any], **top: Any) -> Settings:
    raw: dict[str, Any] = {
        "store": "memory://",
        "lease_seconds": 60,
        "providers": {"p": {"base_url": "http://127.0.0.1:9/v1"}},
        "models": {MODEL: {"provider": "p"}},
        "teams": {"t": {"budgets": [{"window": "day", "tokens": 1_000_000}], **team}},
        "keys": [{"team": "t", "key": KEY}],
        **top,
    }
    return parse(raw, env={})


def usd(input_tokens: int) -> Any:
    return lambda out: input_tokens + 4 * out  # 1 micro-USD an input token, 4 an output token


async def reserve(acct: Accountant, input_tokens: int, cap: int) -> Reservation:
    res = await acct.reserve(
        "t", DIGEST, MODEL, input_tokens + cap, usd(input_tokens)(cap), {"team": "t"},
        sizing=Sizing(input_tokens, cap, usd(input_tokens)),
    )  # fmt: skip
    assert res is not None
    return res


async def learn(acct: Accountant, outputs: list[int]) -> None:
    """What served requests teach, in the store, and this process' quantile refreshed."""
    observed = acct.reservations.observed
    observed.output("t", MODEL)
    for n in outputs:
        observed.record("t", MODEL, n)
    await observed.flush()
    await observed.refresh()


async def held(store: Store, res: Reservation) -> dict[tuple[str, str, str | None], int]:
    """What each limit of the reservation holds, by (scope, unit, window)."""
    values = await store.counters([lim.key for lim in res.limits])
    return {(lim.scope, lim.unit, lim.window): values[lim.key].reserved for lim in res.limits}


async def test_cold_start_holds_the_worst_case_until_enough_samples(store: Store, clock: Clock) -> None:
    acct = Accountant(
        team_settings({"reserve": "observed", "observed_min_samples": 5}), store, MemoryStore(), clock=clock
    )
    first = await reserve(acct, 800, 4096)  # nothing observed yet
    assert first.reserved_tokens == 4896
    await learn(acct, [250] * 4)
    assert (await reserve(acct, 800, 4096)).reserved_tokens == 4896  # 4 samples < 5
    await learn(acct, [250])
    res = await reserve(acct, 800, 4096)
    assert res.reserved_tokens == 800 + EDGES[bucket(250)]
    assert (await reserve(acct, 800, 100)).reserved_tokens == 900  # capped by the request's own cap
    await acct.settle(res, 800 + 300, 0, output_tokens=300)  # settle charges the actual, as ever
    assert (await store.counters([res.limits[0].key]))[res.limits[0].key].used == 1100


async def test_a_budgets_own_mode_wins_over_its_teams(store: Store, clock: Clock) -> None:
    team = {
        "reserve": "worst_case",
        "observed_min_samples": 1,
        "budgets": [
            {"window": "day", "tokens": 1_000_000, "reserve": "observed"},
            {"window": "month", "usd": 100},
        ],
        "rate_limits": {"tpm": 1_000_000, "rpm": 1000},
    }
    org = {"budgets": [{"window": "month", "tokens": 10_000_000}]}
    acct = Accountant(team_settings(team, org=org), store, MemoryStore(), clock=clock)
    await learn(acct, [100] * 10)
    q = EDGES[bucket(100)]
    res = await reserve(acct, 500, 2000)
    assert await held(store, res) == {
        ("org", "tokens", "month"): 2500,
        ("team", "tokens", "day"): 500 + q,  # its own `reserve: observed`
        ("team", "usd", "month"): 500 + 4 * 2000,  # the team's worst case
        ("team", "tokens", "minute"): 2500,  # TPM follows the team
        ("team", "requests", "minute"): 1,
    }
    assert res.reserved_tokens == 2500  # the largest hold: the worst case, held by the others


async def test_a_teams_mode_sizes_its_budgets_and_tpm_not_the_orgs(store: Store, clock: Clock) -> None:
    team = {
        "reserve": "observed",
        "observed_min_samples": 1,
        "budgets": [{"window": "day", "tokens": 1_000_000}, {"window": "month", "usd": 100, "reserve": "worst_case"}],
        "rate_limits": {"tpm": 1_000_000},
    }
    org = {
        "budgets": [{"window": "month", "tokens": 10_000_000}, {"window": "day", "usd": 1000, "reserve": "observed"}]
    }
    acct = Accountant(team_settings(team, org=org), store, MemoryStore(), clock=clock)
    await learn(acct, [100] * 10)
    q = EDGES[bucket(100)]
    res = await reserve(acct, 500, 2000)
    assert await held(store, res) == {
        ("org", "tokens", "month"): 2500,  # the org's own setting only (none: worst case)
        ("org", "usd", "day"): 500 + 4 * q,
        ("team", "tokens", "day"): 500 + q,
        ("team", "usd", "month"): 500 + 4 * 2000,
        ("team", "tokens", "minute"): 500 + q,  # TPM follows the team
    }


def test_reserve_settings_are_validated_and_defaults_stay_out_of_dumps() -> None:
    s = team_settings({"reserve": "observed", "reserve_quantile": 0.95, "observed_window": "6h"})
    t = s.teams["t"]
    assert (t.reserve, t.reserve_quantile, t.observed_window, t.observed_min_samples) == ("observed", 0.95, "6h", 100)
    assert t.budgets[0].reserve is None
    assert t.budgets[0].model_dump(exclude_defaults=True) == {"window": "day", "tokens": 1_000_000}
    for bad in ({"reserve": "p99"}, {"reserve_quantile": 1.0}, {"reserve_quantile": 0}, {"observed_window": "1y"}):
        with pytest.raises(Exception, match="teams"):
            team_settings(bad)
    with pytest.raises(Exception, match="reserve"):
        team_settings({"budgets": [{"window": "day", "tokens": 5, "reserve": "sometimes"}]})


# ---- the overshoot bound --------------------------------------------------------------------------------
@dataclass
class Flight:
    res: Reservation
    input: int
    output: int  # actual, <= cap
    slack: int  # cap - reserved output: what it may use past its hold


Op = tuple[str, int, int, int]  # ("start", input, cap, actual output) | ("end", index, 0, 0)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("start"), st.integers(0, 300), st.integers(1, 4000), st.floats(0, 1)).map(
            lambda t: (t[0], t[1], t[2], int(t[3] * t[2]))
        ),
        st.tuples(st.just("end"), st.integers(0, 1000), st.just(0), st.just(0)),
    ),
    min_size=1,
    max_size=80,
)


async def run_bound(store: Store, clock: Clock, mode: str, limit: int, sample: int, interleaving: list[Op]) -> None:
    """Reserve and settle in the given order; after every step, committed usage is within the bound."""
    team = {
        "reserve": mode,
        "observed_min_samples": 1,
        "budgets": [{"window": "day", "tokens": limit}, {"window": "day", "usd": limit * 4 / 1_000_000}],
    }
    acct = Accountant(team_settings(team), store, MemoryStore(clock=clock), clock=clock)
    await learn(acct, [sample])
    q = acct.reservations.observed.output("t", MODEL) if mode == "observed" else None
    assert (q is not None) == (mode == "observed")
    flying: list[Flight] = []
    keys: tuple[str, str] | None = None  # the day's token and USD counters
    bound = 0  # tokens: what the requests in flight at the last admission may use past their holds
    for op, a, cap, out in interleaving:
        if op == "start":
            try:
                res = await reserve(acct, a, cap)
            except BudgetExceeded:
                continue  # refused: nothing changes
            keys = (res.limits[0].key, res.limits[1].key)
            flying.append(Flight(res, a, out, cap - min(cap, q) if q is not None else 0))
            bound = sum(f.slack for f in flying)
        elif flying:
            f = flying.pop(a % len(flying))
            await acct.settle(f.res, f.input + f.output, usd(f.input)(f.output), output_tokens=f.output)
        if keys is None:
            continue
        values = await store.counters(keys)
        used_tokens, used_usd = values[keys[0]].used, values[keys[1]].used
        assert used_tokens <= limit + bound, (used_tokens, limit, bound)
        assert used_usd <= limit * 4 + 4 * bound, (used_usd, limit * 4, bound)  # 4 micro-USD an output token
        if mode == "worst_case":
            assert used_tokens <= limit and used_usd <= limit * 4
    for f in flying:  # the end: everything settles, and the bound still holds
        await acct.settle(f.res, f.input + f.output, usd(f.input)(f.output))
    if keys is not None:
        assert (await store.counters(keys))[keys[0]].used <= limit + bound


async def test_observed_holds_overshoot_by_at_most_cap_less_quantile_per_request_in_flight(clock: Clock) -> None:
    # 1000 tokens; q = 118 on a cap of 1000: four requests of 100 input fit (4 x 218 <= 1000), a fifth does
    # not; then all four use their whole cap. Overshoot: 4 x 1100 - 1000 = 3400 <= 4 x (1000 - 118) = 3528.
    store = MemoryStore(clock=clock)
    team = {"reserve": "observed", "observed_min_samples": 1, "budgets": [{"window": "day", "tokens": 1000}]}
    acct = Accountant(team_settings(team), store, MemoryStore(clock=clock), clock=clock)
    await learn(acct, [100])
    flying = [await reserve(acct, 100, 1000) for _ in range(4)]
    with pytest.raises(BudgetExceeded):
        await reserve(acct, 100, 1000)
    for res in flying:
        await acct.settle(res, 1100, 0)
    key = flying[0].limits[0].key
    used = (await store.counters([key]))[key].used
    assert used - 1000 == 3400 <= 4 * (1000 - EDGES[bucket(100)])


@settings(max_examples=150, deadline=None)
@given(st.sampled_from(["observed", "worst_case"]), st.integers(500, 20_000), st.integers(0, 3000), ops)
def test_committed_usage_stays_within_the_bound_on_memory(
    mode: str, limit: int, sample: int, interleaving: list[Op]
) -> None:
    clock = Clock()
    asyncio.run(run_bound(MemoryStore(clock=clock), clock, mode, limit, sample, interleaving))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.integers(500, 20_000), st.integers(0, 3000), ops)
def test_committed_usage_stays_within_the_bound_on_sqlite(
    tmp_path: Path, limit: int, sample: int, interleaving: list[Op]
) -> None:
    async def main() -> None:
        clock = Clock()
        store = SqliteStore(tmp_path / f"{uuid.uuid4().hex}.db", clock=clock)
        await store.open()
        try:
            await run_bound(store, clock, "observed", limit, sample, interleaving)
        finally:
            await store.close()

    asyncio.run(main())


# ---- the header, through the gateway --------------------------------------------------------------------
async def test_the_response_says_what_was_reserved(tmp_path: Path) -> None:
    teams = gateway_config("http://unused", "memory://", "http://unused")["teams"]
    teams["search"] = {**teams["search"], "reserve": "observed", "observed_min_samples": 3}
    async with running(tmp_path, teams=teams) as gw:
        gw.provider.on("/v1/chat/completions", json_reply(chat_answer("ok", prompt=20, completion=100)))
        body = {"model": MODEL, "messages": [{"role": "user", "content": "Summarise the report."}]}
        first = await gw.post("/v1/chat/completions", body)
        assert first.status_code == 200, first.text
        counted = int(first.headers["x-quotagate-reserved-tokens"]) - 2000  # the team's max_output_tokens
        assert counted > 0
        for _ in range(2):
            assert (await gw.post("/v1/chat/completions", body)).status_code == 200
        await gw.settled()
        observed = gw.gw.reservations.observed
        await observed.flush()
        await observed.refresh()  # the accounting loop does both; the test does not wait for it
        after = await gw.post("/v1/chat/completions", body)
        assert after.headers["x-quotagate-reserved-tokens"] == str(counted + EDGES[bucket(100)])
        small = await gw.post("/v1/chat/completions", {**body, "max_tokens": 50})  # capped by the request
        assert small.headers["x-quotagate-reserved-tokens"] == str(counted + 50)

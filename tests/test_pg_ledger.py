"""The fleet ledger in PostgreSQL (``ledger: postgresql://...``), on a real server (``tests/pg_server.py``):
every field round trips, a batch written twice lands once, an older table is migrated in place, and the
ledger's no-loss rules hold with the database stopped mid-load (0 lost, 0 duplicated), through the queue
and through the spill files. End to end: gateways on a Redis store whose ledger goes to PostgreSQL, the
Redis stream copied and trimmed at startup, the stream capped by ``ledger_stream_max_len`` otherwise."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis
from prometheus_client import CollectorRegistry

from proxy.analysis.db import LedgerDB, day_bucket
from proxy.errors import StoreUnavailable
from proxy.gateway import build_gateway
from proxy.ledger import Ledger, error_cause
from proxy.ledger_sink import StoreLedger, copy_stream, ledger_sink
from proxy.precount import Precount
from proxy.settings import ConfigError, parse
from proxy.store import open_store
from proxy.store.base import LedgerRecord
from proxy.store.pg_ledger import PostgresLedger, placeholders
from proxy.store.pg_schema import COLUMNS, SCHEMA_VERSION, TYPES, SchemaTooNew
from proxy.store.redis import LEDGER_KEY, RedisStore
from tests.gateway import ROOT, base_config, free_port, start_gateway, start_mock, write_config
from tests.pg_server import PostgresProcess, pg_server, postgres_url, wait_ready
from tests.test_ledger_faults import errors, make_metrics, rec, spill_files, until

__all__ = ["pg_server", "postgres_url"]  # the fixtures, imported for pytest

FLUSH = 0.05
N = 1500  # three batches and then some


def sql(url: str, statement: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True) as con:
        cur = con.execute(statement, params)
        return cur.fetchall() if cur.description else []


@pytest.fixture
def pg_url(postgres_url: str) -> str:
    """The session database, its ledger tables dropped."""
    sql(postgres_url, "DROP TABLE IF EXISTS ledger, ledger_schema_version")
    return postgres_url


@pytest.fixture
def own_pg(pg_server: PostgresProcess) -> Iterator[PostgresProcess]:
    """The cluster this process owns (to stop and restart), its ledger tables dropped, running afterwards."""
    sql(pg_server.url(), "DROP TABLE IF EXISTS ledger, ledger_schema_version")
    yield pg_server
    if pg_server.pid is None:
        pg_server.start()


@pytest.fixture
async def pg(pg_url: str) -> AsyncIterator[PostgresLedger]:
    ledger = PostgresLedger(pg_url)
    await ledger.open()
    yield ledger
    await ledger.close()


def counts(url: str) -> collections.Counter[str]:
    try:
        rows = sql(url, "SELECT request_id, COUNT(*) FROM ledger GROUP BY 1")
    except psycopg.errors.UndefinedTable:  # not yet created by the gateway
        rows = []
    return collections.Counter({r[0]: r[1] for r in rows})


def lost_and_duplicated(url: str, ids: list[str]) -> tuple[int, int]:
    rows = counts(url)
    assert set(rows) <= set(ids), "rows for requests that were never made"
    return sum(1 for i in ids if rows[i] == 0), sum(n - 1 for n in rows.values())


def full_record(i: int) -> LedgerRecord:
    """Every field set, none to its default."""
    return LedgerRecord(
        request_id=f"full-{i}", ts=1_790_000_000.125 + i, team="search", key_name="k1", model="gpt-4o",
        provider="openai", endpoint="responses", stream=True, status=201, outcome="upstream_error",
        counted_input=101, counted_output=22, input_tokens=103, cached_input_tokens=7, output_tokens=23,
        reasoning_tokens=5, cost_micro_usd=9_007_199_254_740_993, latency_ms=12.5, ttft_ms=3.25, trimmed_tokens=9,
        estimated=True, seed=-42, system_fingerprint="fp_x", upstream_model="gpt-4o-2024", error="boom 100%?",
        charged=False, version=2, cache_write_5m_tokens=11, cache_write_1h_tokens=12, usage_raw='{"a": 1}',
        service_tier="flex", input_system=1, input_tools=2, input_history=3, input_new=4, output_cap=512,
        price_version="prices.yaml@2026-11-01", end_user="u'1", tags="a,b", charged_tokens=77,
    )  # fmt: skip


# the table


async def test_every_field_round_trips(pg: PostgresLedger, pg_url: str) -> None:
    written = [full_record(i) for i in range(3)]
    await pg.write_ledger(written)
    assert await pg.ledger(0) == written[::-1]  # newest first
    assert await pg.ledger(0, "search", limit=1) == [written[-1]]
    assert await pg.ledger(0, "nobody") == []
    types = dict(
        sql(pg_url, "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = 'ledger'")
    )
    assert set(types) == set(COLUMNS)
    assert (types["ts"], types["latency_ms"], types["cost_micro_usd"], types["input_new"]) == (
        "double precision", "double precision", "bigint", "bigint"
    )  # fmt: skip
    assert (types["stream"], types["charged"], types["request_id"]) == ("boolean", "boolean", "text")
    indexes = {r[0] for r in sql(pg_url, "SELECT indexname FROM pg_indexes WHERE tablename = 'ledger'")}
    assert {"ledger_request_id", "ledger_ts", "ledger_team_ts"} <= indexes
    assert sql(pg_url, "SELECT version FROM ledger_schema_version") == [(SCHEMA_VERSION,)]


async def test_usage_adds_only_what_was_charged(pg: PostgresLedger) -> None:
    charged = [rec(i) for i in range(4)]
    await pg.write_ledger([*charged, full_record(0)])  # full_record: not charged, but counted as a request
    rows = {(u.team, u.model): u for u in await pg.usage(0)}
    mini = rows[("search", "gpt-4o-mini")]
    assert (mini.requests, mini.input_tokens, mini.output_tokens, mini.cost_micro_usd) == (4, 40, 20, 0 + 1 + 2 + 3)
    big = rows[("search", "gpt-4o")]
    assert (big.requests, big.input_tokens, big.cost_micro_usd) == (1, 0, 9_007_199_254_740_993)
    assert all(isinstance(v, int) for v in (mini.requests, mini.input_tokens, big.cost_micro_usd))


async def test_a_batch_written_twice_lands_once(pg: PostgresLedger, pg_url: str) -> None:
    batch = [rec(i) for i in range(600)]
    await pg.write_ledger(batch)
    await pg.write_ledger(batch)  # a retry after a lost reply, or a spill file replayed again
    await pg.write_ledger([*batch[590:], rec(600), rec(600)])  # overlapping, and a duplicate within the batch
    rows = counts(pg_url)
    assert len(rows) == 601 and set(rows.values()) == {1}


async def test_an_older_table_is_migrated_in_place(pg_url: str) -> None:
    old = COLUMNS[: COLUMNS.index("cache_write_5m_tokens")]  # the table before the analysis columns
    sql(pg_url, f"CREATE TABLE ledger ({', '.join(f'{c} {TYPES[c]}' for c in old)})")
    sql(pg_url, "CREATE TABLE ledger_schema_version (version INTEGER NOT NULL)")
    sql(pg_url, "INSERT INTO ledger_schema_version VALUES (0)")
    r = rec(1)
    sql(pg_url, f"INSERT INTO ledger ({', '.join(old)}) VALUES ({', '.join(['%s'] * len(old))})",
        tuple(getattr(r, c) for c in old))  # fmt: skip
    sql(pg_url, "UPDATE ledger SET trimmed_tokens = NULL, charged = NULL")  # NULL: the field's default
    pg = PostgresLedger(pg_url)
    await pg.open()
    try:
        [back] = await pg.ledger(0)
        assert back == r
        await pg.write_ledger([full_record(0), r])
        assert {x.request_id for x in await pg.ledger(0)} == {r.request_id, "full-0"}
        assert (await pg.ledger(0, limit=1))[0] == full_record(0)
    finally:
        await pg.close()
    assert sql(pg_url, "SELECT version FROM ledger_schema_version") == [(SCHEMA_VERSION,)]
    have = [x[0] for x in sql(pg_url, "SELECT column_name FROM information_schema.columns WHERE table_name = 'ledger'")]
    assert set(have) == set(COLUMNS)


async def test_a_newer_table_is_refused_and_the_records_kept(pg_url: str, tmp_path: Path) -> None:
    sql(pg_url, "CREATE TABLE ledger_schema_version (version INTEGER NOT NULL)")
    sql(pg_url, "INSERT INTO ledger_schema_version VALUES (%s)", (SCHEMA_VERSION + 1,))
    pg = PostgresLedger(pg_url)
    with pytest.raises(
        SchemaTooNew, match=rf"ledger: the PostgreSQL ledger at .* schema version {SCHEMA_VERSION + 1}, newer"
    ):
        await pg.open()
    metrics = make_metrics()
    ledger = Ledger(pg, flush_seconds=FLUSH, spill_dir=tmp_path, metrics=metrics)
    ledger.start()
    ledger.append(rec(1))
    await until(lambda: errors(metrics, "other") >= 1)
    await ledger.close(close_seconds=0.1)
    await pg.close()
    assert len(spill_files(tmp_path)) == 1  # kept for a quotagate that knows the schema


# the read interface of the analysis commands


async def test_a_reader_without_create_rights_opens_an_up_to_date_ledger(own_pg: PostgresProcess) -> None:
    url = own_pg.url()
    writer = PostgresLedger(url)
    await writer.open()
    await writer.write_ledger([rec(1)])
    await writer.close()
    with contextlib.suppress(psycopg.errors.DuplicateObject):
        sql(url, "CREATE ROLE qg_reader LOGIN")
    sql(url, "GRANT SELECT ON ledger, ledger_schema_version TO qg_reader")
    reader = PostgresLedger(url.replace("postgres@", "qg_reader@"))
    await reader.open()
    try:
        assert await reader.fetch("SELECT request_id FROM ledger") == [("r1",)]
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            await reader.write_ledger([rec(2)])
    finally:
        await reader.close()


async def test_fetch_translates_placeholders(pg: PostgresLedger) -> None:
    db: LedgerDB = pg
    assert db.dialect == "postgresql"
    await pg.write_ledger([rec(i) for i in range(5)])
    rows = await db.fetch(
        "SELECT COUNT(*), SUM(cost_micro_usd), AVG(cost_micro_usd), 'is it? 100%' FROM ledger "
        "WHERE team = ? AND model LIKE 'gpt-4o%' AND cost_micro_usd >= ?",
        ["search", 1],
    )
    assert rows == [(4, 10, 2.5, "is it? 100%")]  # SUM and AVG: int and float, as SQLite answers
    assert isinstance(rows[0][1], int)
    assert placeholders("""SELECT '?', "a?", ? % 2, '%'""") == """SELECT '?', "a?", %s %% 2, '%%'"""


async def test_day_bucket_in_both_dialects(pg: PostgresLedger) -> None:
    cases = [0.0, 86_399.9, 86_400.0, 1_790_000_000.5]
    await pg.write_ledger([LedgerRecord(**{**_fields(rec(i)), "ts": ts}) for i, ts in enumerate(cases)])
    got = await pg.fetch(f"SELECT {day_bucket('postgresql', 'ts')} FROM ledger ORDER BY ts")
    lite = sqlite3.connect(":memory:")
    lite.execute("CREATE TABLE ledger (ts REAL)")
    lite.executemany("INSERT INTO ledger VALUES (?)", [(t,) for t in cases])
    mine = lite.execute(f"SELECT {day_bucket('sqlite', 'ts')} FROM ledger ORDER BY ts").fetchall()
    lite.close()
    assert [r[0] for r in got] == [r[0] for r in mine] == [int(t // 86_400) for t in cases]


def _fields(r: LedgerRecord) -> dict[str, Any]:
    return {c: getattr(r, c) for c in COLUMNS}


async def test_precount_relearns_from_postgresql(pg: PostgresLedger) -> None:
    settings = parse(base_config("http://127.0.0.1:9", "memory://"), env={})
    now = time.time()
    rows = [LedgerRecord(**{**_fields(rec(i)), "ts": now - i, "input_tokens": 12}) for i in range(30)]
    await pg.write_ledger(rows)
    assert await Precount(settings).load(pg, frozenset({"chat"})) == 30
    assert await Precount(settings).load(pg, frozenset({"embeddings"})) == 0


# database down: the ledger's queue, retry and spill, unchanged


def test_error_causes_of_postgresql() -> None:
    assert error_cause(psycopg.errors.DiskFull("could not extend file")) == "disk_full"
    assert error_cause(psycopg.errors.OutOfMemory("out of memory")) == "oom"
    assert error_cause(psycopg.errors.LockNotAvailable("could not obtain lock")) == "busy"
    assert error_cause(psycopg.errors.UniqueViolation("duplicate key")) == "constraint"
    assert error_cause(psycopg.errors.AdminShutdown("terminating connection")) == "store_unavailable"
    try:
        raise StoreUnavailable("ledger: PostgreSQL ledger at h:1/db unavailable: x") from psycopg.OperationalError()
    except StoreUnavailable as e:
        assert error_cause(e) == "store_unavailable"


async def _load_through_an_outage(server: PostgresProcess, ledger: Ledger, mode: str) -> None:
    """N records appended over ~0.6 s; the server stopped a third of the way in, started 1 s later."""

    async def load() -> None:
        for i in range(0, N, 50):
            for j in range(i, i + 50):
                ledger.append(rec(j))
            await asyncio.sleep(0.02)

    loading = asyncio.create_task(load())
    await asyncio.sleep(0.2)
    await asyncio.to_thread(server.stop, mode)
    await loading
    await asyncio.sleep(1.0)  # many flush intervals with the database down
    await asyncio.to_thread(server.start)


@pytest.mark.parametrize("mode", ["immediate", "fast"])
async def test_no_record_lost_while_the_database_is_stopped(own_pg: PostgresProcess, tmp_path: Path, mode: str) -> None:
    url = own_pg.url()
    pg = PostgresLedger(url, timeout=0.3)
    await pg.open()
    metrics = make_metrics()
    ledger = Ledger(pg, flush_seconds=FLUSH, spill_dir=tmp_path, metrics=metrics)
    ledger.start()
    try:
        await _load_through_an_outage(own_pg, ledger, mode)
        assert errors(metrics, "store_unavailable") >= 2
        assert errors(metrics, "other") == 0
        await until(lambda: ledger.pending == 0)
    finally:
        await ledger.close(close_seconds=1.0)
        await pg.close()
    assert lost_and_duplicated(url, [f"r{i}" for i in range(N)]) == (0, 0)
    print(f"pg stop -m {mode}: {errors(metrics, 'store_unavailable'):.0f} failed writes; {N} records, 0 lost, 0 dup")


async def test_spill_and_replay_while_the_database_is_stopped(own_pg: PostgresProcess, tmp_path: Path) -> None:
    url = own_pg.url()
    pg = PostgresLedger(url, timeout=0.3)
    await pg.open()
    ledger = Ledger(pg, flush_seconds=FLUSH, queue_max=40, spill_dir=tmp_path)
    ledger.start()
    spilled = False
    try:
        loading = asyncio.create_task(_load_through_an_outage(own_pg, ledger, "immediate"))
        while not loading.done():
            spilled = spilled or bool(spill_files(tmp_path))
            await asyncio.sleep(0.05)
        await loading
        await until(lambda: ledger.pending == 0 and not spill_files(tmp_path))
    finally:
        await ledger.close(close_seconds=1.0)
    assert spilled
    assert lost_and_duplicated(url, [f"r{i}" for i in range(N)]) == (0, 0)

    # down at shutdown: spilled; the next process replays the file once the database is back
    own_pg.stop("immediate")
    ledger = Ledger(pg, flush_seconds=FLUSH, queue_max=40, spill_dir=tmp_path)
    ledger.start()
    for i in range(N, N + 300):
        ledger.append(rec(i))
    await ledger.close(close_seconds=0.3)
    assert spill_files(tmp_path)
    own_pg.start()
    nxt = Ledger(pg, flush_seconds=FLUSH, spill_dir=tmp_path)
    nxt.start()
    try:
        await until(lambda: nxt.pending == 0 and not spill_files(tmp_path))
    finally:
        await nxt.close()
        await pg.close()
    assert lost_and_duplicated(url, [f"r{i}" for i in range(N + 300)]) == (0, 0)


# the Redis ledger stream


async def test_the_stream_is_copied_once_and_trimmed(pg: PostgresLedger, pg_url: str, clean_redis: str) -> None:
    store = RedisStore(clean_redis)
    await store.open()
    try:
        for i in range(0, 2300, 500):
            await store.write_ledger([rec(j) for j in range(i, min(i + 500, 2300))])
        first = await store.ledger_page(1000)
        await pg.write_ledger([r for _, r in first])  # a replica that died between the copy and the trim
        copied = await asyncio.gather(copy_stream(store, pg, page=700), copy_stream(store, pg, page=700))
        assert sum(copied) >= 2300  # two replicas starting together: each page lands once
        assert redis.Redis.from_url(clean_redis).xlen(LEDGER_KEY) == 0
        assert lost_and_duplicated(pg_url, [f"r{i}" for i in range(2300)]) == (0, 0)
        assert await copy_stream(store, pg) == 0
        assert await copy_stream(store, StoreLedger(store)) == 0  # no SQL ledger: nothing to copy
        await store.write_ledger([rec(5000)])  # trimmed empty: the stream's ids still go on increasing
        assert [r.request_id for _, r in await store.ledger_page()] == ["r5000"]
    finally:
        await store.close()


async def test_the_stream_copy_waits_for_the_database(own_pg: PostgresProcess, clean_redis: str) -> None:
    url = own_pg.url()
    store = RedisStore(clean_redis)
    await store.open()
    await store.write_ledger([rec(i) for i in range(300)])
    own_pg.stop("immediate")
    pg = PostgresLedger(url, timeout=0.3)
    await pg.open()
    assert pg.unavailable is not None and "ledger: PostgreSQL ledger at" in str(pg.unavailable)
    try:
        copying = asyncio.create_task(copy_stream(store, pg))
        await asyncio.sleep(0.5)
        assert not copying.done()
        assert redis.Redis.from_url(clean_redis).xlen(LEDGER_KEY) == 300  # nothing trimmed before it is copied
        await asyncio.to_thread(own_pg.start)
        assert await asyncio.wait_for(copying, 10) == 300
    finally:
        await pg.close()
        await store.close()
    assert lost_and_duplicated(url, [f"r{i}" for i in range(300)]) == (0, 0)


async def test_ledger_stream_max_len_caps_the_stream(clean_redis: str) -> None:
    client = redis.Redis.from_url(clean_redis)
    for cap, expect in ((None, (3000, 3000)), (200, (200, 300))):  # MAXLEN ~: a node (100 entries) at a time
        client.delete(LEDGER_KEY)
        store = open_store(clean_redis, ledger_stream_max_len=cap)
        await store.open()
        for i in range(0, 3000, 500):
            await store.write_ledger([rec(j, f"c{cap}-") for j in range(i, i + 500)])
        await store.close()
        length = client.xlen(LEDGER_KEY)
        assert expect[0] <= length <= expect[1], (cap, length)
        newest: Any = client.xrevrange(LEDGER_KEY, count=1)
        assert json.loads(newest[0][1][b"r"])["request_id"] == f"c{cap}-2999"  # the oldest go first
    client.close()


def test_the_sink_follows_the_settings(clean_redis: str) -> None:
    store = open_store(clean_redis)
    plain = parse(base_config("http://127.0.0.1:9", clean_redis), env={})
    assert isinstance(ledger_sink(plain, store), StoreLedger)
    fleet = parse(base_config("http://127.0.0.1:9", clean_redis, ledger="postgresql://u@h/db"), env={})
    assert isinstance(ledger_sink(fleet, store), PostgresLedger)
    capped = parse(base_config("http://127.0.0.1:9", clean_redis, ledger_stream_max_len=5), env={})
    assert capped.ledger_stream_max_len == 5
    gw = build_gateway(capped, registry=CollectorRegistry())
    assert isinstance(gw.store, RedisStore) and gw.store._ledger_max_len == 5
    assert isinstance(gw.sink, StoreLedger)
    with pytest.raises(ConfigError, match="ledger_stream_max_len"):
        parse(base_config("http://127.0.0.1:9", clean_redis, ledger_stream_max_len=0), env={})


# end to end


def test_the_cli_names_ledger_when_the_database_does_not_answer(tmp_path: Path) -> None:
    port = free_port()
    cfg = base_config("http://127.0.0.1:9", f"sqlite:///{tmp_path}/q.db", ledger=f"postgresql://u@127.0.0.1:{port}/x")
    path = write_config(tmp_path, cfg)
    res = subprocess.run(
        [sys.executable, "-m", "proxy", "usage", "--config", str(path)],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 1
    assert f"quotagate: ledger: PostgreSQL ledger at 127.0.0.1:{port}/x unavailable: " in res.stderr, res.stderr
    assert "Connection refused" in res.stderr and "Traceback" not in res.stderr


def pg_rows(url: str) -> list[tuple[str, str, int]]:
    return [(r[0], r[1], r[2]) for r in sql(url, "SELECT request_id, team, status FROM ledger")]


def chat(gw_url: str, n: int) -> list[str]:
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    ids = []
    with httpx.Client(base_url=gw_url, headers={"authorization": "Bearer sk-t1"}, timeout=30) as c:
        for _ in range(n):
            r = c.post("/v1/chat/completions", json=body)
            assert r.status_code == 200, r.text
            ids.append(r.headers["x-quotagate-request-id"])
    return ids


def wait_for(cond: Any, seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.mark.slow
def test_gateway_on_redis_writes_its_ledger_to_postgresql(pg_url: str, clean_redis: str, tmp_path: Path) -> None:
    old = [rec(i, "old-") for i in range(1200)]
    asyncio.run(_fill_stream(clean_redis, old))
    mock = start_mock(tmp_path)
    cfg = base_config(mock.url, clean_redis, ledger=pg_url)
    gw = start_gateway(tmp_path, cfg)
    client = redis.Redis.from_url(clean_redis)
    try:
        wait_for(lambda: client.xlen(LEDGER_KEY) == 0)  # copied at startup, then trimmed
        ids = chat(gw.url, 12)
        wait_for(lambda: len(pg_rows(pg_url)) == 1212)
        assert lost_and_duplicated(pg_url, [r.request_id for r in old] + ids) == (0, 0)
        assert client.xlen(LEDGER_KEY) == 0  # nothing new in the stream
        usage = httpx.get(gw.url + "/admin/usage", headers={"authorization": "Bearer admin-secret"}).json()
        t1 = next(t for t in usage["teams"] if t["team"] == "t1")
        assert sum(u["requests"] for u in t1["usage"]) == 12
        config = str(tmp_path / "quotagate.yaml")
        teams = run_cli("usage", "--since", "1000w", "--by", "team", config=config)
        by_team = {r["team"]: r["requests"] for r in teams}
        assert by_team == {"t1": 12, "search": 1200}
        keys = {k["name"]: k["last_used_at"] for k in run_cli("keys", "list", config=config)}
        assert keys["k1"] is not None and keys["k2"] is None  # last use, from PostgreSQL
    finally:
        client.close()
        gw.kill()
        mock.kill()


def run_cli(*args: str, config: str) -> Any:
    res = subprocess.run(
        [sys.executable, "-m", "proxy", *args, "--config", config, "--format", "json"],
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


async def _fill_stream(url: str, records: list[LedgerRecord]) -> None:
    store = RedisStore(url)
    await store.open()
    for i in range(0, len(records), 500):
        await store.write_ledger(records[i : i + 500])
    await store.close()


@pytest.mark.slow
def test_gateway_starts_with_the_database_down_and_loses_nothing(
    own_pg: PostgresProcess, clean_redis: str, tmp_path: Path
) -> None:
    url = own_pg.url()
    own_pg.stop("immediate")
    mock = start_mock(tmp_path)
    cfg = base_config(mock.url, clean_redis, ledger=url, ledger_queue_max=20, ledger_spill_dir=str(tmp_path / "sp"))
    gw = start_gateway(tmp_path, cfg)
    try:
        started = time.monotonic()
        ids = chat(gw.url, 40)
        print(f"40 requests in {time.monotonic() - started:.2f}s")
        log = gw.read_log()
        assert "ledger: PostgreSQL ledger at 127.0.0.1" in log and "unavailable" in log, log
        assert "the gateway starts anyway" in log
        wait_for(lambda: bool(spill_files(tmp_path / "sp")))  # past ledger_queue_max: on disk
        own_pg.start()
        wait_ready(url)
        started = time.monotonic()
        wait_for(lambda: len(counts(url)) == 40)
        print(f"rows in {time.monotonic() - started:.2f}s after the restart")
        assert lost_and_duplicated(url, ids) == (0, 0)
        assert redis.Redis.from_url(clean_redis).xlen(LEDGER_KEY) == 0
    finally:
        gw.kill()
        mock.kill()

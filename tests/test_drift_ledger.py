"""The ledger's ``charged_tokens`` (LedgerRecord version 3) and its sums by team, key and model over a time
range (``store/ledger_sums.py``): the same answer from SQLite, PostgreSQL, the Redis stream and memory;
older ledgers (SQLite schema 3, a PostgreSQL table of schema 1, a stream entry without the field) open,
keep their rows, gain the column and read it as 0."""

from __future__ import annotations

import dataclasses
import shutil
import sqlite3
from pathlib import Path

import orjson
import psycopg
import redis.asyncio as aioredis

from proxy.drift_targets import charged_sums
from proxy.ledger_sink import StoreLedger
from proxy.store.base import LedgerRecord
from proxy.store.ledger_sums import ChargedSum
from proxy.store.memory import MemoryStore
from proxy.store.pg_ledger import PostgresLedger
from proxy.store.pg_schema import SCHEMA_VERSION as PG_SCHEMA_VERSION
from proxy.store.redis import LEDGER_KEY, RedisStore
from proxy.store.sqlite import SqliteStore
from proxy.store.sqlite_schema import SCHEMA_VERSION
from tests.pg_server import pg_server, postgres_url
from tests.test_drift import pg_url
from tests.test_ledger_analysis_fields import FIXTURE

__all__ = ["pg_server", "pg_url", "postgres_url"]  # fixtures, imported for pytest

T = 1_790_000_000.0


def row(i: int, team: str, key: str, model: str, tokens: int, usd: int, ts: float = T) -> LedgerRecord:
    return LedgerRecord(
        request_id=f"r{i}", ts=ts, team=team, key_name=key, model=model, provider="openai", endpoint="chat",
        stream=False, status=200, outcome="ok", counted_input=tokens, counted_output=0, input_tokens=tokens,
        cached_input_tokens=None, output_tokens=0, reasoning_tokens=None, cost_micro_usd=usd, latency_ms=1.0,
        ttft_ms=None, charged_tokens=tokens,
    )  # fmt: skip


ROWS = [
    row(1, "search", "app", "gpt-4o-mini", 10, 3),
    row(2, "search", "app", "gpt-4o-mini", 20, 5),
    row(3, "search", "batch", "gpt-4o", 7, 70),
    row(4, "research", "r", "gpt-4o-mini", 1, 1, ts=T + 99.5),
    row(5, "search", "app", "gpt-4o-mini", 1000, 1000, ts=T - 0.001),  # before the range
    row(6, "search", "app", "gpt-4o-mini", 1000, 1000, ts=T + 100),  # at its end: outside
]
WANT = [
    ChargedSum("research", "r", "gpt-4o-mini", 1, 1, 1),
    ChargedSum("search", "app", "gpt-4o-mini", 2, 30, 8),
    ChargedSum("search", "batch", "gpt-4o", 1, 7, 70),
]


async def test_every_ledger_adds_up_the_same(tmp_path: Path, clean_redis: str, pg_url: str) -> None:
    sqlite, memory, redis_ = SqliteStore(tmp_path / "q.db"), MemoryStore(), RedisStore(clean_redis)
    pg = PostgresLedger(pg_url)
    for s in (sqlite, memory, redis_, pg):
        await s.open()
    try:
        for s in (sqlite, memory, redis_, pg):
            await s.write_ledger(ROWS)
        for reads in (StoreLedger(sqlite), StoreLedger(memory), StoreLedger(redis_), pg):
            assert await charged_sums(reads, T, T + 100) == WANT, reads
            assert await charged_sums(reads, T + 200, T + 300) == []
    finally:
        for s in (sqlite, memory, redis_, pg):
            await s.close()


async def test_a_sqlite_ledger_of_schema_3_gains_the_column(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    shutil.copy(FIXTURE, path)
    store = SqliteStore(path)
    await store.open()
    try:
        old = await store.ledger(0.0, limit=100)
        assert len(old) == 7 and {r.charged_tokens for r in old} == {0}  # NULL in the old rows: 0
        sums = await store.charged_sums(0.0, 2e9)
        assert sum(s.rows for s in sums) == 7 and sum(s.tokens for s in sums) == 0
        assert sum(s.micro_usd for s in sums) == sum(r.cost_micro_usd for r in old) > 0
        await store.write_ledger([row(9, "search", "k1", "gpt-4o-mini", 41, 2)])
        (new,) = [r for r in await store.ledger(0.0, limit=100) if r.request_id == "r9"]
        assert (new.charged_tokens, new.version) == (41, 3)
    finally:
        await store.close()
    with sqlite3.connect(path) as con:
        assert con.execute("SELECT version FROM schema_version").fetchone() == (SCHEMA_VERSION,) == (5,)
        assert "charged_tokens" in {r[1] for r in con.execute("PRAGMA table_info(ledger)")}


async def test_a_postgresql_ledger_of_schema_1_gains_the_column(pg_url: str) -> None:
    pg = PostgresLedger(pg_url)
    await pg.open()
    await pg.write_ledger([row(1, "search", "app", "gpt-4o-mini", 10, 3)])
    await pg.close()
    with psycopg.connect(pg_url, autocommit=True) as con:  # the table as the previous release left it
        con.execute("ALTER TABLE ledger DROP COLUMN charged_tokens")
        con.execute("UPDATE ledger_schema_version SET version = 1")

    pg = PostgresLedger(pg_url)
    await pg.open()
    try:
        (old,) = await pg.ledger(0.0)
        assert old.charged_tokens == 0 and old.cost_micro_usd == 3
        await pg.write_ledger([row(2, "search", "app", "gpt-4o-mini", 20, 5)])
        assert await pg.charged_sums(0.0, 2e9) == [ChargedSum("search", "app", "gpt-4o-mini", 2, 20, 8)]
    finally:
        await pg.close()
    with psycopg.connect(pg_url, autocommit=True) as con:
        assert con.execute("SELECT version FROM ledger_schema_version").fetchall() == [(PG_SCHEMA_VERSION,)] == [(2,)]
        nulls = con.execute("SELECT request_id FROM ledger WHERE charged_tokens IS NULL").fetchall()
        assert nulls == [("r1",)]


async def test_a_stream_entry_without_the_field_reads_0(clean_redis: str) -> None:
    store = RedisStore(clean_redis)
    await store.open()
    r = aioredis.Redis.from_url(clean_redis)
    try:
        older = {k: v for k, v in dataclasses.asdict(row(1, "t", "k", "m", 10, 3)).items() if k != "charged_tokens"}
        await r.xadd(LEDGER_KEY, {"r": orjson.dumps({**older, "version": 2})}, id=f"{int(T * 1000)}-1")
        (got,) = await store.ledger(0.0)
        assert (got.charged_tokens, got.version, got.cost_micro_usd) == (0, 2, 3)
        assert await charged_sums(StoreLedger(store), T, T + 1) == [ChargedSum("t", "k", "m", 1, 0, 3)]
    finally:
        await r.aclose()
        await store.close()

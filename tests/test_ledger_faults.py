"""The ledger never drops a record: every failure class of a real store, for several flush intervals, then
recovery, leaves exactly one row per request (rows lost = 0, duplicates = 0). Also: the queue bound and its
spill file, replay by the next process (after a crash, after a crash mid-replay, with a torn last line),
shutdown with the store down, and the same end to end through the gateway subprocess."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import itertools
import logging
import os
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import redis

from proxy.errors import StoreUnavailable
from proxy.ledger import Ledger, error_cause, spill_dir
from proxy.metrics import Metrics
from proxy.store import open_store
from proxy.store.base import LedgerRecord, Store
from proxy.store.redis import RedisStore
from proxy.store.sqlite import SqliteStore
from tests.gateway import ROOT, base_config, start_gateway, start_mock
from tests.redis_server import start_redis

T0 = 1_790_000_000.0
FLUSH = 0.05
N = 1200  # more than two batches


def rec(i: int, prefix: str = "r") -> LedgerRecord:
    return LedgerRecord(
        request_id=f"{prefix}{i}",
        ts=T0 + i / 1000,
        team="search",
        key_name="k",
        model="gpt-4o-mini",
        provider="openai",
        endpoint="chat",
        stream=False,
        status=200,
        outcome="ok",
        counted_input=10,
        counted_output=5,
        input_tokens=10,
        cached_input_tokens=0,
        output_tokens=5,
        reasoning_tokens=None,
        cost_micro_usd=i,
        latency_ms=1.0,
        ttft_ms=None,
    )


def make_metrics() -> Metrics:
    from prometheus_client import CollectorRegistry

    return Metrics(teams=[], models={}, registry=CollectorRegistry())


def errors(metrics: Metrics, cause: str) -> float:
    return float(metrics.ledger_write_errors.labels(cause)._value.get())


def depth(metrics: Metrics) -> float:
    return float(metrics.ledger_queue_depth._value.get())


async def until(cond: Callable[[], bool], seconds: float = 20.0) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.02)


async def lost_and_duplicated(store: Store, ids: Sequence[str]) -> tuple[int, int]:
    rows = collections.Counter(r.request_id for r in await store.ledger(0, limit=1_000_000))
    lost = sum(1 for i in ids if rows[i] == 0)
    duplicated = sum(n - 1 for n in rows.values() if n > 1)
    assert set(rows) <= set(ids), "rows for requests that were never made"
    return lost, duplicated


def spill_files(directory: Path) -> list[Path]:
    return sorted(p for p in directory.glob("ledger-*") if p.suffix in (".jsonl", ".replaying"))


@contextlib.asynccontextmanager
async def running(ledger: Ledger) -> AsyncIterator[Ledger]:
    ledger.start()
    try:
        yield ledger
    finally:
        await ledger.close(close_seconds=1.0)


@pytest.fixture
async def sqlite_store(tmp_path: Path) -> AsyncIterator[SqliteStore]:
    store = SqliteStore(tmp_path / "q.db", busy_timeout=0.1)
    await store.open()
    yield store
    await store.close()


# each failure class of a real store, for several flush intervals, then recovery


async def fault_then_recover(
    store: Store, tmp_path: Path, inject: Callable[[], Any], recover: Callable[[], Any], cause: str, hold: float = 0.5
) -> tuple[int, int]:
    metrics = make_metrics()
    ledger = Ledger(store, flush_seconds=FLUSH, spill_dir=tmp_path / "spill", metrics=metrics)
    ids = [f"r{i}" for i in range(N)]
    async with running(ledger):
        await _call(inject)
        for i in range(N):
            ledger.append(rec(i))
        await asyncio.sleep(hold)  # many flush intervals
        assert ledger.pending == N
        assert errors(metrics, cause) >= 2, {c: errors(metrics, c) for c in ("busy", "store_unavailable", "other")}
        await until(lambda: depth(metrics) == N)
        await _call(recover)
        await until(lambda: ledger.pending == 0)
    assert depth(metrics) == 0
    lost, duplicated = await lost_and_duplicated(store, ids)
    print(f"{cause}: {errors(metrics, cause):.0f} failed writes; of {N} records {lost} lost, {duplicated} duplicated")
    return lost, duplicated


async def _call(fn: Callable[[], Any]) -> None:
    result = fn()
    if isinstance(result, Awaitable):
        await result


async def test_sqlite_locked_past_busy_timeout(sqlite_store: SqliteStore, tmp_path: Path) -> None:
    blocker = sqlite3.connect(tmp_path / "q.db", isolation_level=None)
    try:
        result = await fault_then_recover(
            sqlite_store,
            tmp_path,
            lambda: blocker.execute("BEGIN EXCLUSIVE"),
            lambda: blocker.execute("COMMIT"),
            "busy",
        )
    finally:
        blocker.close()
    assert result == (0, 0)


async def test_sqlite_constraint_error(sqlite_store: SqliteStore, tmp_path: Path) -> None:
    admin = sqlite3.connect(tmp_path / "q.db", isolation_level=None)
    trigger = "CREATE TRIGGER reject BEFORE INSERT ON ledger BEGIN SELECT RAISE(ABORT, 'rejected by the test'); END"
    try:
        result = await fault_then_recover(
            sqlite_store,
            tmp_path,
            lambda: admin.execute(trigger),
            lambda: admin.execute("DROP TRIGGER reject"),
            "constraint",
        )
    finally:
        admin.close()
    assert result == (0, 0)


def _max_pages(store: SqliteStore, pages: int | None) -> None:
    """SQLite's own limit on the file's size, on each of the store's connections: a real SQLITE_FULL."""
    for con in (store._fast, store._con):
        assert con is not None
        limit = pages if pages is not None else con.execute("PRAGMA page_count").fetchone()[0]
        con.execute(f"PRAGMA max_page_count = {limit}")


async def test_sqlite_disk_full(sqlite_store: SqliteStore, tmp_path: Path) -> None:
    result = await fault_then_recover(
        sqlite_store,
        tmp_path,
        lambda: _max_pages(sqlite_store, None),
        lambda: _max_pages(sqlite_store, 1_073_741_823),
        "disk_full",
    )
    assert result == (0, 0)


async def test_redis_out_of_memory(clean_redis: str, tmp_path: Path) -> None:
    admin = redis.Redis.from_url(clean_redis)
    policy = admin.config_get("maxmemory-policy")["maxmemory-policy"]  # restored afterwards
    assert policy is not None
    store = RedisStore(clean_redis)
    await store.open()

    def oom() -> None:
        admin.config_set("maxmemory-policy", "noeviction")
        admin.config_set("maxmemory", 1)

    def restore() -> None:
        admin.config_set("maxmemory", 0)
        admin.config_set("maxmemory-policy", policy)

    try:
        result = await fault_then_recover(store, tmp_path, oom, restore, "oom")
    finally:
        restore()
        await store.close()
        admin.close()
    assert result == (0, 0)


async def test_redis_outage(tmp_path: Path) -> None:
    server = start_redis()
    store = RedisStore(server.url, socket_timeout=0.5, connect_timeout=0.2)
    await store.open()
    try:
        # a restarted test server is empty: nothing is written before the outage, so every row is checked
        result = await fault_then_recover(store, tmp_path, server.stop, server.start, "store_unavailable", hold=1.0)
    finally:
        await store.close()
        server.close()
    assert result == (0, 0)


async def test_a_failure_streak_is_logged_once_and_its_recovery_once(
    sqlite_store: SqliteStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "quotagate.ledger")
    blocker = sqlite3.connect(tmp_path / "q.db", isolation_level=None)
    try:
        result = await fault_then_recover(
            sqlite_store,
            tmp_path,
            lambda: blocker.execute("BEGIN EXCLUSIVE"),
            lambda: blocker.execute("COMMIT"),
            "busy",
            hold=1.0,
        )
    finally:
        blocker.close()
    assert result == (0, 0)
    messages = [r.getMessage() for r in caplog.records if r.name == "quotagate.ledger"]
    assert len([m for m in messages if "failed (busy)" in m]) == 1, messages
    assert len([m for m in messages if "recovered after" in m]) == 1, messages
    assert f"{N} records kept" in next(m for m in messages if "failed (busy)" in m)


def test_error_causes() -> None:
    assert error_cause(StoreUnavailable("SQLite store /tmp/busy-oom/x.db unavailable: database is locked")) == "busy"
    assert error_cause(sqlite3.IntegrityError("UNIQUE constraint failed: ledger.request_id")) == "constraint"
    assert error_cause(OSError(28, "No space left on device")) == "disk_full"
    refused = StoreUnavailable("Redis store at h:1/0 unavailable: Error 111 connecting")
    assert error_cause(refused) == "store_unavailable"
    assert error_cause(TypeError("a bug")) == "other"
    path_says_locked = StoreUnavailable("SQLite store /tmp/locked/x.db unavailable: disk I/O error")
    assert error_cause(path_says_locked) == "store_unavailable"


# idempotence: a batch written twice (a retry after a lost reply, a replay after a crash) lands once


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_store_writes_a_repeated_batch_once(kind: str, clean_redis: str, tmp_path: Path) -> None:
    store = open_store(clean_redis if kind == "redis" else f"sqlite:///{tmp_path}/q.db")
    await store.open()
    try:
        batch = [rec(i) for i in range(10)]
        await store.write_ledger(batch)
        await store.write_ledger(batch)
        await store.write_ledger([*batch[5:], rec(10)])  # sqlite: per request id; redis: a new batch
        rows = collections.Counter(r.request_id for r in await store.ledger(0))
        assert rows[f"r{10}"] == 1
        assert all(rows[f"r{i}"] == 1 for i in range(5))
        if kind == "sqlite":
            assert all(n == 1 for n in rows.values())
    finally:
        await store.close()


# the queue bound, spill files and their replay


class Switch:
    """A real store whose ledger writes can be turned off (an outage that lasts as long as a test wants)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.down = False
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.store, name)

    async def write_ledger(self, records: Sequence[LedgerRecord]) -> None:
        self.calls += 1
        if self.down:
            raise StoreUnavailable("test outage")
        await self.store.write_ledger(records)


async def test_a_full_queue_spills_and_the_next_process_replays(sqlite_store: SqliteStore, tmp_path: Path) -> None:
    spill = tmp_path / "spill"
    switch = Switch(sqlite_store)
    switch.down = True
    metrics = make_metrics()
    first = Ledger(switch, flush_seconds=FLUSH, queue_max=100, spill_dir=spill, metrics=metrics)
    first.start()
    started = time.perf_counter()
    for i in range(N):
        first.append(rec(i))
    per_append = (time.perf_counter() - started) / N
    assert per_append < 50e-6  # the hot path never touches the disk
    await until(lambda: len(first._overflow) == 0 and first.pending == N)
    await until(lambda: depth(metrics) == N)
    [own] = spill_files(spill)
    assert own.name.startswith(f"ledger-spill-{os.getpid()}-")
    assert sum(1 for _ in own.open()) == N - 100
    # a second live process on the same dir does not take the first one's file
    other = Ledger(sqlite_store, flush_seconds=FLUSH, spill_dir=spill)
    async with running(other):
        await asyncio.sleep(3 * FLUSH)
        assert other.pending == 0
        assert spill_files(spill) == [own]
    await first.close(close_seconds=0.2)  # the store is still down: the queue is spilled too
    assert await lost_and_duplicated(sqlite_store, []) == (0, 0)  # nothing written yet
    assert sum(sum(1 for _ in p.open()) for p in spill_files(spill)) == N

    nxt = Ledger(sqlite_store, flush_seconds=FLUSH, spill_dir=spill, metrics=make_metrics())
    async with running(nxt):
        await until(lambda: nxt.pending == 0 and not spill_files(spill))
    assert await lost_and_duplicated(sqlite_store, [f"r{i}" for i in range(N)]) == (0, 0)


async def test_spilled_records_are_written_by_their_own_process_once_the_store_is_back(
    sqlite_store: SqliteStore, tmp_path: Path
) -> None:
    spill = tmp_path / "spill"
    switch = Switch(sqlite_store)
    switch.down = True
    ledger = Ledger(switch, flush_seconds=FLUSH, queue_max=50, spill_dir=spill)
    async with running(ledger):
        for i in range(N):
            ledger.append(rec(i))
        await until(lambda: not ledger._overflow and len(spill_files(spill)) == 1)
        switch.down = False
        await until(lambda: ledger.pending == 0 and not spill_files(spill))
    assert await lost_and_duplicated(sqlite_store, [f"r{i}" for i in range(N)]) == (0, 0)


CRASHER = """
import asyncio, os, sys
from proxy.errors import StoreUnavailable
from proxy.ledger import Ledger
from tests.test_ledger_faults import rec

class Down:
    async def write_ledger(self, records):
        raise StoreUnavailable("down")

async def main():
    ledger = Ledger(Down(), flush_seconds=0.02, queue_max=int(sys.argv[2]), spill_dir=sys.argv[1])
    ledger.start()
    for i in range(int(sys.argv[3])):
        ledger.append(rec(i))
    while ledger._overflow or ledger._active is None or ledger._active.records == 0:
        await asyncio.sleep(0.01)
    os._exit(0)  # a crash: no close(), the in-memory queue dies with the process

asyncio.run(main())
"""


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
async def test_crashes_before_and_during_replay_leave_exactly_one_row(
    kind: str, clean_redis: str, tmp_path: Path
) -> None:
    spill = tmp_path / "spill"
    kept = 100  # in memory when the process dies: lost with it, by design
    res = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", CRASHER, str(spill), str(kept), str(N)],
        cwd=ROOT,
        timeout=60,
        capture_output=True,
    )
    assert res.returncode == 0, res.stderr.decode()
    [left] = spill_files(spill)
    survivors = [f"r{i}" for i in range(kept, N)]

    # a crash between "written to the store" and "file deleted": replay once, then put the file back
    backup = tmp_path / "backup"
    shutil.copy(left, backup)
    store = open_store(clean_redis if kind == "redis" else f"sqlite:///{tmp_path}/q.db")
    await store.open()
    try:
        first = Ledger(store, flush_seconds=FLUSH, spill_dir=spill)
        async with running(first):
            await until(lambda: first.pending == 0 and not spill_files(spill))
        assert await lost_and_duplicated(store, survivors) == (0, 0)
        shutil.copy(backup, left)

        again = Ledger(store, flush_seconds=FLUSH, spill_dir=spill)
        async with running(again):
            await until(lambda: again.pending == 0 and not spill_files(spill))
        assert await lost_and_duplicated(store, survivors) == (0, 0)
    finally:
        await store.close()


async def test_a_torn_last_line_is_skipped_with_a_warning(
    sqlite_store: SqliteStore, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spill = tmp_path / "spill"
    switch = Switch(sqlite_store)
    switch.down = True
    ledger = Ledger(switch, flush_seconds=FLUSH, queue_max=1, spill_dir=spill)
    ledger.start()
    for i in range(300):
        ledger.append(rec(i))
    await ledger.close(close_seconds=0.1)
    [path] = spill_files(spill)
    with path.open("ab") as fh:
        fh.write(b'{"b":1,"r":{"request_id":"torn","ts":')  # the crash hit mid-write
    caplog.set_level(logging.WARNING, "quotagate.ledger")
    nxt = Ledger(sqlite_store, flush_seconds=FLUSH, spill_dir=spill)
    async with running(nxt):
        await until(lambda: nxt.pending == 0 and not spill_files(spill))
    assert await lost_and_duplicated(sqlite_store, [f"r{i}" for i in range(300)]) == (0, 0)
    assert any("torn last line" in r.getMessage() for r in caplog.records)


async def test_append_stays_cheap_with_the_queue_full(tmp_path: Path) -> None:
    switch = Switch(open_store("memory://"))
    switch.down = True
    ledger = Ledger(switch, flush_seconds=FLUSH, queue_max=1000, spill_dir=tmp_path)
    ledger.start()
    records = [rec(i) for i in range(50_000)]
    timings = []
    for i, record in enumerate(records):
        started = time.perf_counter()
        ledger.append(record)
        timings.append(time.perf_counter() - started)
        if i % 1000 == 0:
            await asyncio.sleep(0)  # the loop runs the spill task between bursts
    timings.sort()
    p50, p999 = timings[len(timings) // 2], timings[int(len(timings) * 0.999)]
    print(f"append with the queue full: p50 {p50 * 1e6:.2f} us, p99.9 {p999 * 1e6:.2f} us")
    assert p50 < 5e-6 and p999 < 100e-6  # no I/O, no lock: the disk is the spill task's
    switch.down = False
    await until(lambda: ledger.pending == 0)
    await ledger.close()
    assert len(switch.store._ledger) == 50_000  # type: ignore[attr-defined]


def test_starting_workers_claim_each_leftover_file_exactly_once(tmp_path: Path) -> None:
    from concurrent.futures import ThreadPoolExecutor

    from proxy.ledger_spill import claim

    for i in range(40):
        (tmp_path / f"ledger-spill-{i}-dead.jsonl").write_bytes(b"")
    numbers = itertools.count()  # next() on it is atomic

    def name() -> Path:
        return tmp_path / f"ledger-replay-w-{next(numbers)}.replaying"

    with ThreadPoolExecutor(4) as pool:  # flock conflicts between open files, within one process too
        claims = list(pool.map(lambda _: claim(tmp_path, name), range(4)))
    claimed = [f.path for files in claims for f in files]
    assert len(claimed) == len(set(claimed)) == 40
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in claimed)
    for files in claims:
        for f in files:
            os.close(f.fd)


def test_spill_dir_defaults() -> None:
    assert spill_dir("sqlite:///./data/q.db") == Path("./data")
    assert spill_dir("sqlite:////var/lib/qg/q.db") == Path("/var/lib/qg")
    assert spill_dir("redis://127.0.0.1:6379/0") == Path("data")
    assert spill_dir("redis://127.0.0.1:6379/0", "/spill") == Path("/spill")


# disk full for real: the database and the spill dir on one tiny tmpfs (root only)


@pytest.fixture
def tiny_fs(tmp_path: Path) -> Iterator[Path]:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a tmpfs")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {res.stderr.decode().strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


async def test_disk_full_for_the_store_and_the_spill_file(tiny_fs: Path) -> None:
    store = SqliteStore(tiny_fs / "q.db", busy_timeout=0.1)
    await store.open()
    metrics = make_metrics()
    ledger = Ledger(store, flush_seconds=FLUSH, queue_max=200, spill_dir=tiny_fs, metrics=metrics)
    filler = tiny_fs / "filler"
    try:
        async with running(ledger):
            with filler.open("wb", buffering=0) as fh, contextlib.suppress(OSError):
                while True:
                    fh.write(b"\0" * 4096)
            for i in range(N):
                ledger.append(rec(i))
            await asyncio.sleep(0.5)
            assert errors(metrics, "disk_full") >= 2
            assert ledger.pending == N  # neither the store nor the spill file took them: kept in memory
            filler.unlink()
            await until(lambda: ledger.pending == 0)
        assert await lost_and_duplicated(store, [f"r{i}" for i in range(N)]) == (0, 0)
    finally:
        await store.close()


# end to end: the gateway, its ledger rejected for a while (and restarted meanwhile), then recovered


def ledger_ids(db: Path) -> collections.Counter[str]:
    con = sqlite3.connect(db)
    try:
        return collections.Counter(r[0] for r in con.execute("SELECT request_id FROM ledger"))
    finally:
        con.close()


def scrape(url: str, name: str) -> float:
    total = 0.0
    for line in httpx.get(url + "/metrics").text.splitlines():
        if line.startswith(name):
            total += float(line.rsplit(" ", 1)[1])
    return total


@pytest.mark.slow
def test_gateway_keeps_every_record_while_the_ledger_is_rejected(tmp_path: Path) -> None:
    mock = start_mock(tmp_path)
    db = tmp_path / "gw.db"
    cfg = base_config(mock.url, f"sqlite:///{db}", ledger_queue_max=20)
    gw = start_gateway(tmp_path, cfg)
    admin = sqlite3.connect(db, isolation_level=None)
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    ids: list[str] = []

    def send(n: int) -> None:
        with httpx.Client(base_url=gw.url, headers={"authorization": "Bearer sk-t1"}, timeout=30) as c:
            for _ in range(n):
                r = c.post("/v1/chat/completions", json=body)
                assert r.status_code == 200, r.text
                ids.append(r.headers["x-quotagate-request-id"])

    try:
        admin.execute("CREATE TRIGGER reject BEFORE INSERT ON ledger BEGIN SELECT RAISE(ABORT, 'rejected'); END")
        send(60)
        time.sleep(0.5)
        assert scrape(gw.url, 'quotagate_ledger_write_errors_total{cause="constraint"}') >= 2
        assert scrape(gw.url, "quotagate_ledger_queue_depth") == 60
        assert spill_files(tmp_path)  # past ledger_queue_max: on disk next to the database
        gw.terminate()  # the ledger is still rejected: the shutdown spills what it holds
        gw = start_gateway(tmp_path, cfg)  # claims the previous process's spill file
        send(40)
        time.sleep(0.3)
        assert ledger_ids(db) == collections.Counter()
        admin.execute("DROP TRIGGER reject")
        deadline = time.monotonic() + 20
        while len(ledger_ids(db)) < len(ids) and time.monotonic() < deadline:
            time.sleep(0.05)
        rows = ledger_ids(db)
        assert (sum(1 for i in ids if rows[i] == 0), sum(n - 1 for n in rows.values())) == (0, 0)
        assert set(rows) == set(ids)
        assert scrape(gw.url, "quotagate_ledger_queue_depth") == 0
        assert spill_files(tmp_path) == []
    finally:
        admin.close()
        gw.kill()
        mock.kill()


async def test_a_record_the_store_cannot_hold_is_set_aside_not_retried_forever(tmp_path: Path) -> None:
    """One record SQLite refuses for its data (an integer past 64 bits) must not hold back the 1,199 around
    it: its batch is bisected, the record set aside in ledger-rejected-*.jsonl, counted as ``rejected``."""
    store = SqliteStore(tmp_path / "q.db")
    await store.open()
    metrics = make_metrics()
    ledger = Ledger(store, flush_seconds=FLUSH, spill_dir=tmp_path, metrics=metrics)
    poison = dataclasses.replace(rec(600), seed=2**64 - 1)
    try:
        async with running(ledger):
            for i in range(N):
                ledger.append(poison if i == 600 else rec(i))
            await until(lambda: ledger.pending == 0)
        assert await lost_and_duplicated(store, [f"r{i}" for i in range(N)]) == (1, 0)  # r600 only, set aside
        assert errors(metrics, "rejected") == 1
        (kept,) = await asyncio.to_thread(lambda: list(tmp_path.glob("ledger-rejected-*.jsonl")))
        line = orjson.loads(await asyncio.to_thread(kept.read_text))
        assert line["r"]["request_id"] == "r600" and line["r"]["seed"] == 2**64 - 1
        assert "OverflowError" in line["error"]
    finally:
        await store.close()

"""A durable single-host store on one SQLite file, correct across processes sharing it.

Every read-modify-write (reserve, settle, extend, reap, add_usage, revoke) is one ``BEGIN IMMEDIATE``
transaction: it takes the database's write lock before reading, so two uvicorn workers on the same file
serialise exactly as Redis scripts do. WAL mode lets readers proceed meanwhile; ``busy_timeout`` bounds
how long a writer waits for the lock before the call fails with ``StoreUnavailable``.

Group commit (``batch.py``, ``sqlite_batch.py``): every write issued in one event-loop turn rides in one
transaction. The batch runs right on the event loop on a connection that never waits for the lock
(``busy_timeout = 0``): uncontended, a short SQLite transaction costs less than a thread hop. When another
process holds the write lock the batch goes to the store's thread instead, which waits for it
(``busy_timeout``). Each write keeps its own atomicity and its result is revealed only after the batch
has committed.

sqlite3 blocks, so apart from that fast path each store uses one connection from one dedicated thread.
``synchronous=NORMAL`` (safe with WAL) may lose the last transactions on power loss but never corrupts
the file. Beside this module: ``sqlite_schema`` (tables, version), ``sqlite_counters`` (counter and lease
transaction bodies), ``sqlite_ledger`` (the ledger table's SQL).
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast

import orjson

from proxy.errors import StoreUnavailable
from proxy.store import ledger_sums, sqlite_claims, sqlite_histograms, sqlite_ledger
from proxy.store import sqlite_counters as tx
from proxy.store.base import (
    OBJECT_RETENTION_S,
    Admitted,
    CounterValue,
    Denied,
    KeyRecord,
    Lease,
    LedgerRecord,
    ObjectRecord,
    UsageRow,
)
from proxy.store.batch import Batch, TurnBatcher
from proxy.store.end_user_spend import EndUserSpend, SpendBy, top_end_users_sql
from proxy.store.ledger_sums import ChargedSum, sums_of
from proxy.store.sqlite_batch import Connection, Op, is_busy, loop_connection, run_batch
from proxy.store.sqlite_schema import create_schema

_PURGE_EVERY = 60.0
_CHECKPOINT_EVERY = 500  # loop-side commits between WAL checkpoints (run by the store's thread)
_T = TypeVar("_T")


class SqliteStore:
    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time, busy_timeout: float = 5.0) -> None:
        self._path = Path(path)
        self._clock = clock
        self._busy_timeout = busy_timeout
        self._con: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._last_purge = 0.0
        self._batch: TurnBatcher[Op] = TurnBatcher(self._send)
        self._fast: Connection | None = None  # the event loop's own, never-waiting connection
        self._commits = 0

    # plumbing

    async def _run(self, fn: Callable[..., _T], *args: Any) -> _T:
        if self._executor is None:
            raise StoreUnavailable(f"SQLite store {self._path} is not open")
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, functools.partial(fn, *args))
        except (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError):
            raise  # bugs, not outages
        except (sqlite3.DatabaseError, OSError) as e:
            raise self._unavailable(e) from e

    def _unavailable(self, err: BaseException) -> StoreUnavailable:
        return StoreUnavailable(f"SQLite store {self._path} unavailable: {err}")

    def _db(self) -> sqlite3.Connection:
        if self._con is None:
            raise StoreUnavailable(f"SQLite store {self._path} is not open")
        return self._con

    def _tx(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Run ``fn(con, *args)`` in one write transaction that holds the lock from its first read."""
        con = self._db()
        con.execute("BEGIN IMMEDIATE")
        try:
            result = fn(con, *args)
            con.execute("COMMIT")
        except BaseException:
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        return result

    def _write(self, fn: Callable[..., _T], *args: Any) -> Awaitable[_T]:
        """``fn(con, *args)`` in this event-loop turn's write transaction (see the module docstring)."""
        return cast("asyncio.Future[_T]", self._batch.submit((fn, args)))

    def _send(self, batch: Batch[Op]) -> list[Any] | Awaitable[list[Any]]:
        """A turn's writes: on the loop's connection now, or on the thread when another process writes."""
        fast = self._fast
        if fast is None:
            return self._run(self._thread_batch, batch.ops)
        try:
            outcomes = run_batch(fast, batch.ops)
        except sqlite3.OperationalError as e:
            if is_busy(e):
                return self._run(self._thread_batch, batch.ops)  # wait for the lock off the loop
            raise self._unavailable(e) from e
        except (sqlite3.DatabaseError, OSError) as e:
            raise self._unavailable(e) from e
        self._commits += 1
        if self._commits % _CHECKPOINT_EVERY == 0 and self._executor is not None:
            # the loop's connection never checkpoints (that fsyncs); the thread does, without blocking writers
            self._executor.submit(self._checkpoint)
        return outcomes

    def _thread_batch(self, ops: list[Op]) -> list[Any]:
        return run_batch(self._db(), ops)

    def _checkpoint(self) -> None:
        if self._con is not None:
            self._con.execute("PRAGMA wal_checkpoint(PASSIVE)")

    # lifecycle

    async def open(self) -> None:
        if self._executor is not None:
            return
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="quotagate-sqlite")
        try:
            await self._run(self._connect)
        except BaseException:
            self._executor.shutdown(wait=False)
            self._executor = None
            raise

    def _connect(self) -> None:
        self._path.parent.mkdir(parents=True, exist_ok=True)
        con = sqlite3.connect(self._path, timeout=self._busy_timeout, isolation_level=None, check_same_thread=False)
        try:
            con.execute(f"PRAGMA busy_timeout = {int(self._busy_timeout * 1000)}")
            con.execute("PRAGMA journal_mode = WAL")
            con.execute("PRAGMA synchronous = NORMAL")
            self._con = con
            self._tx(create_schema)
            self._fast = loop_connection(self._path)
        except BaseException:
            self._con = None
            con.close()
            raise

    async def close(self) -> None:
        if self._executor is None:
            return
        try:
            await self._run(self._disconnect)
        finally:
            self._executor.shutdown(wait=False)
            self._executor = None

    def _disconnect(self) -> None:
        if self._fast is not None:
            self._fast.close()
            self._fast = None
        if self._con is not None:
            self._con.close()
            self._con = None

    async def ping(self) -> None:
        await self._run(lambda: self._db().execute("SELECT 1").fetchone())

    # counters and leases

    async def reserve(self, lease: Lease) -> Denied | Admitted:
        """Admit every hold or none. Reserving an existing lease id again is a no-op (safe to retry)."""
        return await self._write(tx.reserve, lease, self._clock())

    async def settle(self, lease_id: str, hash_tag: str, charges: Mapping[str, int]) -> bool:
        return await self._write(tx.settle, lease_id, hash_tag, dict(charges), self._clock())

    async def extend(self, lease_id: str, hash_tag: str, expires_at: float) -> bool:
        return await self._write(tx.extend, lease_id, hash_tag, expires_at)

    async def reap(self, hash_tag: str, now: float) -> list[Lease]:
        clock_now = self._clock()
        purge = clock_now - self._last_purge >= _PURGE_EVERY
        if purge:
            self._last_purge = clock_now
        return await self._write(tx.reap, hash_tag, now, clock_now, purge)

    async def add_usage(self, hash_tag: str, charges: Mapping[str, int], expires_at: Mapping[str, float]) -> None:
        await self._write(tx.add_usage, dict(charges), dict(expires_at), self._clock())

    async def counters(self, keys: Sequence[str]) -> dict[str, CounterValue]:
        return await self._run(self._read_counters, list(keys), self._clock())

    def _read_counters(self, keys: list[str], now: float) -> dict[str, CounterValue]:
        state = tx.live_many(self._db(), keys, now)
        return {key: CounterValue(*state[key]) for key in keys}

    async def claim(self, key: str, expires_at: float) -> bool:
        return await self._write(sqlite_claims.claim, key, expires_at, self._clock())

    # keys

    async def put_key(self, record: KeyRecord) -> None:
        await self._write(
            lambda con: con.execute(
                "INSERT OR REPLACE INTO api_keys VALUES (?, ?, ?, ?, ?)",
                (record.sha256, record.team, record.name, record.created_at, int(record.revoked)),
            )
        )

    async def find_key(self, sha256: str) -> KeyRecord | None:
        rows = await self._run(self._select, "SELECT * FROM api_keys WHERE sha256 = ?", (sha256,))
        return _key_record(rows[0]) if rows else None

    async def revoke_key(self, sha256: str) -> bool:
        return await self._write(
            lambda con: con.execute("UPDATE api_keys SET revoked = 1 WHERE sha256 = ?", (sha256,)).rowcount > 0
        )

    async def list_keys(self, team: str | None = None) -> list[KeyRecord]:
        where, params = ("WHERE team = ?", (team,)) if team is not None else ("", ())
        rows = await self._run(self._select, f"SELECT * FROM api_keys {where} ORDER BY team, name, sha256", params)
        return [_key_record(r) for r in rows]

    def _select(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return self._db().execute(sql, params).fetchall()

    # overrides

    async def set_override(self, team: str, budgets: list[dict[str, Any]]) -> None:
        blob = orjson.dumps(budgets).decode()
        await self._write(lambda con: con.execute("INSERT OR REPLACE INTO overrides VALUES (?, ?)", (team, blob)))

    async def get_overrides(self) -> dict[str, list[dict[str, Any]]]:
        rows = await self._run(self._select, "SELECT team, budgets FROM overrides ORDER BY team", ())
        return {team: orjson.loads(blob) for team, blob in rows}

    # ledger

    async def write_ledger(self, records: Sequence[LedgerRecord]) -> None:
        """Append records, skipping a request_id the ledger holds already: a replayed batch lands once."""
        if not records:
            return
        rows = sqlite_ledger.insert_rows(records)
        await self._write(lambda con: con.executemany(sqlite_ledger.INSERT, rows))

    async def usage(self, since: float, team: str | None = None) -> list[UsageRow]:
        where, params = ("AND team = ?", (since, team)) if team is not None else ("", (since,))
        rows = await self._run(self._select, sqlite_ledger.USAGE.format(team=where), params)
        return [UsageRow(*row) for row in rows]

    async def ledger(self, since: float, team: str | None = None, limit: int = 1000) -> list[LedgerRecord]:
        where, params = ("AND team = ?", (since, team, limit)) if team is not None else ("", (since, limit))
        rows = await self._run(self._select, sqlite_ledger.SELECT.format(team=where), params)
        return [sqlite_ledger.record(r) for r in rows]

    async def charged_sums(self, since: float, until: float) -> list[ChargedSum]:
        """What the ledger's rows in ``[since, until)`` charged, per team, key and model (``ledger_sums``)."""
        return sums_of(await self._run(self._select, ledger_sums.SQL, (since, until)))

    async def top_end_users(self, team: str, since: float, limit: int = 10, by: SpendBy = "cost") -> list[EndUserSpend]:
        """The team's end users with the most spend since ``since`` (proxy/store/end_user_spend.py), in SQL."""
        rows = await self._run(self._select, top_end_users_sql(by), (since, team, max(limit, 0)))
        return [EndUserSpend(*row) for row in rows]

    # objects (who owns a provider-side id)

    async def put_object(self, record: ObjectRecord) -> None:
        await self._write(_put_object, record, self._clock() - OBJECT_RETENTION_S)

    async def find_objects(self, kind: str, object_ids: Sequence[str]) -> dict[str, ObjectRecord]:
        ids = list(dict.fromkeys(object_ids))
        cutoff = self._clock() - OBJECT_RETENTION_S
        out: dict[str, ObjectRecord] = {}
        for i in range(0, len(ids), 500):  # well under SQLite's bound on host parameters
            chunk = ids[i : i + 500]
            sql = (
                "SELECT kind, object_id, team, provider, created_at, deleted FROM objects "
                f"WHERE kind = ? AND created_at > ? AND object_id IN ({','.join('?' * len(chunk))})"
            )
            for found, object_id, team, provider, created_at, deleted in await self._run(
                self._select, sql, (kind, cutoff, *chunk)
            ):
                out[object_id] = ObjectRecord(found, object_id, team, provider, created_at, bool(deleted))
        return out

    async def delete_object(self, kind: str, object_id: str) -> bool:
        cutoff = self._clock() - OBJECT_RETENTION_S
        sql = "UPDATE objects SET deleted = 1 WHERE kind = ? AND object_id = ? AND created_at > ?"
        return await self._write(lambda con: con.execute(sql, (kind, object_id, cutoff)).rowcount > 0)

    # histograms (proxy/observed.py)

    async def add_histogram(self, key: str, increments: Mapping[int, int], expires_at: float) -> None:
        await self._write(sqlite_histograms.add, key, dict(increments), expires_at, self._clock())

    async def histograms(self, keys: Sequence[str]) -> dict[str, dict[int, int]]:
        return await self._run(lambda: sqlite_histograms.read(self._db(), list(keys), self._clock()))


def _key_record(row: tuple[Any, ...]) -> KeyRecord:
    sha256, team, name, created_at, revoked = row
    return KeyRecord(sha256=sha256, team=team, name=name, created_at=created_at, revoked=bool(revoked))


def _put_object(con: sqlite3.Connection, record: ObjectRecord, cutoff: float) -> None:
    # expired records go as new ones come (the index on created_at makes this a seek when there are none)
    con.execute("DELETE FROM objects WHERE created_at <= ?", (cutoff,))
    con.execute(
        "INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?, ?)",
        (record.kind, record.object_id, record.team, record.provider, record.created_at, int(record.deleted)),
    )

"""A durable single-host store on one SQLite file, correct across processes sharing it.

Every read-modify-write (reserve, settle, extend, reap, add_usage, revoke) is one ``BEGIN IMMEDIATE``
transaction: it takes the database's write lock before reading, so two uvicorn workers on the same file
serialise exactly as Redis scripts do. WAL mode lets readers proceed meanwhile; ``busy_timeout`` bounds
how long a writer waits for the lock before the call fails with ``StoreUnavailable``.

sqlite3 blocks, so each store owns one connection used from one dedicated thread. ``synchronous=NORMAL``
(safe with WAL) may lose the last transactions on power loss but never corrupts the file.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import operator
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast

import orjson

from proxy.errors import StoreUnavailable
from proxy.store import rules
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
from proxy.store.rules import is_expired

SCHEMA_VERSION = 1
_PURGE_EVERY = 60.0
_CHECKPOINT_EVERY = 500  # loop-side commits between WAL checkpoints (run by the store's thread)
_T = TypeVar("_T")

_LEDGER_COLUMNS = tuple(f.name for f in dataclasses.fields(LedgerRecord))
_LEDGER_BOOLS = frozenset({"stream", "estimated", "charged"})
_PLACEHOLDERS = ", ".join("?" * len(_LEDGER_COLUMNS))
_ROW = operator.attrgetter(*_LEDGER_COLUMNS)

_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS counters (
    key TEXT PRIMARY KEY, used INTEGER NOT NULL, reserved INTEGER NOT NULL, expires_at REAL NOT NULL
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS leases (
    hash_tag TEXT NOT NULL, id TEXT NOT NULL, expires_at REAL NOT NULL, holds TEXT NOT NULL,
    meta TEXT NOT NULL, PRIMARY KEY (hash_tag, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS leases_expiry ON leases (hash_tag, expires_at);
CREATE TABLE IF NOT EXISTS api_keys (
    sha256 TEXT PRIMARY KEY, team TEXT NOT NULL, name TEXT NOT NULL, created_at REAL NOT NULL,
    revoked INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS overrides (team TEXT PRIMARY KEY, budgets TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS ledger ({", ".join(_LEDGER_COLUMNS)});
CREATE INDEX IF NOT EXISTS ledger_ts ON ledger (ts);
CREATE INDEX IF NOT EXISTS ledger_team_ts ON ledger (team, ts);
CREATE INDEX IF NOT EXISTS ledger_request_id ON ledger (request_id);
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL, object_id TEXT NOT NULL, team TEXT NOT NULL, provider TEXT NOT NULL,
    created_at REAL NOT NULL, deleted INTEGER NOT NULL, PRIMARY KEY (kind, object_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS objects_created ON objects (created_at);
"""

_USAGE_SQL = """
SELECT team, model, COUNT(*),
       SUM(CASE WHEN charged THEN COALESCE(input_tokens, counted_input, 0) ELSE 0 END),
       SUM(CASE WHEN charged THEN COALESCE(cached_input_tokens, 0) ELSE 0 END),
       SUM(CASE WHEN charged THEN COALESCE(output_tokens, counted_output, 0) ELSE 0 END),
       SUM(CASE WHEN charged THEN COALESCE(reasoning_tokens, 0) ELSE 0 END),
       SUM(cost_micro_usd)
FROM ledger WHERE ts >= ? {team} GROUP BY team, model ORDER BY team, model
"""


class SqliteStore:
    def __init__(self, path: str | Path, *, clock: Callable[[], float] = time.time, busy_timeout: float = 5.0) -> None:
        self._path = Path(path)
        self._clock = clock
        self._busy_timeout = busy_timeout
        self._con: sqlite3.Connection | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._last_purge = 0.0
        self._pending: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]] = []
        self._slow: list[list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]]] = []
        self._scheduled = False
        self._drainer: asyncio.Task[None] | None = None
        self._fast: _Connection | None = None  # the event loop's own, never-waiting connection
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
            raise StoreUnavailable(f"SQLite store {self._path} unavailable: {e}") from e

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

    async def _write(self, fn: Callable[..., _T], *args: Any) -> _T:
        """Group commit: every write issued in one event-loop turn rides in one transaction.

        The batch runs right on the event loop on a connection that never waits for the lock
        (``busy_timeout = 0``): uncontended, a short SQLite transaction costs less than a thread hop.
        When another process holds the write lock the batch goes to the store's thread instead, which
        waits for it (``busy_timeout``). Each write keeps its own atomicity (a savepoint inside the
        batch's BEGIN IMMEDIATE) and its result is revealed only after the batch has committed.
        """
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        self._pending.append((fn, args, fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return cast(_T, await fut)

    def _flush(self) -> None:
        self._scheduled = False
        batch, self._pending = self._pending, []
        if not batch:
            return
        ops = [(fn, args) for fn, args, _ in batch]
        fast = self._fast
        if fast is None:
            self._to_thread(batch)
            return
        try:
            results = self._tx_batch(ops, fast)
        except sqlite3.OperationalError as e:
            if "locked" in str(e) or "busy" in str(e):
                self._to_thread(batch)  # another process holds the write lock: wait for it off the loop
                return
            self._fail(batch, StoreUnavailable(f"SQLite store {self._path} unavailable: {e}"))
            return
        except (sqlite3.DatabaseError, OSError) as e:
            self._fail(batch, StoreUnavailable(f"SQLite store {self._path} unavailable: {e}"))
            return
        except Exception as e:  # anything else: every waiter gets the error, none waits forever
            self._fail(batch, e)
            return
        self._resolve(batch, results)
        self._commits += 1
        if self._commits % _CHECKPOINT_EVERY == 0 and self._executor is not None:
            # the loop's connection never checkpoints (that fsyncs); the thread does, without blocking writers
            self._executor.submit(self._checkpoint)

    def _checkpoint(self) -> None:
        if self._con is not None:
            self._con.execute("PRAGMA wal_checkpoint(PASSIVE)")

    def _to_thread(self, batch: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]]) -> None:
        self._slow.append(batch)
        if self._drainer is None or self._drainer.done():
            self._drainer = asyncio.get_running_loop().create_task(self._drain())

    @staticmethod
    def _fail(batch: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]], err: Exception) -> None:
        for _, _, fut in batch:
            if not fut.done():
                fut.set_exception(err)

    @staticmethod
    def _resolve(
        batch: list[tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]], results: list[tuple[bool, Any]]
    ) -> None:
        for (_, _, fut), (ok, value) in zip(batch, results, strict=True):
            if fut.done():
                continue
            if ok:
                fut.set_result(value)
            else:
                fut.set_exception(value)

    async def _drain(self) -> None:
        while self._slow:
            batch = self._slow.pop(0)
            try:
                results = await self._run(self._tx_batch, [(fn, args) for fn, args, _ in batch])
            except Exception as e:  # the whole batch failed: store unavailable
                self._fail(batch, e)
                continue
            except BaseException as e:  # shutdown: nothing was committed
                self._fail(batch, StoreUnavailable(str(e) or "shutting down"))
                raise
            self._resolve(batch, results)

    def _tx_batch(
        self, ops: list[tuple[Callable[..., Any], tuple[Any, ...]]], con: sqlite3.Connection | None = None
    ) -> list[tuple[bool, Any]]:
        """Run ``ops`` in one BEGIN IMMEDIATE transaction; one op's own error fails that op only."""
        con = con or self._db()
        try:
            return self._tx_ops(con, ops)
        except _OpError:
            pass  # an op failed mid-batch (a bug, not an outage): everything rolled back; run them one by one
        out: list[tuple[bool, Any]] = []
        for op in ops:
            try:
                out += self._tx_ops(con, [op])
            except _OpError as e:
                out.append((False, e.__cause__))
        return out

    @staticmethod
    def _tx_ops(
        con: sqlite3.Connection, ops: list[tuple[Callable[..., Any], tuple[Any, ...]]]
    ) -> list[tuple[bool, Any]]:
        fast = con if isinstance(con, _Connection) else None
        con.execute("BEGIN IMMEDIATE")
        try:
            if fast is not None:
                version = fast.execute("PRAGMA data_version").fetchone()[0]
                if version != fast.version or len(fast.counters) > 50_000:
                    fast.counters.clear()
                    fast.version = version
            out: list[tuple[bool, Any]] = []
            for fn, args in ops:
                try:
                    out.append((True, fn(con, *args)))
                except (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError) as e:
                    raise _OpError from e
                except sqlite3.DatabaseError:
                    raise  # the database itself (locked, full, broken): the whole batch fails or moves
                except Exception as e:  # this op's own fault (a bug, a value SQLite cannot hold): it fails alone
                    raise _OpError from e
            if fast is not None and fast.dirty:  # counters written once per batch, however many ops touched them
                fast.executemany(
                    "INSERT OR REPLACE INTO counters VALUES (?, ?, ?, ?)", [(k, *fast.counters[k]) for k in fast.dirty]
                )
                fast.dirty.clear()
            con.execute("COMMIT")
        except BaseException:
            if fast is not None:
                fast.counters.clear()
                fast.dirty.clear()
                fast.leases.clear()
            if con.in_transaction:
                con.execute("ROLLBACK")
            raise
        return out

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
            self._tx(_create_schema)
            fast = sqlite3.connect(
                self._path, timeout=0, isolation_level=None, check_same_thread=False, factory=_Connection
            )
            fast.counters, fast.dirty, fast.leases, fast.version = {}, set(), {}, None
            fast.execute("PRAGMA busy_timeout = 0")
            fast.execute("PRAGMA synchronous = NORMAL")
            fast.execute("PRAGMA wal_autocheckpoint = 0")
            self._fast = fast
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
        return await self._write(_reserve, lease, self._clock())

    async def settle(self, lease_id: str, hash_tag: str, charges: Mapping[str, int]) -> bool:
        return await self._write(_settle, lease_id, hash_tag, dict(charges), self._clock())

    async def extend(self, lease_id: str, hash_tag: str, expires_at: float) -> bool:
        return await self._write(_extend, lease_id, hash_tag, expires_at)

    async def reap(self, hash_tag: str, now: float) -> list[Lease]:
        clock_now = self._clock()
        purge = clock_now - self._last_purge >= _PURGE_EVERY
        if purge:
            self._last_purge = clock_now
        return await self._write(_reap, hash_tag, now, clock_now, purge)

    async def add_usage(self, hash_tag: str, charges: Mapping[str, int], expires_at: Mapping[str, float]) -> None:
        await self._write(_add_usage, dict(charges), dict(expires_at), self._clock())

    async def counters(self, keys: Sequence[str]) -> dict[str, CounterValue]:
        return await self._run(self._read_counters, list(keys), self._clock())

    def _read_counters(self, keys: list[str], now: float) -> dict[str, CounterValue]:
        state = _live_many(self._db(), keys, now)
        return {key: CounterValue(*state[key]) for key in keys}

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
        """Append records, skipping a request_id the ledger holds already: a replayed batch lands once.

        A plain index and ``NOT EXISTS`` rather than a UNIQUE index: a ledger written before this check may
        hold duplicates, and opening it must not fail (writes are serialised, so the check is exact)."""
        if not records:
            return
        rows = [(*_ROW(r), r.request_id) for r in records]
        sql = (
            f"INSERT INTO ledger ({', '.join(_LEDGER_COLUMNS)}) SELECT {_PLACEHOLDERS} "
            "WHERE NOT EXISTS (SELECT 1 FROM ledger WHERE request_id = ?)"
        )
        await self._write(lambda con: con.executemany(sql, rows))

    async def usage(self, since: float, team: str | None = None) -> list[UsageRow]:
        where, params = ("AND team = ?", (since, team)) if team is not None else ("", (since,))
        rows = await self._run(self._select, _USAGE_SQL.format(team=where), params)
        return [UsageRow(*row) for row in rows]

    async def ledger(self, since: float, team: str | None = None, limit: int = 1000) -> list[LedgerRecord]:
        where, params = ("AND team = ?", (since, team, limit)) if team is not None else ("", (since, limit))
        sql = (
            f"SELECT {', '.join(_LEDGER_COLUMNS)} FROM ledger WHERE ts >= ? {where} "
            "ORDER BY ts DESC, rowid DESC LIMIT ?"
        )
        rows = await self._run(self._select, sql, params)
        return [_ledger_record(r) for r in rows]

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


# Transaction bodies: they run on the store's thread inside BEGIN IMMEDIATE.


def _create_schema(con: sqlite3.Connection) -> None:
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            con.execute(statement)
    row = con.execute("SELECT MAX(version) FROM schema_version").fetchone()
    if row[0] is None:
        con.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
    elif row[0] > SCHEMA_VERSION:
        raise RuntimeError(f"SQLite store schema version {row[0]} is newer than this quotagate ({SCHEMA_VERSION})")


class _Connection(sqlite3.Connection):
    """The event loop's connection, with its view of the counters it has read or written.

    The view is only used inside a write transaction (the lock is held) and only while ``PRAGMA
    data_version`` shows that no other connection (another worker process, or this store's own thread)
    has committed since this one last did; otherwise it is dropped and the table is read again.
    """

    counters: dict[str, tuple[int, int, float]]
    dirty: set[str]  # counters changed in the open transaction, written once before it commits
    leases: dict[tuple[str, str], Lease]  # leases this connection created, to settle without re-reading them
    version: int | None


class _OpError(Exception):
    """One operation of a batch raised (its cause): the batch is rolled back and retried op by op."""


def _live_many(con: sqlite3.Connection, keys: Iterable[str], now: float) -> dict[str, rules.Counts]:
    """(used, reserved) of each counter, in one statement; missing or expired counters read as zero."""
    unique = list(dict.fromkeys(keys))
    out = dict.fromkeys(unique, (0, 0))
    cache = con.counters if isinstance(con, _Connection) else None
    missing = unique
    if cache is not None:
        missing = []
        for key in unique:
            row = cache.get(key)
            if row is None:
                missing.append(key)
            elif not is_expired(row[2], now):
                out[key] = (row[0], row[1])
    if missing:
        marks = ",".join("?" * len(missing))
        rows = con.execute(f"SELECT key, used, reserved, expires_at FROM counters WHERE key IN ({marks})", missing)
        for key, used, reserved, expires_at in rows:
            if cache is not None:
                cache[key] = (used, reserved, expires_at)
            if not is_expired(expires_at, now):
                out[key] = (used, reserved)
        if cache is not None:
            for key in missing:
                cache.setdefault(key, (0, 0, -1.0))  # known absent (reads as expired)
    return out


def _put_many(con: sqlite3.Connection, rows: list[tuple[str, int, int, float]]) -> None:
    if isinstance(con, _Connection):  # written behind, once per transaction
        for key, used, reserved, expires_at in rows:
            con.counters[key] = (used, reserved, expires_at)
            con.dirty.add(key)
        return
    con.executemany("INSERT OR REPLACE INTO counters VALUES (?, ?, ?, ?)", rows)


def _apply(con: sqlite3.Connection, deltas: Mapping[str, rules.Delta], now: float) -> None:
    if deltas:
        _put_many(con, rules.written(_live_many(con, deltas, now), deltas))


def _reserve(con: sqlite3.Connection, lease: Lease, now: float) -> Denied | Admitted:
    exists = con.execute("SELECT 1 FROM leases WHERE hash_tag = ? AND id = ?", (lease.hash_tag, lease.id))
    if exists.fetchone() is not None:
        return Admitted()
    read = _live_many(con, [h.key for h in lease.holds], now)
    deltas = rules.admit(lease.holds, read, now)
    if isinstance(deltas, Denied):
        return deltas
    rows = rules.written(read, deltas)
    _put_many(con, rows)
    con.execute(
        "INSERT INTO leases VALUES (?, ?, ?, ?, ?)",
        (
            lease.hash_tag,
            lease.id,
            lease.expires_at,
            orjson.dumps(rules.hold_rows(lease.holds)).decode(),
            orjson.dumps(dict(lease.meta)).decode(),
        ),
    )
    if isinstance(con, _Connection):
        if len(con.leases) > 100_000:  # leases reaped by another connection are never settled here
            con.leases.clear()
        con.leases[(lease.hash_tag, lease.id)] = lease
    return rules.admitted(read, rows)


def _load_lease(row: tuple[Any, ...]) -> Lease:
    hash_tag, lease_id, expires_at, holds, meta = row
    return Lease(
        id=lease_id,
        hash_tag=hash_tag,
        holds=rules.holds_from_rows(orjson.loads(holds)),
        expires_at=expires_at,
        meta=orjson.loads(meta),
    )


def _take_lease(con: sqlite3.Connection, lease_id: str, hash_tag: str) -> Lease | None:
    known = con.leases.pop((hash_tag, lease_id), None) if isinstance(con, _Connection) else None
    if known is not None:  # created here: only its deletion tells whether it is still unsettled
        deleted = con.execute("DELETE FROM leases WHERE hash_tag = ? AND id = ?", (hash_tag, lease_id)).rowcount
        return known if deleted == 1 else None
    row = con.execute("DELETE FROM leases WHERE hash_tag = ? AND id = ? RETURNING *", (hash_tag, lease_id)).fetchone()
    return None if row is None else _load_lease(row)


def _settle(con: sqlite3.Connection, lease_id: str, hash_tag: str, charges: dict[str, int], now: float) -> bool:
    lease = _take_lease(con, lease_id, hash_tag)
    if lease is None:
        return False
    _apply(con, rules.settle_deltas(lease.holds, charges, now), now)
    return True


def _extend(con: sqlite3.Connection, lease_id: str, hash_tag: str, expires_at: float) -> bool:
    cur = con.execute(
        "UPDATE leases SET expires_at = ? WHERE hash_tag = ? AND id = ?", (expires_at, hash_tag, lease_id)
    )
    return cur.rowcount > 0


def _reap(con: sqlite3.Connection, hash_tag: str, now: float, clock_now: float, purge: bool) -> list[Lease]:
    rows = con.execute(
        "SELECT * FROM leases WHERE hash_tag = ? AND expires_at <= ? ORDER BY expires_at", (hash_tag, now)
    ).fetchall()
    leases = [_load_lease(row) for row in rows]
    for lease in leases:
        con.execute("DELETE FROM leases WHERE hash_tag = ? AND id = ?", (hash_tag, lease.id))
        _apply(con, rules.reap_deltas(lease.holds, clock_now), clock_now)
    if purge:
        con.execute("DELETE FROM counters WHERE expires_at > 0 AND expires_at <= ?", (clock_now,))
    return leases


def _add_usage(con: sqlite3.Connection, charges: dict[str, int], expires_at: dict[str, float], now: float) -> None:
    _apply(con, rules.usage_deltas(charges, expires_at, now), now)


def _key_record(row: tuple[Any, ...]) -> KeyRecord:
    sha256, team, name, created_at, revoked = row
    return KeyRecord(sha256=sha256, team=team, name=name, created_at=created_at, revoked=bool(revoked))


def _ledger_record(row: tuple[Any, ...]) -> LedgerRecord:
    values: dict[str, Any] = {
        col: (bool(v) if col in _LEDGER_BOOLS else v) for col, v in zip(_LEDGER_COLUMNS, row, strict=True)
    }
    return LedgerRecord(**values)


def _put_object(con: sqlite3.Connection, record: ObjectRecord, cutoff: float) -> None:
    # expired records go as new ones come (the index on created_at makes this a seek when there are none)
    con.execute("DELETE FROM objects WHERE created_at <= ?", (cutoff,))
    con.execute(
        "INSERT OR REPLACE INTO objects VALUES (?, ?, ?, ?, ?, ?)",
        (record.kind, record.object_id, record.team, record.provider, record.created_at, int(record.deleted)),
    )

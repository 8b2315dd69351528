"""One SQLite transaction for a batch of writes, and the event loop's own connection with its counter view.

``proxy/store/batch.py`` gathers the writes issued in one event-loop turn; ``run_batch`` runs them in one
``BEGIN IMMEDIATE`` transaction, on the loop's ``Connection`` (``busy_timeout = 0``: it never waits) or on
the store's thread connection (which waits for the lock). Each op is ``(fn, args)`` and runs as
``fn(con, *args)``; its outcome is its result, or the exception that op alone raised.

An op's own error (a bug, a value SQLite cannot hold) rolls the batch back, and the ops then run one
transaction each, so that only the faulty op fails. An error of the database itself (locked, full,
broken) fails, or on the loop's connection moves, the whole batch.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

from proxy.store.base import Lease

Op = tuple[Callable[..., Any], tuple[Any, ...]]
_BUGS = (sqlite3.IntegrityError, sqlite3.ProgrammingError, sqlite3.InterfaceError)


class Connection(sqlite3.Connection):
    """The event loop's connection, with its view of the counters it has read or written.

    The view is only used inside a write transaction (the lock is held) and only while ``PRAGMA
    data_version`` shows that no other connection (another worker process, or this store's own thread)
    has committed since this one last did; otherwise it is dropped and the table is read again.
    """

    counters: dict[str, tuple[int, int, float]]
    dirty: set[str]  # counters changed in the open transaction, written once before it commits
    leases: dict[tuple[str, str], Lease]  # leases this connection created, to settle without re-reading them
    version: int | None


def loop_connection(path: Path) -> Connection:
    """The loop's connection: never waits for the lock, never checkpoints (that fsyncs; the thread does)."""
    fast = sqlite3.connect(path, timeout=0, isolation_level=None, check_same_thread=False, factory=Connection)
    fast.counters, fast.dirty, fast.leases, fast.version = {}, set(), {}, None
    fast.execute("PRAGMA busy_timeout = 0")
    fast.execute("PRAGMA synchronous = NORMAL")
    fast.execute("PRAGMA wal_autocheckpoint = 0")
    return fast


def is_busy(err: sqlite3.OperationalError) -> bool:
    """Another process holds the write lock: the loop's connection hands the batch to the thread."""
    return "locked" in str(err) or "busy" in str(err)


class _OpError(Exception):
    """One operation of a batch raised (its cause): the batch is rolled back and retried op by op."""


def run_batch(con: sqlite3.Connection, ops: list[Op]) -> list[Any]:
    """Run ``ops`` in one BEGIN IMMEDIATE transaction; one op's own error fails that op only."""
    try:
        return _transaction(con, ops)
    except _OpError:
        pass  # an op failed mid-batch (a bug, not an outage): everything rolled back; run them one by one
    out: list[Any] = []
    for op in ops:
        try:
            out += _transaction(con, [op])
        except _OpError as e:
            out.append(e.__cause__)
    return out


def _transaction(con: sqlite3.Connection, ops: list[Op]) -> list[Any]:
    fast = con if isinstance(con, Connection) else None
    con.execute("BEGIN IMMEDIATE")
    try:
        if fast is not None:
            version = fast.execute("PRAGMA data_version").fetchone()[0]
            if version != fast.version or len(fast.counters) > 50_000:
                fast.counters.clear()
                fast.version = version
        out: list[Any] = []
        for fn, args in ops:
            try:
                out.append(fn(con, *args))
            except _BUGS as e:
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

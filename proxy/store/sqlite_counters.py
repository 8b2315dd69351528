"""The SQLite store's counter and lease writes: transaction bodies, run inside BEGIN IMMEDIATE.

Each is ``fn(con, *args)``, an op of ``sqlite_batch.run_batch``; what it does to a counter is
``rules.py``. On the loop's ``Connection`` counters are read through, and written behind into, its view
(once per transaction, by ``run_batch``), and a lease it created is settled without reading it back;
on the thread's connection every read and write goes to the table.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Mapping

from proxy.store import rules
from proxy.store.base import Admitted, Denied, Lease
from proxy.store.rules import is_expired
from proxy.store.sqlite_batch import Connection


def live_many(con: sqlite3.Connection, keys: Iterable[str], now: float) -> dict[str, rules.Counts]:
    """(used, reserved) of each counter, in one statement; missing or expired counters read as zero."""
    unique = list(dict.fromkeys(keys))
    out = dict.fromkeys(unique, (0, 0))
    cache = con.counters if isinstance(con, Connection) else None
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


def _put_many(con: sqlite3.Connection, rows: list[rules.Row]) -> None:
    if isinstance(con, Connection):  # written behind, once per transaction
        for key, used, reserved, expires_at in rows:
            con.counters[key] = (used, reserved, expires_at)
            con.dirty.add(key)
        return
    con.executemany("INSERT OR REPLACE INTO counters VALUES (?, ?, ?, ?)", rows)


def _apply(con: sqlite3.Connection, deltas: Mapping[str, rules.Delta], now: float) -> None:
    if deltas:
        _put_many(con, rules.written(live_many(con, deltas, now), deltas))


def reserve(con: sqlite3.Connection, lease: Lease, now: float) -> Denied | Admitted:
    exists = con.execute("SELECT 1 FROM leases WHERE hash_tag = ? AND id = ?", (lease.hash_tag, lease.id))
    if exists.fetchone() is not None:
        return Admitted()
    read = live_many(con, [h.key for h in lease.holds], now)
    deltas = rules.admit(lease.holds, read, now)
    if isinstance(deltas, Denied):
        return deltas
    rows = rules.written(read, deltas)
    _put_many(con, rows)
    con.execute("INSERT INTO leases VALUES (?, ?, ?, ?, ?)", rules.lease_row(lease))
    if isinstance(con, Connection):
        if len(con.leases) > 100_000:  # leases reaped by another connection are never settled here
            con.leases.clear()
        con.leases[(lease.hash_tag, lease.id)] = lease
    return rules.admitted(read, rows)


def _take_lease(con: sqlite3.Connection, lease_id: str, hash_tag: str) -> Lease | None:
    known = con.leases.pop((hash_tag, lease_id), None) if isinstance(con, Connection) else None
    if known is not None:  # created here: only its deletion tells whether it is still unsettled
        deleted = con.execute("DELETE FROM leases WHERE hash_tag = ? AND id = ?", (hash_tag, lease_id)).rowcount
        return known if deleted == 1 else None
    row = con.execute("DELETE FROM leases WHERE hash_tag = ? AND id = ? RETURNING *", (hash_tag, lease_id)).fetchone()
    return None if row is None else rules.lease_from_row(row)


def settle(con: sqlite3.Connection, lease_id: str, hash_tag: str, charges: dict[str, int], now: float) -> bool:
    lease = _take_lease(con, lease_id, hash_tag)
    if lease is None:
        return False
    _apply(con, rules.settle_deltas(lease.holds, charges, now), now)
    return True


def extend(con: sqlite3.Connection, lease_id: str, hash_tag: str, expires_at: float) -> bool:
    cur = con.execute(
        "UPDATE leases SET expires_at = ? WHERE hash_tag = ? AND id = ?", (expires_at, hash_tag, lease_id)
    )
    return cur.rowcount > 0


def reap(con: sqlite3.Connection, hash_tag: str, now: float, clock_now: float, purge: bool) -> list[Lease]:
    rows = con.execute(
        "SELECT * FROM leases WHERE hash_tag = ? AND expires_at <= ? ORDER BY expires_at", (hash_tag, now)
    ).fetchall()
    leases = [rules.lease_from_row(row) for row in rows]
    for lease in leases:
        con.execute("DELETE FROM leases WHERE hash_tag = ? AND id = ?", (hash_tag, lease.id))
        _apply(con, rules.reap_deltas(lease.holds, clock_now), clock_now)
    if purge:
        con.execute("DELETE FROM counters WHERE expires_at > 0 AND expires_at <= ?", (clock_now,))
    return leases


def add_usage(con: sqlite3.Connection, charges: dict[str, int], expires_at: dict[str, float], now: float) -> None:
    _apply(con, rules.usage_deltas(charges, expires_at, now), now)

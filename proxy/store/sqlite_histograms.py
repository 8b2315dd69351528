"""The SQLite store's histograms (proxy/observed.py): one row per (key, bucket), written in the store's write
transaction (``fn(con, *args)``, an op of ``sqlite_batch.run_batch``), read with one SELECT."""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence

from proxy.store.rules import is_expired

TABLE = """
CREATE TABLE IF NOT EXISTS histograms (
    key TEXT NOT NULL, bucket INTEGER NOT NULL, n INTEGER NOT NULL, expires_at REAL NOT NULL,
    PRIMARY KEY (key, bucket)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS histograms_expiry ON histograms (expires_at);
"""

_ADD = """
INSERT INTO histograms VALUES (?, ?, ?, ?)
ON CONFLICT (key, bucket) DO UPDATE SET n = n + excluded.n, expires_at = excluded.expires_at
"""


def add(con: sqlite3.Connection, key: str, increments: Mapping[int, int], expires_at: float, now: float) -> None:
    """Expired rows go first (this key's, so that it starts afresh, and any other's: a seek on the index)."""
    con.execute("DELETE FROM histograms WHERE expires_at > 0 AND expires_at <= ?", (now,))
    if is_expired(expires_at, now):
        return
    con.executemany(_ADD, [(key, b, n, expires_at) for b, n in increments.items()])


def read(con: sqlite3.Connection, keys: Sequence[str], now: float) -> dict[str, dict[int, int]]:
    out: dict[str, dict[int, int]] = {key: {} for key in keys}
    unique = list(out)
    for i in range(0, len(unique), 500):  # well under SQLite's bound on host parameters
        chunk = unique[i : i + 500]
        sql = f"SELECT key, bucket, n, expires_at FROM histograms WHERE key IN ({','.join('?' * len(chunk))})"
        for key, b, n, expires_at in con.execute(sql, chunk):
            if not is_expired(expires_at, now):
                out[key][b] = n
    return out

"""The SQLite store's ``claim``: one row per claimed key until it expires (proxy/store/base.py).

Run inside the store's write transaction (``BEGIN IMMEDIATE``), so two processes on one file cannot both
claim a key. Expired rows are deleted by the next claim (claims are rare: one per budget threshold and
window), so the table holds only the claims still in force.
"""

from __future__ import annotations

import sqlite3


def claim(con: sqlite3.Connection, key: str, expires_at: float, now: float) -> bool:
    con.execute("DELETE FROM claims WHERE expires_at <= ?", (now,))
    return con.execute("INSERT OR IGNORE INTO claims VALUES (?, ?)", (key, expires_at)).rowcount == 1

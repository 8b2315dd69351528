"""The SQLite store's schema, versioned: created on open, refused when the file is newer than this code."""

from __future__ import annotations

import sqlite3

from proxy.store import sqlite_histograms, sqlite_ledger

# 2: the ledger's cache-write and raw-usage columns (added in place to a version 1 file)
# 3: the ledger's service_tier column (added in place to a version 1 or 2 file)
# 4: the ledger's analysis columns (context parts, output cap, price version, end user, tags)
# 5: the ledger's charged_tokens column (NULL, read as 0, in the rows already there)
SCHEMA_VERSION = 5

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
CREATE TABLE IF NOT EXISTS ledger ({", ".join(sqlite_ledger.COLUMNS)});
CREATE INDEX IF NOT EXISTS ledger_ts ON ledger (ts);
CREATE INDEX IF NOT EXISTS ledger_team_ts ON ledger (team, ts);
CREATE INDEX IF NOT EXISTS ledger_request_id ON ledger (request_id);
CREATE TABLE IF NOT EXISTS objects (
    kind TEXT NOT NULL, object_id TEXT NOT NULL, team TEXT NOT NULL, provider TEXT NOT NULL,
    created_at REAL NOT NULL, deleted INTEGER NOT NULL, PRIMARY KEY (kind, object_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS objects_created ON objects (created_at);
{sqlite_histograms.TABLE.strip()}
CREATE TABLE IF NOT EXISTS claims (key TEXT PRIMARY KEY, expires_at REAL NOT NULL) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS claims_expiry ON claims (expires_at);
"""


def create_schema(con: sqlite3.Connection) -> None:
    """Inside the opening write transaction: every table and index, and the version row."""
    for statement in _SCHEMA.split(";"):
        if statement.strip():
            con.execute(statement)
    row = con.execute("SELECT MAX(version) FROM schema_version").fetchone()
    if row[0] is None:
        con.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
    elif row[0] > SCHEMA_VERSION:
        raise RuntimeError(f"SQLite store schema version {row[0]} is newer than this quotagate ({SCHEMA_VERSION})")
    else:
        _migrate(con, row[0])


def _migrate(con: sqlite3.Connection, version: int) -> None:
    """The ledger columns a file lacks are added (NULL in its rows), then an older file's version is raised.
    Columns are compared on every open, not versions: a file written by a build of the same version that had
    fewer columns gains them too."""
    have = {r[1] for r in con.execute("PRAGMA table_info(ledger)")}
    for column in sqlite_ledger.COLUMNS:
        if column not in have:
            con.execute(f"ALTER TABLE ledger ADD COLUMN {column}")
    if version < SCHEMA_VERSION:
        con.execute("UPDATE schema_version SET version = ?", (SCHEMA_VERSION,))

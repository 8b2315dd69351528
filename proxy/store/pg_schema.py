"""The PostgreSQL ledger's table, derived from ``LedgerRecord``, and its versioned, forward-only schema.

``ledger``: one column per ``LedgerRecord`` field, in field order (str TEXT, float DOUBLE PRECISION, int
BIGINT, bool BOOLEAN; NOT NULL where the field is not optional), a unique index on ``request_id`` (what
makes a retried or replayed batch land once), and indexes on ``ts`` and ``(team, ts)``.
``ledger_schema_version``: one row, the version the table was last brought to.

Opening brings the table up to date under an advisory lock (replicas starting together serialise here):
created when missing, else every column a newer ``LedgerRecord`` has and the table lacks is added (NULL in
the rows already there; read back as the field's default), then the version is raised. A table whose
version is newer than this code is refused.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import psycopg

from proxy.store.base import LedgerRecord

# 1: the table as LedgerRecord version 2 has it. Raise it when LedgerRecord gains a field (the column is then
# added by the migration below, which compares columns, not versions).
# 2: LedgerRecord version 3's charged_tokens (NULL in the rows already there, read back as 0)
SCHEMA_VERSION = 2
_LOCK = 0x71676C64  # pg_advisory_xact_lock key: "qgld"

_PG_TYPES = {"str": "TEXT", "float": "DOUBLE PRECISION", "int": "BIGINT", "bool": "BOOLEAN"}


def _column(f: dataclasses.Field[Any]) -> tuple[str, str, bool]:
    """(name, PostgreSQL type, NOT NULL) of a field, from its annotation (``int | None``)."""
    parts = [p.strip() for p in str(f.type).split("|")]
    return f.name, _PG_TYPES[parts[0]], "None" not in parts


_DEFS = tuple(_column(f) for f in dataclasses.fields(LedgerRecord))
COLUMNS = tuple(name for name, _, _ in _DEFS)
TYPES = dict((name, pg_type) for name, pg_type, _ in _DEFS)
# a column added to an older table holds NULL in its rows: read back as the field's default
DEFAULTS: dict[str, Any] = {
    f.name: f.default
    for f in dataclasses.fields(LedgerRecord)
    if f.default is not dataclasses.MISSING and f.default is not None
}

CREATE = f"""
CREATE TABLE IF NOT EXISTS ledger (
    {", ".join(f"{name} {pg_type}{' NOT NULL' if required else ''}" for name, pg_type, required in _DEFS)}
)
"""
INDEXES = (
    "CREATE UNIQUE INDEX IF NOT EXISTS ledger_request_id ON ledger (request_id)",
    "CREATE INDEX IF NOT EXISTS ledger_ts ON ledger (ts)",
    "CREATE INDEX IF NOT EXISTS ledger_team_ts ON ledger (team, ts)",
)


class SchemaTooNew(RuntimeError):
    pass


async def ensure_schema(con: psycopg.AsyncConnection[Any], where: str) -> None:
    """Create or migrate the table, in one transaction under the advisory lock; nothing but reads when it is
    up to date already (a reader without CREATE rights opens an up-to-date ledger)."""
    version, have = await _state(con, where)
    if version == SCHEMA_VERSION and have.issuperset(COLUMNS):
        return
    async with con.transaction():
        await con.execute("SELECT pg_advisory_xact_lock(%s)", (_LOCK,))
        await con.execute("CREATE TABLE IF NOT EXISTS ledger_schema_version (version INTEGER NOT NULL)")
        await con.execute(CREATE)
        version, have = await _state(con, where)
        for name in COLUMNS:
            if name not in have:
                await con.execute(f"ALTER TABLE ledger ADD COLUMN {name} {TYPES[name]}")
        for statement in INDEXES:
            await con.execute(statement)
        if version is None:
            await con.execute("INSERT INTO ledger_schema_version VALUES (%s)", (SCHEMA_VERSION,))
        elif version < SCHEMA_VERSION:
            await con.execute("UPDATE ledger_schema_version SET version = %s", (SCHEMA_VERSION,))


async def _state(con: psycopg.AsyncConnection[Any], where: str) -> tuple[int | None, set[str]]:
    """(schema version or None, the ledger's columns); raises SchemaTooNew for a version past this code's."""
    row = await (await con.execute("SELECT to_regclass('ledger_schema_version') IS NOT NULL")).fetchone()
    version = None
    if row is not None and row[0]:
        found = await (await con.execute("SELECT MAX(version) FROM ledger_schema_version")).fetchone()
        version = found[0] if found is not None else None
    if version is not None and version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"ledger: the PostgreSQL ledger at {where} has schema version {version}, "
            f"newer than this quotagate's ({SCHEMA_VERSION})"
        )
    cur = await con.execute(
        "SELECT column_name FROM information_schema.columns "
        "WHERE table_schema = current_schema() AND table_name = 'ledger'"
    )
    return version, {r[0] for r in await cur.fetchall()}

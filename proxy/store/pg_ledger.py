"""The fleet ledger in PostgreSQL (``ledger: postgresql://...``): what ``proxy/ledger.py`` writes to in place
of the store, what ``quotagate usage``, ``keys list``, the admin usage and the pre-count relearning read,
and the analysis commands' ``LedgerDB`` (``fetch`` with ``?`` placeholders).

Writes: one batch per transaction, COPY into a temporary table (one per connection, emptied at commit),
then ``INSERT ... SELECT ... ON CONFLICT (request_id) DO NOTHING``: a batch retried after a lost reply, or
a spill file replayed again after a crash, lands once. COPY over a multi-row INSERT, measured on
PostgreSQL 15 over TCP on one host (20,000 records in batches of 500): COPY + merge 21-27 us per row wall
and 6-9 us of client CPU; psycopg's ``executemany`` (pipelined) 50-54 us and 23-26 us; one 500-row
``INSERT ... VALUES`` (20,500 parameters) 167-171 us and 145 us, nearly all of it psycopg building the
parameters. A batch replayed whole (every row a conflict): COPY 11-20 us per row, executemany 36-53.

Connections: a ``psycopg_pool.AsyncConnectionPool`` (autocommit; each connection checked as it is taken,
so one that died with a restarted server is replaced, not failed on). Opening waits at most a second for
the database: a gateway whose ledger database is down starts, logs it once naming ``ledger:`` (calls then
fail within ``DOWN_WAIT`` while the pool keeps trying to connect in the background), and its records
wait in the ledger's queue and spill files until the database answers (the schema is brought up to date on
the first connection that works). Connection failures surface as ``StoreUnavailable``.
"""

from __future__ import annotations

import asyncio
import logging
import operator
import re
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Self
from urllib.parse import urlsplit

import psycopg
from psycopg.adapt import Loader
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from proxy.analysis.db import Dialect
from proxy.errors import StoreUnavailable
from proxy.store import ledger_sums
from proxy.store.base import LedgerRecord, UsageRow
from proxy.store.end_user_spend import EndUserSpend, SpendBy, top_end_users_sql
from proxy.store.ledger_sums import ChargedSum, sums_of
from proxy.store.pg_schema import COLUMNS, DEFAULTS, TYPES, SchemaTooNew, ensure_schema

log = logging.getLogger("quotagate.ledger")

_ROW = operator.attrgetter(*COLUMNS)
_COLS = ", ".join(COLUMNS)
_TEMP = (
    f"CREATE TEMP TABLE IF NOT EXISTS ledger_in ({', '.join(f'{c} {TYPES[c]}' for c in COLUMNS)}) ON COMMIT DELETE ROWS"
)
_COPY = f"COPY ledger_in ({_COLS}) FROM STDIN"
_MERGE = f"INSERT INTO ledger ({_COLS}) SELECT {_COLS} FROM ledger_in ON CONFLICT (request_id) DO NOTHING"
_USAGE = """
SELECT team, model, COUNT(*),
       CAST(SUM(CASE WHEN charged THEN COALESCE(input_tokens, counted_input, 0) ELSE 0 END) AS BIGINT),
       CAST(SUM(CASE WHEN charged THEN COALESCE(cached_input_tokens, 0) ELSE 0 END) AS BIGINT),
       CAST(SUM(CASE WHEN charged THEN COALESCE(output_tokens, counted_output, 0) ELSE 0 END) AS BIGINT),
       CAST(SUM(CASE WHEN charged THEN COALESCE(reasoning_tokens, 0) ELSE 0 END) AS BIGINT),
       CAST(SUM(cost_micro_usd) AS BIGINT)
FROM ledger WHERE ts >= %s {team} GROUP BY team, model ORDER BY team, model
"""
_SELECT = f"SELECT {_COLS} FROM ledger WHERE ts >= %s {{team}} ORDER BY ts DESC, request_id DESC LIMIT %s"
# a '...' literal or "..." identifier (copied, its % doubled), a ? placeholder, or a lone %
_TOKENS = re.compile(r"'(?:[^']|'')*'|\"(?:[^\"]|\"\")*\"|\?|%")


def placeholders(sql: str) -> str:
    """``?`` placeholders as psycopg's ``%s``; a literal ``%`` as ``%%`` (``?`` inside quotes is left alone)."""

    def one(m: re.Match[str]) -> str:
        token = m.group(0)
        return "%s" if token == "?" else token.replace("%", "%%")

    return _TOKENS.sub(one, sql)


class _Numeric(Loader):
    """NUMERIC (what SUM of BIGINT and AVG return) as int when whole, else float, as SQLite answers."""

    def load(self, data: Any) -> int | float:
        text = bytes(data)
        return int(text) if text.lstrip(b"-").isdigit() else float(text)


async def _configure(con: psycopg.AsyncConnection[Any]) -> None:
    con.adapters.register_loader("numeric", _Numeric)


_LAST_ERROR: dict[str, str] = {}  # conninfo -> why its last connection attempt failed
DOWN_WAIT = 0.25  # seconds a call waits for a connection while the last attempt to connect failed


class _Connection(psycopg.AsyncConnection[Any]):
    """Remembers why a connection attempt failed: a write that finds no connection in time says why."""

    @classmethod
    async def connect(cls, conninfo: str = "", **kwargs: Any) -> Self:
        try:
            conn = await super().connect(conninfo, **kwargs)
        except psycopg.OperationalError as e:
            _LAST_ERROR[conninfo] = " ".join(str(e).split())
            raise
        _LAST_ERROR.pop(conninfo, None)
        return conn


def where(url: str) -> str:
    """host:port/database of a URL, never its password."""
    parts = urlsplit(url)
    return f"{parts.hostname or 'localhost'}:{parts.port or 5432}{parts.path or '/'}"


class PostgresLedger:
    """The ledger table in PostgreSQL: ``write_ledger`` for ``Ledger``, reads, and ``LedgerDB.fetch``."""

    dialect: Dialect = "postgresql"

    def __init__(self, url: str, *, timeout: float = 2.0, max_size: int = 4) -> None:
        self._url = url
        self.where = where(url)
        self._timeout = timeout
        self._max_size = max_size
        self._pool: AsyncConnectionPool[_Connection] | None = None
        self._schema_ok = False
        self._schema_lock = asyncio.Lock()
        self.unavailable: StoreUnavailable | None = None  # why the database did not answer at open()

    async def open(self) -> None:
        """Start the pool; within a second, bring the schema up to date, else note why in ``unavailable``.

        Raises only for a table newer than this code (``SchemaTooNew``)."""
        if self._pool is not None:
            return
        self._pool = AsyncConnectionPool(
            self._url,
            connection_class=_Connection,
            min_size=1,
            max_size=self._max_size,
            open=False,
            timeout=self._timeout,  # waiting for a connection: a down database fails a write this fast
            reconnect_timeout=self._timeout,  # then the next write starts a fresh attempt, with no long backoff
            kwargs={"autocommit": True, "connect_timeout": max(1, round(self._timeout))},
            configure=_configure,
            check=AsyncConnectionPool.check_connection,
            name="quotagate-ledger",
        )
        logging.getLogger("psycopg.pool").setLevel(logging.ERROR)  # each reconnect attempt: ours log once
        await self._pool.open(wait=False)
        try:
            async with self._connection(min(self._timeout, 1.0)):
                self.unavailable = None
        except StoreUnavailable as e:
            self.unavailable = e  # the gateway logs it (ledger_sink.start_sink); a command fails at its first read

    async def close(self) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            await pool.close(timeout=self._timeout)

    async def ping(self) -> None:
        async with self._connection() as con:
            await con.execute("SELECT 1")

    @asynccontextmanager
    async def _connection(self, wait: float | None = None) -> AsyncIterator[_Connection]:
        """A pooled connection; waits up to ``wait`` for one, only DOWN_WAIT while the database is down."""
        if self._pool is None:
            raise StoreUnavailable(f"ledger: the PostgreSQL ledger at {self.where} is not open")
        if wait is None:
            wait = min(self._timeout, DOWN_WAIT) if self._url in _LAST_ERROR else self._timeout
        try:
            async with self._pool.connection(wait) as con:
                if not self._schema_ok:
                    await self._ensure_schema(con)
                yield con
        except psycopg.OperationalError as e:  # connection refused or lost, pool timeout, server shutting down
            detail = str(e).strip() or type(e).__name__
            if isinstance(e, PoolTimeout):
                detail = _LAST_ERROR.get(self._url) or f"no connection within {wait:g}s"
            raise StoreUnavailable(f"ledger: PostgreSQL ledger at {self.where} unavailable: {detail}") from e

    async def _ensure_schema(self, con: psycopg.AsyncConnection[Any]) -> None:
        async with self._schema_lock:
            if not self._schema_ok:
                try:
                    await ensure_schema(con, self.where)
                except SchemaTooNew:
                    log.error("ledger: refusing to write: the PostgreSQL ledger's schema is newer than this code")
                    raise
                self._schema_ok = True

    # writes

    async def write_ledger(self, records: Sequence[LedgerRecord]) -> None:
        """One transaction: the batch COPYed in, merged skipping every request_id already there."""
        if not records:
            return
        rows = [_ROW(r) for r in records]
        async with self._connection() as con, con.transaction():
            await con.execute(_TEMP)
            async with con.cursor() as cur, cur.copy(_COPY) as copy:
                for row in rows:
                    await copy.write_row(row)
            await con.execute(_MERGE)

    # reads

    async def usage(self, since: float, team: str | None = None) -> list[UsageRow]:
        rows = await self._query(_USAGE, since, team)
        return [UsageRow(*row) for row in rows]

    async def ledger(self, since: float, team: str | None = None, limit: int = 1000) -> list[LedgerRecord]:
        rows = await self._query(_SELECT, since, team, limit)
        return [record(row) for row in rows]

    async def top_end_users(self, team: str, since: float, limit: int = 10, by: SpendBy = "cost") -> list[EndUserSpend]:
        """The team's end users with the most spend since ``since`` (proxy/store/end_user_spend.py)."""
        async with self._connection() as con:
            cur = await con.execute(placeholders(top_end_users_sql(by)), [since, team, max(limit, 0)])
            return [EndUserSpend(*row) for row in await cur.fetchall()]

    async def charged_sums(self, since: float, until: float) -> list[ChargedSum]:
        """What the rows in ``[since, until)`` charged, per team, key and model (``ledger_sums``)."""
        return sums_of(await self.fetch(ledger_sums.SQL, (since, until)))

    async def _query(self, sql: str, since: float, team: str | None, *more: Any) -> list[tuple[Any, ...]]:
        params: list[Any] = [since, *([team] if team is not None else []), *more]
        text = sql.format(team="AND team = %s" if team is not None else "")
        async with self._connection() as con:
            cur = await con.execute(text, params)
            return await cur.fetchall()

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """``LedgerDB.fetch``: the rows of ``sql`` (``?`` placeholders; a ``%`` is a literal ``%``)."""
        async with self._connection() as con:
            cur = await con.execute(placeholders(sql), list(params))
            return await cur.fetchall()


def record(row: Sequence[Any]) -> LedgerRecord:
    """A row in ``COLUMNS`` order; NULL in a column added to an older table reads as the field's default."""
    values = {c: (DEFAULTS[c] if v is None and c in DEFAULTS else v) for c, v in zip(COLUMNS, row, strict=True)}
    return LedgerRecord(**values)

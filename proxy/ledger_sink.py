"""Where the ledger is written and read: the store's own table or stream, or the fleet ledger in PostgreSQL
(``ledger: postgresql://...``). Chosen here, once, for the gateway and the CLI alike.

``ledger_sink(settings, store)`` is what ``Ledger`` writes to and what every ledger read (the pre-count
relearning, ``quotagate usage``, ``keys list``'s last use, the admin usage, the top end users of
``GET /v1/usage``) asks. With ``ledger:`` set it is a ``PostgresLedger``, opened and closed on its own;
otherwise the store itself, behind a ``StoreLedger`` whose open and close are the store's owner's business.

``copy_stream(store, sink)``: with a PostgreSQL ledger over a Redis store, the records the stream
``qg:ledger`` holds from before (or from a replica still on an older release) are copied into PostgreSQL
a page at a time, each page trimmed from the stream once written (idempotent by request_id: replicas
starting together copy the same page twice and it lands once). The gateway runs it at startup, in the
background, retrying (every 1 s, doubling up to 30 s) while either database is down.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Protocol

from .pause import pause
from .settings import Settings
from .store.base import LedgerRecord, Store, UsageRow
from .store.end_user_spend import EndUserSpend, SpendBy, top_end_users
from .store.redis import RedisStore
from .store.sqlite import SqliteStore

log = logging.getLogger("quotagate.ledger")
_ALL = 1 << 62  # no limit: every record since the window's start
RETRY_SECONDS = (1.0, 30.0)  # the stream copy's wait after a failed page, doubling from the first to the second


class LedgerReads(Protocol):
    async def usage(self, since: float, team: str | None = None) -> list[UsageRow]: ...
    async def ledger(self, since: float, team: str | None = None, limit: int = 1000) -> list[LedgerRecord]: ...
    async def top_end_users(
        self, team: str, since: float, limit: int = 10, by: SpendBy = "cost"
    ) -> list[EndUserSpend]: ...


class LedgerSink(LedgerReads, Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def write_ledger(self, records: Sequence[LedgerRecord]) -> None: ...


class StoreLedger:
    """The store's own ledger. Opening and closing are left to whoever opened the store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def open(self) -> None:
        pass

    async def close(self) -> None:
        pass

    async def write_ledger(self, records: Sequence[LedgerRecord]) -> None:
        await self.store.write_ledger(records)

    async def usage(self, since: float, team: str | None = None) -> list[UsageRow]:
        return await self.store.usage(since, team)

    async def ledger(self, since: float, team: str | None = None, limit: int = 1000) -> list[LedgerRecord]:
        return await self.store.ledger(since, team, limit)

    async def top_end_users(self, team: str, since: float, limit: int = 10, by: SpendBy = "cost") -> list[EndUserSpend]:
        """SQLite ranks in SQL; memory and Redis from the team's records since ``since`` (Redis: a scan of the
        stream from ``since`` on, as ``usage`` does; a PostgreSQL ``ledger:`` ranks in SQL)."""
        if isinstance(self.store, SqliteStore):
            return await self.store.top_end_users(team, since, limit, by)
        return top_end_users(await self.store.ledger(since, team, limit=_ALL), limit, by)


def ledger_sink(settings: Settings, store: Store) -> LedgerSink:
    """The ledger the settings name (not yet open): ``ledger:`` in PostgreSQL, else the store's."""
    if settings.ledger is None:
        return StoreLedger(store)
    from .store.pg_ledger import PostgresLedger  # psycopg is imported only by those who use it

    return PostgresLedger(settings.ledger)


async def start_sink(sink: LedgerSink) -> None:
    """Open the gateway's sink: a ledger database that does not answer is logged (naming ``ledger:``), never
    fatal; its rows wait in the ledger's queue and spill files."""
    await sink.open()
    down = getattr(sink, "unavailable", None)
    if down is not None:
        log.warning("%s; the gateway starts anyway: ledger rows wait in memory and spill files until it answers", down)


async def copy_stream(store: Store, sink: LedgerSink, *, page: int = 1000) -> int:
    """Copy the Redis ledger stream into a SQL ledger and trim it, a page at a time; the records copied.

    Does nothing unless the store is Redis and the sink is not the store. Retries while either fails."""
    if not isinstance(store, RedisStore) or isinstance(sink, StoreLedger):
        return 0
    copied = 0
    wait = 0.0
    while True:
        try:
            entries = await store.ledger_page(page)
            if not entries:
                break
            await sink.write_ledger([r for _, r in entries])
            await store.trim_ledger(entries[-1][0])
        except Exception as e:
            if not wait:
                log.warning("ledger: copying the Redis ledger stream into the `ledger:` database waits: %s", e)
            wait = min(wait * 2, RETRY_SECONDS[1]) if wait else RETRY_SECONDS[0]
            await pause(wait)
            continue
        wait = 0.0
        copied += len(entries)
    if copied:
        log.warning("ledger: %d records of the Redis ledger stream copied into the `ledger:` database", copied)
    return copied

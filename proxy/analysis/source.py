"""Which ledger the analysis commands read: ``open_ledger_db(settings)``.

``ledger: postgresql://...`` set: the fleet ledger in PostgreSQL (``proxy/store/pg_ledger.PostgresLedger``,
imported only then). Else the store's SQLite file (``store: sqlite:///PATH``). A ``memory://`` or
``redis://`` store keeps no SQL ledger: that is an error saying to set ``ledger: postgresql://...``.
"""

from __future__ import annotations

from ..settings import Settings
from .db import LedgerDB
from .db_sqlite import LedgerUnavailable, SqliteLedgerDB

SQLITE = "sqlite:///"


async def open_ledger_db(settings: Settings) -> LedgerDB:
    """The ledger to read, opened; raises ``LedgerUnavailable`` naming what to configure."""
    if settings.ledger is not None:
        from ..errors import StoreUnavailable
        from ..store.pg_ledger import PostgresLedger

        db = PostgresLedger(settings.ledger)
        try:
            await db.open()
        except StoreUnavailable as e:
            raise LedgerUnavailable(f"cannot reach the ledger database (ledger: in the config): {e}") from e
        return db
    if settings.store.startswith(SQLITE):
        return SqliteLedgerDB(settings.store[len(SQLITE) :])
    kind = settings.store.split("://", 1)[0]
    raise LedgerUnavailable(
        f"the store is {kind}://, which keeps no SQL ledger to analyse; set `ledger: postgresql://...` in the "
        "config (the fleet ledger), or use a sqlite:/// store"
    )

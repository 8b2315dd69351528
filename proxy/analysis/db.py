"""The ledger as the analysis commands read it: one small interface over SQLite and PostgreSQL.

Queries are written once, with ``?`` placeholders and the SQL both databases share; what differs between
the two (placeholders, flooring an epoch to a day) is answered by the ``LedgerDB`` in use, never by a
query of its own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Literal, Protocol

Dialect = Literal["sqlite", "postgresql"]


class LedgerDB(Protocol):
    """A read-only view of the ``ledger`` table (one column per ``LedgerRecord`` field)."""

    dialect: Dialect

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of ``sql`` (``?`` placeholders, translated for the database)."""
        ...

    async def close(self) -> None: ...

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


def day_bucket(dialect: Dialect, column: str) -> str:
    """SQL for the UTC day number (days since 1970-01-01) of an epoch-seconds ``column`` (``ts``), valid in
    ``dialect``: ``day * 86400`` is that day's midnight. SQLite's ``floor()`` needs a build option, so there it
    is a truncating cast, exact for ``ts >= 0``."""
    if dialect == "postgresql":
        return f"CAST(FLOOR({column} / 86400.0) AS BIGINT)"
    return f"CAST({column} / 86400 AS INTEGER)"

"""The SQLite store's ledger table: its columns, the insert that skips a known request_id, usage in SQL.

One column per ``LedgerRecord`` field, in field order; booleans are stored as integers and read back as
``bool``. The table itself is created with the rest of the schema (``sqlite_schema``).
"""

from __future__ import annotations

import dataclasses
import operator
from collections.abc import Sequence
from typing import Any

from proxy.store.base import LedgerRecord

COLUMNS = tuple(f.name for f in dataclasses.fields(LedgerRecord))
_BOOLS = frozenset({"stream", "estimated", "charged"})
_ROW = operator.attrgetter(*COLUMNS)

# A plain index and NOT EXISTS rather than a UNIQUE index: a ledger written before this check may hold
# duplicates, and opening it must not fail (writes are serialised, so the check is exact).
INSERT = (
    f"INSERT INTO ledger ({', '.join(COLUMNS)}) SELECT {', '.join('?' * len(COLUMNS))} "
    "WHERE NOT EXISTS (SELECT 1 FROM ledger WHERE request_id = ?)"
)

USAGE = """
SELECT team, model, COUNT(*),
       SUM(CASE WHEN charged THEN COALESCE(input_tokens, counted_input, 0) ELSE 0 END),
       SUM(CASE WHEN charged THEN COALESCE(cached_input_tokens, 0) ELSE 0 END),
       SUM(CASE WHEN charged THEN COALESCE(output_tokens, counted_output, 0) ELSE 0 END),
       SUM(CASE WHEN charged THEN COALESCE(reasoning_tokens, 0) ELSE 0 END),
       SUM(cost_micro_usd)
FROM ledger WHERE ts >= ? {team} GROUP BY team, model ORDER BY team, model
"""

SELECT = f"SELECT {', '.join(COLUMNS)} FROM ledger WHERE ts >= ? {{team}} ORDER BY ts DESC, rowid DESC LIMIT ?"


def insert_rows(records: Sequence[LedgerRecord]) -> list[tuple[Any, ...]]:
    """The parameters of ``INSERT`` for each record: its columns, then its request_id for the check."""
    return [(*_ROW(r), r.request_id) for r in records]


def record(row: Sequence[Any]) -> LedgerRecord:
    values: dict[str, Any] = {col: (bool(v) if col in _BOOLS else v) for col, v in zip(COLUMNS, row, strict=True)}
    if values.get("charged_tokens") is None:  # a row from before the column (schema 5)
        values["charged_tokens"] = 0
    return LedgerRecord(**values)

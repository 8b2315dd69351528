"""The SQL the analysis commands share, written once for SQLite and PostgreSQL.

What the two databases spell differently is answered here and nowhere else: flooring an epoch to a UTC day
(``day_floor``: ``db.day_bucket`` when present, else the same expression of our own). Placeholders are
``?`` everywhere (``LedgerDB.fetch`` translates them). Only requests that reached the provider (``charged``)
are spend; a row's billed input is the provider's ``input_tokens``, else quotagate's count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import db as _db
from .db import Dialect
from .periods import Period

BILLED_INPUT = "COALESCE(input_tokens, counted_input, 0)"
BILLED_OUTPUT = "COALESCE(output_tokens, counted_output, 0)"

# the sums of a group of charged rows, in the order ``explain.Sums`` reads them: a row that predates the
# input split (NULL input_system) counts its whole billed input as new input, and is counted apart
SUMS = (
    "COUNT(*), SUM(cost_micro_usd), "
    f"SUM({BILLED_INPUT}), SUM(COALESCE(cached_input_tokens, 0)), "
    "SUM(COALESCE(cache_write_5m_tokens, 0)), SUM(COALESCE(cache_write_1h_tokens, 0)), "
    f"SUM({BILLED_OUTPUT}), "
    "SUM(COALESCE(input_system, 0)), SUM(COALESCE(input_tools, 0)), SUM(COALESCE(input_history, 0)), "
    f"SUM(CASE WHEN input_system IS NULL THEN {BILLED_INPUT} ELSE COALESCE(input_new, 0) END), "
    "SUM(CASE WHEN input_system IS NULL THEN 1 ELSE 0 END)"
)
N_SUMS = 12


def _own_day_floor(dialect: Dialect, column: str) -> str:
    if dialect == "postgresql":
        return f"FLOOR({column} / 86400)::bigint"
    return f"CAST({column} / 86400 AS INTEGER)"


def day_floor(dialect: Dialect, column: str) -> str:
    """SQL for the UTC day number (days since the epoch) of an epoch-seconds column."""
    shared: Callable[[Dialect, str], str] | None = getattr(_db, "day_bucket", None)
    return (shared or _own_day_floor)(dialect, column)


def where(period: Period, team: str | None = None, model: str | None = None) -> tuple[str, list[Any]]:
    """``WHERE`` of the charged rows of ``period`` (and of one team, one model), and its parameters."""
    sql = "WHERE charged AND ts >= ? AND ts < ?"
    params: list[Any] = [period.start, period.end]
    if team is not None:
        sql += " AND team = ?"
        params.append(team)
    if model is not None:
        sql += " AND model = ?"
        params.append(model)
    return sql, params


def ints(row: tuple[Any, ...]) -> list[int]:
    """Integers of SQL sums (PostgreSQL's SUM of a bigint is a numeric; a NULL sum is 0)."""
    return [int(v or 0) for v in row]

"""A read-only SQLite ``LedgerDB`` for the report, until the shared one (proxy/analysis/db_sqlite.py) lands."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from .db import Dialect


class SqliteLedgerDB:
    dialect: Dialect = "sqlite"

    def __init__(self, path: str | Path) -> None:
        self._con = sqlite3.connect(f"file:{Path(path)}?mode=ro", uri=True, check_same_thread=False)

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return await asyncio.to_thread(lambda: [tuple(r) for r in self._con.execute(sql, tuple(params))])

    async def close(self) -> None:
        self._con.close()


def sqlite_path(store_url: str) -> Path:
    return Path(unquote(store_url[len("sqlite:///") :].split("?", 1)[0]))

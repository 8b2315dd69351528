"""The SQLite ledger as the analysis commands read it (``db.LedgerDB``): a read-only connection to the store's
file, each query run in a worker thread so that the event loop never waits on the disk.

Read-only (``mode=ro``): analysis never writes, and a gateway writing the same file is not blocked (SQLite in
WAL mode lets readers run beside the writer). One connection, one query at a time (a lock): the commands
run their few aggregate queries one after another anyway.
"""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

from .db import Dialect


class LedgerUnavailable(RuntimeError):
    """The ledger cannot be read; the message says which file or database, and why."""


class SqliteLedgerDB:
    dialect: Dialect = "sqlite"

    def __init__(self, path: str | Path, *, busy_timeout: float = 5.0) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise LedgerUnavailable(f"no ledger at {self.path} (no gateway has written to this store yet)")
        uri = f"file:{quote(str(self.path.resolve()))}?mode=ro"
        try:
            self._con = sqlite3.connect(uri, uri=True, timeout=busy_timeout, check_same_thread=False)
        except sqlite3.Error as e:
            raise LedgerUnavailable(f"cannot open the ledger {self.path}: {e}") from e
        self._lock = threading.Lock()

    def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        with self._lock:
            try:
                return [tuple(r) for r in self._con.execute(sql, tuple(params)).fetchall()]
            except sqlite3.OperationalError as e:
                raise LedgerUnavailable(f"cannot read the ledger {self.path}: {e}") from e

    async def fetch(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        return await asyncio.to_thread(self._fetch, sql, params)

    async def close(self) -> None:
        with self._lock:
            self._con.close()

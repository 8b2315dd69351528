"""Stores: the contract (``base``) and its three implementations, chosen by URL.

memory://                          MemoryStore (one process, not durable)
sqlite:///relative/path.db         SqliteStore (one host, several processes); sqlite:////abs/path.db
redis://[:password@]host:port/db   RedisStore (shared); rediss:// for TLS
"""

from __future__ import annotations

import time
from collections.abc import Callable
from urllib.parse import unquote, urlsplit

from proxy.store.base import (
    Admitted,
    CounterValue,
    Denied,
    Hold,
    KeyRecord,
    Lease,
    LedgerRecord,
    Store,
    UsageRow,
    hash_tag,
)
from proxy.store.memory import MemoryStore
from proxy.store.redis import RedisStore
from proxy.store.sqlite import SqliteStore

__all__ = [
    "Admitted",
    "CounterValue",
    "Denied",
    "Hold",
    "KeyRecord",
    "Lease",
    "LedgerRecord",
    "MemoryStore",
    "RedisStore",
    "SqliteStore",
    "Store",
    "UsageRow",
    "hash_tag",
    "open_store",
]


def open_store(url: str, *, clock: Callable[[], float] = time.time, ledger_stream_max_len: int | None = None) -> Store:
    """Build (not yet open) the store a URL names; ``await store.open()`` before use.

    ``ledger_stream_max_len``: the Redis store's ledger stream is capped at about this many entries."""
    scheme = urlsplit(url).scheme.lower()
    if scheme == "memory":
        return MemoryStore(clock=clock)
    if scheme == "sqlite":
        prefix = "sqlite:///"
        if not url.lower().startswith(prefix) or len(url) == len(prefix):
            raise ValueError(
                f"invalid SQLite store URL {url!r}: expected sqlite:///relative/path.db or sqlite:////abs/path.db"
            )
        return SqliteStore(unquote(url[len(prefix) :].split("?", 1)[0]), clock=clock)
    if scheme in ("redis", "rediss"):
        return RedisStore(url, clock=clock, ledger_max_len=ledger_stream_max_len)
    raise ValueError(
        f"unknown store URL scheme {scheme!r} in {url!r}: expected memory://, sqlite:///path or redis://host:port/db"
    )

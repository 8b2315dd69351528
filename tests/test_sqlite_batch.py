"""The SQLite store's group commit: one op's own error fails that op alone, and no waiter ever hangs."""

from __future__ import annotations

import asyncio
from pathlib import Path

from proxy.store.base import Admitted, Hold, Lease
from proxy.store.sqlite import SqliteStore


async def test_an_op_that_cannot_be_encoded_fails_alone_and_its_batch_mates_commit(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "batch.db")
    await store.open()
    try:
        ok = Lease("a", "{t}", (Hold("{t}:k", -1, 5, 0.0),), 1e12)
        huge = Lease("b", "{t}", (Hold("{t}:k", -1, 2**70, 0.0),), 1e12)  # beyond SQLite's and JSON's 64 bits
        got = await asyncio.wait_for(asyncio.gather(store.reserve(ok), store.reserve(huge), return_exceptions=True), 10)
        assert isinstance(got[0], Admitted)
        assert isinstance(got[1], TypeError)
        assert (await store.counters(["{t}:k"]))["{t}:k"].reserved == 5
        assert await store.settle("a", "{t}", {"{t}:k": 3})
        assert (await store.counters(["{t}:k"]))["{t}:k"].used == 3
    finally:
        await store.close()

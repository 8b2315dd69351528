"""One record per request, written off the hot path in batches.

``append`` only queues; a background task flushes every ``flush_seconds`` (or sooner when a batch is
full) with one store call. A failed flush keeps its batch and retries, so a store outage loses nothing;
``close`` flushes whatever is left (graceful shutdown, after in-flight requests have settled).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from .errors import StoreUnavailable
from .store.base import LedgerRecord, Store

log = logging.getLogger("quotagate.ledger")
BATCH = 500


class Ledger:
    def __init__(self, store: Store, *, flush_seconds: float = 0.2) -> None:
        self._store = store
        self._flush_seconds = flush_seconds
        self._queue: deque[LedgerRecord] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="quotagate-ledger")

    def append(self, record: LedgerRecord) -> None:
        self._queue.append(record)
        if len(self._queue) >= BATCH:
            self._wake.set()

    @property
    def pending(self) -> int:
        return len(self._queue)

    async def flush(self) -> None:
        while self._queue:
            batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
            try:
                await self._store.write_ledger(batch)
            except StoreUnavailable:
                self._queue.extendleft(reversed(batch))  # keep order; retried on the next tick
                raise

    async def _run(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._flush_seconds)
            self._wake.clear()
            try:
                await self.flush()
            except StoreUnavailable as e:
                log.warning("ledger flush failed, %d records kept for retry: %s", len(self._queue), e)
            except Exception:  # never let the writer die: the records stay queued
                log.exception("ledger flush failed; %d records kept for retry", len(self._queue))

    async def close(self, *, attempts: int = 20) -> None:
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
        for _ in range(attempts):
            try:
                await self.flush()
                return
            except StoreUnavailable:
                await asyncio.sleep(0.25)
        if self._queue:
            log.error("ledger: %d records could not be written at shutdown", len(self._queue))

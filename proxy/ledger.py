"""One record per request, written off the hot path in batches; a record is never dropped.

Flow::

    append(record)   O(1), never blocks or raises: onto the in-memory queue or, once that holds
                     ``queue_max`` records, onto the overflow, which the spill task appends to this
                     process's spill file every ``flush_seconds`` (in a thread, fsynced)
    writer task      every ``flush_seconds`` (sooner when a batch is full): the queue, BATCH records per
                     store call; then the spill files, one group per call, between queue flushes
    a record the store cannot hold (a data error: an integer past 64 bits...) is found by bisecting its
                     batch and set aside in ``ledger-rejected-<owner>.jsonl`` (cause ``rejected``)
    a failed write   whatever else the error, the batch goes back to the head of the queue, whole and in order,
                     and is retried as the same batch on the next tick; logged on the first failure of a
                     streak (and when its cause changes) and on recovery, counted in
                     ``quotagate_ledger_write_errors_total{cause}``
    start()          claims the spill files no live process holds (left by a crash, or by a shutdown while
                     the store was down) and replays them in the background
    close()          writes what is left while the store answers (up to ``close_seconds``), spills the rest

Spill files (``ledger_spill.py``): one per process, append-only JSONL under its own ``flock``; claimed
by lock + rename, replayed a group at a time, deleted once every group is in the store.

Exactly once: a batch retried after an ambiguous failure (the store wrote it, the reply was lost) or a file
replayed again after a crash between "written" and "deleted" reaches the store twice. The SQLite store
skips a request_id it already holds; the Redis store skips a batch (the same request ids in the same order)
it wrote within ``LEDGER_DEDUP_MS`` (6 h), past that it is at least once. Limits: records still in memory
die with the process on SIGKILL or OOM-kill; if the store and the spill dir both fail until the end of
``close``, what is left is logged as lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import secrets
import sqlite3
import time
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol, TypeVar

from . import ledger_spill as spill
from .errors import StoreUnavailable
from .ledger_spill import BATCH, SpillFile
from .ledger_spill import spill_dir as spill_dir  # where the app configures it
from .metrics import Metrics
from .pause import pause
from .store.base import LedgerRecord

log = logging.getLogger("quotagate.ledger")
_T = TypeVar("_T")


def error_cause(err: BaseException) -> str:
    """The bounded ``cause`` of a failed write: store_unavailable, busy, disk_full, constraint, oom, other.

    The same for every store and the PostgreSQL ledger: a database that is down is store_unavailable."""
    chain: list[BaseException] = []
    e: BaseException | None = err
    while e is not None and len(chain) < 8:
        chain.append(e)
        e = e.__cause__ or e.__context__
    # the store's own message, not its prefix (a path may say anything); sqlite3 adds its error name
    text = " ".join(f"{getattr(x, 'sqlite_errorname', '')} {_message(x)}" for x in chain).lower()
    # PostgreSQL's SQLSTATE (psycopg errors): 53200 out of memory, 53100 disk full, 23xxx integrity, and
    # lock/serialization failures; any other psycopg OperationalError (connection refused or lost, the
    # server shutting down or starting up, the pool's timeout) is the database being unavailable
    states = {str(getattr(x, "sqlstate", None) or "") for x in chain}
    if any(type(x).__name__ == "OutOfMemoryError" for x in chain) or "maxmemory" in text or "53200" in states:
        return "oom"
    if "disk is full" in text or "53100" in states or any(_enospc(x) for x in chain):
        return "disk_full"
    if "locked" in text or "busy" in text or states & _PG_BUSY:
        return "busy"
    integrity = any(s.startswith("23") for s in states)
    if integrity or any(isinstance(x, sqlite3.IntegrityError) for x in chain) or "constraint" in text:
        return "constraint"
    if any(isinstance(x, StoreUnavailable) or _pg_operational(x) for x in chain):
        return "store_unavailable"
    return "other"


_PG_BUSY = frozenset({"40001", "40P01", "55P03", "57014"})  # serialization, deadlock, lock not available, timeout


def _pg_operational(err: BaseException) -> bool:
    """A psycopg OperationalError (by its class, without importing psycopg on every gateway's start)."""
    return any(c.__name__ == "OperationalError" and c.__module__.startswith("psycopg") for c in type(err).__mro__)


def _enospc(err: BaseException) -> bool:
    return isinstance(err, OSError) and err.errno == errno.ENOSPC


def _message(err: BaseException) -> str:
    text = str(err)
    return text.partition(" unavailable: ")[2] or text


class LedgerWriter(Protocol):
    """What the ledger writes to: a store, or the PostgreSQL ledger (``ledger:``, ``proxy/ledger_sink.py``)."""

    async def write_ledger(self, records: Sequence[LedgerRecord]) -> None: ...


class _Streak:
    """Logs the first failure of a run (and a change of cause) and the recovery, never each retry."""

    def __init__(self, what: str) -> None:
        self._what = what
        self.cause: str | None = None
        self._failures = 0
        self._since = 0.0

    def failed(self, cause: str, err: BaseException, waiting: int) -> None:
        self._failures += 1
        if cause == self.cause:
            return
        if self.cause is None:
            self._since = time.monotonic()
        self.cause = cause
        log.warning("%s failed (%s): %s; %d records kept, retrying", self._what, cause, err, waiting)

    def ok(self, waiting: int) -> None:
        if self.cause is None:
            return
        log.warning(
            "%s recovered after %d failed attempts in %.1fs; %d records waiting are being written",
            self._what,
            self._failures,
            time.monotonic() - self._since,
            waiting,
        )
        self.cause, self._failures = None, 0


class Ledger:
    """The request ledger's writer: queue, store batches, spill files. See the module docstring."""

    def __init__(
        self,
        store: LedgerWriter,
        *,
        flush_seconds: float = 0.2,
        queue_max: int = 100_000,
        spill_dir: str | Path = "data",
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._flush_seconds = flush_seconds
        self._queue_max = queue_max
        self._dir = Path(spill_dir)
        self._metrics = metrics
        self._owner = f"{os.getpid()}-{secrets.token_hex(6)}"
        self._replays = 0
        self._queue: deque[LedgerRecord] = deque()
        self._head: list[LedgerRecord] = []  # the batch that failed last: retried first, whole
        self._writing = 0  # records of the batch being written
        self._spilling = 0  # overflow records being appended to the spill file
        self._overflow: list[LedgerRecord] = []  # past queue_max: the spill task appends it to _active
        self._active: SpillFile | None = None  # this process's own spill file
        self._claimed: deque[SpillFile] = deque()  # spill files being replayed into the store
        self._files = asyncio.Lock()  # _active is created, appended to and rotated under it
        self._wake = asyncio.Event()
        self._spill_wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._closing = False
        self._writes = _Streak("ledger store write")
        self._disk = _Streak(f"ledger spill file I/O in {self._dir}")

    def start(self) -> None:
        self._claimed.extend(spill.claim(self._dir, self._replay_path))  # a glob and a few renames, at boot
        if self._claimed:
            log.warning("ledger: replaying %d spill files left in %s", len(self._claimed), self._dir)
        self._tasks = [
            asyncio.create_task(self._run(), name="quotagate-ledger"),
            asyncio.create_task(self._spill_loop(), name="quotagate-ledger-spill"),
        ]

    def append(self, record: LedgerRecord) -> None:
        """Queue one record: O(1), never blocks, never raises."""
        if len(self._queue) + len(self._head) + self._writing < self._queue_max:
            self._queue.append(record)
            if len(self._queue) >= BATCH:
                self._wake.set()
        else:
            self._overflow.append(record)
            if len(self._overflow) >= BATCH:
                self._spill_wake.set()

    @property
    def pending(self) -> int:
        """Records not yet in the store: queued, overflowing or in spill files."""
        spilled = sum(f.records for f in self._claimed) + (self._active.records if self._active else 0)
        memory = len(self._queue) + len(self._head) + self._writing + len(self._overflow) + self._spilling
        return memory + spilled

    async def flush(self) -> None:
        """Write every queued record. A failed batch goes back to the head, whole; the error is raised."""
        while self._head or self._queue:
            if self._head:
                batch, self._head = self._head, []
            else:
                batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
            self._writing = len(batch)
            try:
                await self._write(batch)
            except BaseException:
                self._head = batch
                raise
            finally:
                self._writing = 0

    async def close(self, *, close_seconds: float = 5.0) -> None:
        """Stop; write what is left while the store answers, for up to ``close_seconds``; spill the rest.

        Spill files stay for the next process to replay: their locks are released here."""
        self._closing = True
        self._wake.set()
        self._spill_wake.set()
        for task in self._tasks:
            with contextlib.suppress(Exception):  # they catch everything; never let a bug lose the queue
                await task
        self._tasks = []
        self._queue.extend(self._overflow)
        self._overflow = []
        loop = asyncio.get_running_loop()
        until = loop.time() + close_seconds
        written = await self._tick(until)
        while not written and loop.time() < until:
            await asyncio.sleep(min(0.25, max(until - loop.time(), 0.0)))
            written = await self._tick(until)
        groups = [self._head] if self._head else []
        groups += spill.chunks(list(self._queue))
        self._head = []
        self._queue.clear()
        if groups:
            try:
                await self._spill(groups)
            except Exception:
                lost = sum(map(len, groups))
                log.error(
                    "ledger: %d records lost at shutdown: the store and the spill dir %s both failed", lost, self._dir
                )
        await self._release()

    # the writer

    async def _run(self) -> None:
        for f in list(self._claimed):
            with contextlib.suppress(OSError):
                f.records = await asyncio.to_thread(spill.count_lines, f.path)
        while not self._closing:
            if self._writes.cause is not None:
                await pause(self._flush_seconds)  # a full queue must not turn retries into a busy loop
            else:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._flush_seconds)
            self._wake.clear()
            await self._tick()

    async def _tick(self, until: float | None = None) -> bool:
        """The queue, then the spill files a group at a time between queue flushes; never raises.

        Returns False when a write failed (the records are kept). Replay stops at ``until`` (loop time),
        or when closing if no ``until`` is given."""
        loop = asyncio.get_running_loop()
        try:
            while True:
                await self.flush()
                if self._active is not None and self._active.records and not self._claimed:
                    await self._rotate()
                stop = self._closing if until is None else loop.time() >= until
                if not self._claimed or stop:
                    return True
                await self._replay_one()
        except Exception:  # counted and logged once per streak by _write / _disk_op
            return False
        finally:
            self._gauge()

    async def _write(self, batch: list[LedgerRecord]) -> None:
        try:
            await self._store.write_ledger(batch)
        except Exception as e:
            cause = error_cause(e)
            if cause == "other" and spill.is_data_error(e):
                await self._isolate(batch, e)  # the records the store can hold are written, the others set aside
                return
            if self._metrics is not None:
                self._metrics.ledger_write_errors.labels(cause).inc()
            self._writes.failed(cause, e, self.pending)
            raise
        self._writes.ok(self.pending)

    async def _isolate(self, batch: list[LedgerRecord], err: BaseException) -> None:
        """Bisect a batch the store refused for a record's data; set aside each record that fails alone."""
        if len(batch) == 1:
            path = await self._disk_op(spill.set_aside, self._dir, self._owner, batch[0], err)
            if self._metrics is not None:
                self._metrics.ledger_write_errors.labels("rejected").inc()
            log.error(
                "ledger: record %s set aside in %s: the store cannot hold it (%s)", batch[0].request_id, path, err
            )
            return
        for half in (batch[: len(batch) // 2], batch[len(batch) // 2 :]):
            try:
                await self._store.write_ledger(half)
            except Exception as e:
                if not spill.is_data_error(e):
                    raise
                await self._isolate(half, e)

    async def _replay_one(self) -> None:
        f = self._claimed[0]
        records, end, lines, eof = await self._disk_op(spill.read_group, f.path, f.offset)
        if records:
            await self._write(records)
        f.offset, f.records = end, max(f.records - lines, 0)
        if eof:
            await self._disk_op(spill.delete, f)
            self._claimed.popleft()

    async def _rotate(self) -> None:
        """Hand this process's spill file over to the replay; the spill task starts a new one."""
        async with self._files:
            f = self._active
            if f is None or not f.records:
                return
            await self._disk_op(spill.rename, f, self._replay_path())
            self._active = None
            self._claimed.append(f)

    # the spill task

    async def _spill_loop(self) -> None:
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._spill_wake.wait(), self._flush_seconds)
            self._spill_wake.clear()
            if self._overflow:
                records, self._overflow = self._overflow, []
                self._spilling = len(records)
                try:
                    await self._spill(spill.chunks(records))
                except Exception:
                    self._overflow[:0] = records  # kept in memory, in order; retried on the next tick
                finally:
                    self._spilling = 0

    async def _spill(self, groups: list[list[LedgerRecord]]) -> None:
        async with self._files:
            if self._active is None:
                self._active = await self._disk_op(spill.create, self._dir, self._owner)
            await self._disk_op(spill.append, self._active, groups)
        self._gauge()

    async def _disk_op(self, fn: Callable[..., _T], *args: Any) -> _T:
        try:
            result = await asyncio.to_thread(fn, *args)
        except Exception as e:
            self._disk.failed(error_cause(e), e, self.pending)
            raise
        self._disk.ok(self.pending)
        return result

    async def _release(self) -> None:
        async with self._files:
            active, self._active = self._active, None
            files = [*self._claimed, *([active] if active else [])]
            self._claimed.clear()
        if active is not None and active.size == 0:
            with contextlib.suppress(OSError):
                active.path.unlink()  # created, never written to
        waiting = sum(f.records for f in files)
        for f in files:
            os.close(f.fd)
        if waiting:
            log.warning("ledger: %d records wait in spill files in %s for the next start", waiting, self._dir)
        self._gauge(waiting)

    def _replay_path(self) -> Path:
        self._replays += 1
        return self._dir / f"ledger-replay-{self._owner}-{self._replays}.replaying"

    def _gauge(self, value: int | None = None) -> None:
        if self._metrics is not None:
            self._metrics.ledger_queue_depth.set(self.pending if value is None else value)

"""Calls issued in one event-loop turn, sent to the store together: the SQLite and Redis stores' batching.

Flow::

    submit(op)     appends the op and its caller's future to the open batch; the first op of a turn
                   schedules the flush (``call_soon``), so every op issued before the loop next runs
                   rides in the same batch
    flush          hands the batch to the store's sender, which answers one outcome per op, in order,
                   right away (the SQLite store on the loop's own connection) or as an awaitable (the
                   Redis pipeline, the SQLite thread), awaited in a task this helper tracks
    outcomes       an op's result, or the exception that op alone raised (the sender returns it, not
                   raises it); an exception the sender raises fails every op of the batch

Nothing leaves a caller waiting: a sender that raises anything (a bug, a cancelled task at shutdown)
fails every future still open, with ``StoreUnavailable`` for what is not an ``Exception``. A caller that
has gone (its future cancelled) is skipped when outcomes are handed out; ``abandoned`` lets a sender
avoid work for it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

from proxy.errors import StoreUnavailable

OpT = TypeVar("OpT")


class Batch(Generic[OpT]):
    """The ops of one loop turn, in order, beside their callers' futures (two lists: no tuple per op)."""

    __slots__ = ("_futures", "ops")

    def __init__(self) -> None:
        self.ops: list[OpT] = []
        self._futures: list[asyncio.Future[Any]] = []

    def abandoned(self, i: int) -> bool:
        """Whether op ``i``'s caller has stopped waiting (its future was cancelled)."""
        return self._futures[i].done()

    def resolve(self, outcomes: list[Any]) -> None:
        """Each caller gets its own outcome: a result, or the exception its op raised."""
        for fut, outcome in zip(self._futures, outcomes, strict=True):
            if fut.done():
                continue
            if isinstance(outcome, BaseException):
                fut.set_exception(outcome)
            else:
                fut.set_result(outcome)

    def fail(self, err: BaseException) -> None:
        """Every caller still waiting gets ``err`` (``StoreUnavailable`` when it is not an ``Exception``)."""
        if not isinstance(err, Exception):  # a future cannot carry CancelledError or KeyboardInterrupt
            err = StoreUnavailable(str(err) or "shutting down")
        for fut in self._futures:
            if not fut.done():
                fut.set_exception(err)


# A list of outcomes now, or an awaitable of them (awaited in a task)
Sender = Callable[[Batch[OpT]], "list[Any] | Awaitable[list[Any]]"]


class TurnBatcher(Generic[OpT]):
    """Group the ops issued in one event-loop turn and hand them to ``send`` as one batch."""

    __slots__ = ("_open", "_scheduled", "_send", "_tasks")

    def __init__(self, send: Sender[OpT]) -> None:
        self._send = send
        self._open: Batch[OpT] = Batch()
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    def submit(self, op: OpT) -> asyncio.Future[Any]:
        """Queue ``op`` for this turn's batch; the future answers its outcome. Call from the event loop."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Any] = loop.create_future()
        batch = self._open
        batch.ops.append(op)
        batch._futures.append(fut)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return fut

    async def wait(self) -> None:
        """Until every batch handed to an asynchronous send has its outcomes (at close)."""
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    def _flush(self) -> None:
        self._scheduled = False
        batch = self._open
        if not batch.ops:
            return
        self._open = Batch()
        try:
            outcomes = self._send(batch)
            if isinstance(outcomes, list):
                batch.resolve(outcomes)
                return
        except BaseException as e:
            batch.fail(e)
            if not isinstance(e, Exception):
                raise
            return
        task = asyncio.get_running_loop().create_task(_finish(batch, outcomes))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)


async def _finish(batch: Batch[Any], outcomes: Awaitable[list[Any]]) -> None:
    try:
        batch.resolve(await outcomes)
    except BaseException as e:
        batch.fail(e)
        if not isinstance(e, Exception):
            raise

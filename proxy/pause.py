"""The pause between rounds of a background loop (accounting, seeding, drift, notifications, the ledger).

A loop that catches a store's errors to try again can outlive its own cancellation when a library swallows
the CancelledError: redis-py can (redis/redis-py#2028; seen with 8.2 in a reap cancelled at shutdown, which
then never ended). Python 3.11 keeps the request on the task (``Task.cancelling()``), so the pause ends the
loop on its behalf before sleeping again.
"""

from __future__ import annotations

import asyncio


async def pause(seconds: float) -> None:
    """Sleep ``seconds``; first raise CancelledError if this task was asked to stop meanwhile."""
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError
    await asyncio.sleep(seconds)

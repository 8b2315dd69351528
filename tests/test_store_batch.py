"""The stores' turn batcher: one batch per event-loop turn, each caller's own outcome, no waiter ever hangs."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis

from proxy.errors import StoreUnavailable
from proxy.store import RedisStore
from proxy.store.base import Admitted, Hold, Lease
from proxy.store.batch import Batch, TurnBatcher


async def test_calls_of_one_turn_form_one_batch_and_each_gets_its_own_outcome() -> None:
    batches: list[list[int]] = []

    def send(batch: Batch[int]) -> list[Any]:
        batches.append(list(batch.ops))
        return [ValueError(op) if op < 0 else op * 10 for op in batch.ops]

    batcher: TurnBatcher[int] = TurnBatcher(send)
    got = await asyncio.gather(*(batcher.submit(op) for op in (1, -2, 3)), return_exceptions=True)
    assert batches == [[1, -2, 3]]
    assert got[0] == 10 and got[2] == 30
    assert isinstance(got[1], ValueError)
    assert await batcher.submit(4) == 40  # a later turn: a batch of its own
    assert batches[-1] == [4]


@pytest.mark.parametrize("asynchronous", [False, True])
async def test_a_sender_that_raises_fails_every_caller(asynchronous: bool) -> None:
    async def later() -> list[Any]:
        raise RuntimeError("broken")

    def send(batch: Batch[int]) -> Any:
        if asynchronous:
            return later()
        raise RuntimeError("broken")

    batcher: TurnBatcher[int] = TurnBatcher(send)
    got = await asyncio.wait_for(asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True), 5)
    assert [type(e) for e in got] == [RuntimeError, RuntimeError]


async def test_a_sender_cancelled_at_shutdown_fails_its_callers_as_unavailable() -> None:
    started = asyncio.Event()

    async def forever() -> list[Any]:
        started.set()
        await asyncio.Event().wait()
        return []

    batcher: TurnBatcher[int] = TurnBatcher(lambda batch: forever())
    waiter = asyncio.gather(batcher.submit(1), batcher.submit(2), return_exceptions=True)
    await started.wait()
    for task in list(batcher._tasks):
        task.cancel()
    got = await asyncio.wait_for(waiter, 5)
    assert [type(e) for e in got] == [StoreUnavailable, StoreUnavailable]


async def test_a_caller_that_left_is_skipped_and_the_others_are_answered() -> None:
    seen: list[bool] = []

    async def send(batch: Batch[int]) -> list[Any]:
        await asyncio.sleep(0)
        seen.extend(batch.abandoned(i) for i in range(len(batch.ops)))
        return list(batch.ops)

    batcher: TurnBatcher[int] = TurnBatcher(send)
    gone, kept = batcher.submit(1), batcher.submit(2)
    gone.cancel()
    assert await kept == 2
    await batcher.wait()
    assert seen == [True, False]


async def test_redis_pipeline_reloads_scripts_a_restarted_redis_forgot(clean_redis: str) -> None:
    store = RedisStore(clean_redis)
    await store.open()
    try:
        redis.Redis.from_url(clean_redis).script_flush()  # what a restart does to the script cache
        leases = [Lease(f"l{i}", "{t}", (Hold("{t}:k", -1, 5, 0.0),), 1e12) for i in range(5)]
        got = await asyncio.wait_for(asyncio.gather(*(store.reserve(lease) for lease in leases)), 10)
        assert all(isinstance(g, Admitted) for g in got)
        assert (await store.counters(["{t}:k"]))["{t}:k"].reserved == 25
        redis.Redis.from_url(clean_redis).script_flush()
        settled = await asyncio.gather(*(store.settle(lease.id, "{t}", {"{t}:k": 1}) for lease in leases))
        assert settled == [True] * 5
        assert (await store.counters(["{t}:k"]))["{t}:k"].used == 5
    finally:
        await store.close()

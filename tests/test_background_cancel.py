"""Background loops end when cancelled, even when redis-py swallows the CancelledError (redis/redis-py#2028:
a reap cancelled at the wrong moment returned normally, and the gateway's shutdown waited for ever on its
accounting loop). ``proxy/pause.py`` ends the loop on the task's behalf."""

from __future__ import annotations

import asyncio

from proxy.pause import pause
from proxy.store.redis import RedisStore


async def test_a_store_loop_cancelled_at_any_moment_ends(clean_redis: str) -> None:
    store = RedisStore(clean_redis)
    await store.open()
    rounds = 0

    async def loop() -> None:
        nonlocal rounds
        while True:
            await store.reap("{t}", 0.0)
            rounds += 1
            await pause(0)

    try:
        for i in range(200):  # delays across a round trip: some land inside redis-py's connection handling
            task = asyncio.create_task(loop())
            await asyncio.sleep(i * 0.00005)
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=5)
            assert done, f"the loop outlived its cancellation (delay {i * 0.00005:.5f}s)"
            assert task.cancelled()
    finally:
        await store.close()
    assert rounds > 0


async def test_pause_sleeps_when_nobody_asked_to_stop() -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await pause(0.05)
    assert loop.time() - t0 >= 0.04

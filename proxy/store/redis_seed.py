"""The Redis store's seeding after a store loss (proxy/seed.py): part of ``RedisStore``, kept in its own
module for the store module's size.

``qg:{tag}:seeded`` (one per hash tag: ``{team}``, ``{qg-org}``, each in its counters' cluster slot) is written
by the first seed of the tag and never expires, so a Redis that lost its data (restarted empty, FLUSHALL, a
replica promoted before it had synced) is known by a missing marker. ``seed`` is ``lua/seed_v1.lua``: one
script per tag that checks and sets the marker and raises the tag's counters to the ledger's values, so
replicas seeding at once write once and a replay never adds.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from proxy.store.redis import GRACE_MS, RedisStore, counter_key
from proxy.store.redis_scripts import guard


def marker_key(hash_tag: str) -> str:
    return f"qg:{hash_tag}:seeded"


async def unseeded(store: RedisStore, hash_tags: Iterable[str]) -> list[str]:
    """The hash tags whose seed marker is missing (one pipelined EXISTS each)."""
    tags = sorted(set(hash_tags))
    if not tags:
        return []
    with guard(store._where):
        async with store._r.pipeline(transaction=False) as pipe:
            for t in tags:
                pipe.exists(marker_key(t))
            found = await pipe.execute()
    return [t for t, n in zip(tags, found, strict=True) if not int(n)]


async def seed(
    store: RedisStore, hash_tag: str, values: Mapping[str, int], expires_at: Mapping[str, float], marker: str
) -> int | None:
    """Raise each counter of ``hash_tag`` to at least ``values[key]`` and set its marker, unless the marker
    exists already: None then (seeded already), else how many counters were raised."""
    keys: Sequence[str] = sorted(values)
    args: list[str | int | bytes] = [round(store._clock() * 1000), GRACE_MS, marker]
    for k in keys:
        args += [values[k], round(expires_at.get(k, 0.0) * 1000)]
    result = await store._script("seed_v1", [marker_key(hash_tag), *(counter_key(k) for k in keys)], args)
    return None if int(result[0]) == 0 else int(result[1])

"""The Redis store's histograms (proxy/observed.py), mixed into ``RedisStore``::

    qg:h:<key>   HASH bucket index -> count, exp (expiry ms)   the caller's key starts with {tag}

An add is one script (``lua/histogram_add_v1.lua``: expire, add, set the expiry, in one atomic step); reads
are one pipeline of HGETALL. As for counters, expiry is decided by the injected clock (``exp``), and the
Redis TTL (expiry - now + grace) is garbage collection only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from proxy.store.redis_scripts import Args, guard
from proxy.store.rules import is_expired

if TYPE_CHECKING:
    import redis.asyncio as aioredis

_GRACE_MS = 60_000


def histogram_key(key: str) -> str:
    return f"qg:h:{key}"


class RedisHistograms:
    if TYPE_CHECKING:  # provided by RedisStore
        _where: str
        _clock: Callable[[], float]

        @property
        def _r(self) -> aioredis.Redis: ...

        def _script(self, name: str, keys: Sequence[str], args: Args) -> Awaitable[Any]: ...

    async def add_histogram(self, key: str, increments: Mapping[int, int], expires_at: float) -> None:
        if not increments:
            return
        args: list[str | int | bytes] = [round(self._clock() * 1000), round(expires_at * 1000), _GRACE_MS]
        for b, n in increments.items():
            args += [b, n]
        await self._script("histogram_add_v1", [histogram_key(key)], args)

    async def histograms(self, keys: Sequence[str]) -> dict[str, dict[int, int]]:
        unique = list(dict.fromkeys(keys))
        if not unique:
            return {}
        now = self._clock()
        with guard(self._where):
            async with self._r.pipeline(transaction=False) as pipe:
                for key in unique:
                    pipe.hgetall(histogram_key(key))
                rows: list[dict[bytes, bytes]] = await pipe.execute()
        out: dict[str, dict[int, int]] = {}
        for key, fields in zip(unique, rows, strict=True):
            exp = int(fields.get(b"exp", b"0"))
            live = bool(fields) and not is_expired(exp / 1000, now)
            out[key] = {int(b): int(n) for b, n in fields.items() if b != b"exp"} if live else {}
        return out

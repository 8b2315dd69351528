"""The Redis store's Lua scripts: loaded with the shared counter library, called by name, and the
per-request ones pipelined.

Every script's text is ``lua/lib_counters.lua`` (the counter rule of ``rules.py``, in Lua) followed by
``lua/<name>.lua``. The scripts of ``SCRIPTS`` are registered when the store opens, any other on first use.

Every reserve and settle issued in one event-loop turn goes out in one pipeline (``batch.py``): one round
trip and one socket write for N scripts, each still atomic on its own. A lone call goes out by itself
through redis-py's script object (EVALSHA, then SCRIPT LOAD and again on NOSCRIPT); in a pipeline, a
script that a restarted Redis has forgotten (NOSCRIPT) is loaded and run again for that caller alone.
Redis outages surface as ``StoreUnavailable``; a script's own error is its caller's alone.
"""

from __future__ import annotations

from collections.abc import Awaitable, Iterator, Sequence
from contextlib import contextmanager
from importlib import resources
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.commands.core import AsyncScript

from proxy.errors import StoreUnavailable
from proxy.store.batch import Batch, TurnBatcher

SCRIPTS = ("reserve_v2", "settle_v2", "extend_v1", "reap_v2", "add_usage_v1", "revoke_key_v1", "ledger_v2")
PIPELINED = frozenset({"reserve_v2", "settle_v2"})  # the per-request scripts
OUTAGES = (rexc.ConnectionError, rexc.TimeoutError, rexc.ReadOnlyError, rexc.OutOfMemoryError)

Args = Sequence[str | int | bytes]
Call = tuple[str, Sequence[str], Args]  # script name, KEYS, ARGV


def lua(name: str) -> str:
    """A script's text, after the shared counter functions of ``lib_counters.lua``."""
    files = resources.files("proxy.store") / "lua"
    return "".join((files / file).read_text(encoding="utf-8") for file in ("lib_counters.lua", f"{name}.lua"))


def unavailable(where: str, err: Exception) -> StoreUnavailable:
    return StoreUnavailable(f"Redis store at {where} unavailable: {err}")


@contextmanager
def guard(where: str) -> Iterator[None]:
    """Redis outages (connection, timeout, read-only replica, out of memory) as ``StoreUnavailable``."""
    try:
        yield
    except OUTAGES as e:
        raise unavailable(where, e) from e


class Scripts:
    """The store's scripts on one client: ``run(name, keys, args)`` is one script call."""

    def __init__(self, where: str) -> None:
        self._where = where  # the URL without its password
        self._client: aioredis.Redis | None = None
        self._scripts: dict[str, AsyncScript] = {}
        self._batch: TurnBatcher[Call] = TurnBatcher(self._send)

    def open(self, client: aioredis.Redis) -> None:
        self._client = client
        self._scripts = {name: client.register_script(lua(name)) for name in SCRIPTS}

    async def close(self) -> None:
        """Wait for the pipelines in flight; later calls fail as not open."""
        await self._batch.wait()
        self._client = None

    def run(self, name: str, keys: Sequence[str], args: Args) -> Awaitable[Any]:
        if self._client is None:
            raise StoreUnavailable(f"Redis store at {self._where} is not open")
        if name in PIPELINED:
            return self._batch.submit((name, keys, args))
        return self._call(name, keys, args)

    async def _call(self, name: str, keys: Sequence[str], args: Args) -> Any:
        script = self._scripts.get(name)
        if script is None:  # not a per-request script: registered on first use
            script = self._scripts[name] = self._open_client().register_script(lua(name))
        with guard(self._where):
            return await script(keys=list(keys), args=list(args))

    async def _send(self, batch: Batch[Call]) -> list[Any]:
        """One turn's calls: alone, or in one pipeline; each caller's outcome is its own."""
        calls = batch.ops
        if len(calls) == 1:
            name, keys, args = calls[0]
            return [await self._call(name, keys, args)]
        pipe = self._open_client().pipeline(transaction=False)
        for name, keys, args in calls:
            pipe.evalsha(self._scripts[name].sha, len(keys), *keys, *args)
        with guard(self._where):
            outcomes: list[Any] = await pipe.execute(raise_on_error=False)
        for i, outcome in enumerate(outcomes):
            if isinstance(outcome, Exception) and not batch.abandoned(i):
                outcomes[i] = await self._failed(calls[i], outcome)
        return outcomes

    async def _failed(self, call: Call, err: Exception) -> Any:
        """A pipelined call's error: run it again when Redis forgot the script, else map it."""
        if isinstance(err, rexc.NoScriptError):  # a restarted Redis forgot the scripts: load and run
            try:
                return await self._call(*call)
            except Exception as e:
                return e
        if isinstance(err, OUTAGES):
            mapped = unavailable(self._where, err)
            mapped.__cause__ = err
            return mapped
        return err

    def _open_client(self) -> aioredis.Redis:
        if self._client is None:
            raise StoreUnavailable(f"Redis store at {self._where} is not open")
        return self._client

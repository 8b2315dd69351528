"""The shared store: Redis 6.2+, one Lua script (one round trip) per read-modify-write.

Key layout (``{tag}`` is the lease's ``hash_tag``, e.g. ``{search}``)::

    qg:c:<counter key>     HASH used, reserved, exp   counter; the caller's key starts with {tag}
    qg:{tag}:l:<lease id>  HASH d, h, e, x            lease: JSON, holds for Lua, expiry ms, expiry float
    qg:{tag}:leases        ZSET lease id -> expiry ms  what reap() scans
    qg:keys                HASH sha256 -> JSON         runtime API keys
    qg:overrides           HASH team -> JSON           runtime budget overrides
    qg:h:<histogram key>   HASH bucket -> count, exp   output histograms (redis_histograms.py)
    qg:n:<claim key>       STRING expiry ms            claim() (claim_v1.lua); the caller's key starts with {tag}
    qg:ledger              STREAM                      one entry per LedgerRecord, each field JSON-encoded
    qg:{tag}:seeded        STRING who, when            seeded from the ledger (redis_seed.py): gone = data lost

The ledger stream is unbounded unless ``ledger_max_len`` is given (``ledger_stream_max_len``: XADD MAXLEN ~,
oldest first). With a PostgreSQL ledger (``ledger:``) the stream receives nothing; what it holds from
before is copied there at startup, a page at a time (``ledger_page``), and trimmed (``trim_ledger``).

Counter keys are ``qg:c:`` + the caller's key (``counters()`` gets no tag), so in a Redis Cluster the
counter's slot is that of the tag the caller puts first in its key (``{search}:b:day:...``), the same
slot as the lease: every script touches one slot.

Time: every expiry decision uses the injected clock, passed to the scripts in ms (ARGV), never the Redis
server's clock. A counter past its window end reads as zero. Its Redis TTL is garbage collection only,
set relative to the caller's clock (window end - now + grace) rather than PEXPIREAT the window end: a
fake or skewed clock must never make Redis delete a counter that is still live for its callers.
Leases have no TTL: an unsettled lease is charged by reap(), never silently dropped.

The counter rule (``proxy/store/rules.py``) is written once in Lua, ``lua/lib_counters.lua``, and
prepended to every script's text at load; ``redis_scripts`` loads and calls the scripts, pipelining the
per-request ones.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
import redis.exceptions as rexc
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from proxy.errors import StoreUnavailable
from proxy.store import rules
from proxy.store.base import (
    OBJECT_RETENTION_S,
    Admitted,
    CounterValue,
    Denied,
    KeyRecord,
    Lease,
    LedgerRecord,
    ObjectRecord,
    UsageRow,
    hash_tag,
)
from proxy.store.memory import usage_rows
from proxy.store.redis_histograms import RedisHistograms
from proxy.store.redis_scripts import Args, Scripts, guard
from proxy.store.rules import is_expired

GRACE_MS = 60_000  # counter TTL beyond its window end (clock skew between replicas)
REAP_BATCH = 500  # leases per reap script call
PAGE = 1000  # stream entries per XRANGE
KEYS_KEY = "qg:keys"
OVERRIDES_KEY = "qg:overrides"
LEDGER_KEY = "qg:ledger"
LEDGER_DEDUP_MS = 6 * 3_600_000  # a batch written again within this long is skipped (ledger_v2.lua)

log = logging.getLogger("quotagate.ledger")
_LEDGER_FIELDS = frozenset(f.name for f in dataclasses.fields(LedgerRecord))


def counter_key(key: str) -> str:
    return f"qg:c:{key}"


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


class RedisStore(RedisHistograms):  # add_histogram, histograms: proxy/store/redis_histograms.py
    def __init__(
        self,
        url: str,
        *,
        clock: Callable[[], float] = time.time,
        socket_timeout: float = 2.0,
        connect_timeout: float = 1.0,
        max_connections: int = 64,
        ledger_max_len: int | None = None,
    ) -> None:
        self._url = url
        self._ledger_max_len = ledger_max_len or 0  # 0: unbounded
        self._where = url.split("@")[-1]  # never log the password
        self._clock = clock
        self._socket_timeout = socket_timeout
        self._connect_timeout = connect_timeout
        self._max_connections = max_connections
        self._client: aioredis.Redis | None = None
        self._scripts = Scripts(self._where)

    # plumbing

    @property
    def _r(self) -> aioredis.Redis:
        if self._client is None:
            raise StoreUnavailable(f"Redis store at {self._where} is not open")
        return self._client

    def _script(self, name: str, keys: Sequence[str], args: Args) -> Awaitable[Any]:
        return self._scripts.run(name, keys, args)

    # lifecycle

    async def open(self) -> None:
        """Create the connection pool; connecting is lazy, so a Redis that is down fails at first use."""
        if self._client is not None:
            return
        pool = aioredis.BlockingConnectionPool.from_url(
            self._url,
            max_connections=self._max_connections,
            timeout=self._socket_timeout,  # waiting for a free pooled connection
            socket_timeout=self._socket_timeout,
            socket_connect_timeout=self._connect_timeout,
            # One immediate retry on a broken connection (a pooled socket from before a Redis restart);
            # none on timeouts, where the script may have run.
            retry=Retry(NoBackoff(), 1, supported_errors=(rexc.ConnectionError,)),
        )
        self._client = aioredis.Redis.from_pool(pool)
        self._scripts.open(self._client)

    async def close(self) -> None:
        await self._scripts.close()
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    async def ping(self) -> None:
        with guard(self._where):
            await self._r.ping()

    # counters and leases

    async def reserve(self, lease: Lease) -> Denied | Admitted:
        """Admit every hold or none. Reserving an existing lease id again is a no-op (safe to retry)."""
        tag = lease.hash_tag
        # [counter key, amount to release, window end ms, amount reap commits (0 for slots)]
        lua_holds = [
            [counter_key(h.key), str(h.amount), str(_ms(h.expires_at)), str(h.amount if h.commit else 0)]
            for h in lease.holds
        ]
        args: list[str | int | bytes] = [
            _ms(self._clock()),
            _ms(lease.expires_at),
            lease.id,
            rules.lease_json(lease),
            orjson.dumps(lua_holds),
            repr(lease.expires_at),
            GRACE_MS,
        ]
        for h in lease.holds:
            args += [h.limit, h.amount, _ms(h.expires_at)]
        keys = [f"qg:{tag}:l:{lease.id}", f"qg:{tag}:leases", *(counter_key(h.key) for h in lease.holds)]
        result = await self._script("reserve_v2", keys, args)
        if int(result[0]) == 0:
            flat = [int(x) for x in result[1:]]
            return Admitted(
                {h.key: CounterValue(flat[2 * i], flat[2 * i + 1]) for i, h in enumerate(lease.holds)}
                if len(flat) == 2 * len(lease.holds)
                else {}
            )
        _, index, used, reserved = (int(x) for x in result)
        return Denied(hold=lease.holds[index - 1], used=used, reserved=reserved)

    async def settle(self, lease_id: str, hash_tag: str, charges: Mapping[str, int]) -> bool:
        args: list[str | int | bytes] = [_ms(self._clock()), lease_id, GRACE_MS]
        for key, amount in charges.items():
            args += [counter_key(key), amount]
        keys = [f"qg:{hash_tag}:l:{lease_id}", f"qg:{hash_tag}:leases"]
        return int(await self._script("settle_v2", keys, args)) == 1

    async def extend(self, lease_id: str, hash_tag: str, expires_at: float) -> bool:
        keys = [f"qg:{hash_tag}:l:{lease_id}", f"qg:{hash_tag}:leases"]
        args: list[str | int | bytes] = [_ms(expires_at), lease_id, repr(expires_at)]
        return int(await self._script("extend_v1", keys, args)) == 1

    async def reap(self, hash_tag: str, now: float) -> list[Lease]:
        """One script call per REAP_BATCH expired leases (one call in all but pathological cases)."""
        reaped: list[Lease] = []
        while True:
            args: list[str | int | bytes] = [
                _ms(now),
                _ms(self._clock()),
                f"qg:{hash_tag}:l:",
                GRACE_MS,
                REAP_BATCH,
            ]
            flat = await self._script("reap_v2", [f"qg:{hash_tag}:leases"], args)
            reaped += [rules.lease_from_json(flat[i], float(flat[i + 1])) for i in range(0, len(flat), 2)]
            if len(flat) < 2 * REAP_BATCH:
                return reaped

    async def add_usage(self, hash_tag: str, charges: Mapping[str, int], expires_at: Mapping[str, float]) -> None:
        if not charges:
            return
        args: list[str | int | bytes] = [_ms(self._clock()), GRACE_MS]
        for key, amount in charges.items():
            args += [amount, _ms(expires_at.get(key, 0.0))]
        await self._script("add_usage_v1", [counter_key(k) for k in charges], args)

    async def counters(self, keys: Sequence[str]) -> dict[str, CounterValue]:
        now = self._clock()
        with guard(self._where):
            async with self._r.pipeline(transaction=False) as pipe:
                for key in keys:
                    pipe.hmget(counter_key(key), ["used", "reserved", "exp"])
                rows = await pipe.execute()
        out: dict[str, CounterValue] = {}
        for key, (used, reserved, exp) in zip(keys, rows, strict=True):
            if used is None or is_expired(int(exp or 0) / 1000, now):
                out[key] = CounterValue()
            else:
                out[key] = CounterValue(int(used), int(reserved or 0))
        return out

    async def claim(self, key: str, expires_at: float) -> bool:
        now, exp = _ms(self._clock()), _ms(expires_at)  # expiry by the injected clock; the TTL is only GC
        return int(await self._script("claim_v1", [f"qg:n:{key}"], [now, exp, max(exp - now, 0) + GRACE_MS])) == 1

    # keys

    async def put_key(self, record: KeyRecord) -> None:
        # "revoked" last: revoke_key_v1.lua flips it in place
        doc = {
            "team": record.team,
            "name": record.name,
            "created_at": record.created_at,
            "revoked": record.revoked,
        }
        with guard(self._where):
            await self._r.hset(KEYS_KEY, record.sha256, orjson.dumps(doc))

    async def find_key(self, sha256: str) -> KeyRecord | None:
        with guard(self._where):
            raw = await self._r.hget(KEYS_KEY, sha256)
        return None if raw is None else _key_record(sha256, _b(raw))

    async def revoke_key(self, sha256: str) -> bool:
        return int(await self._script("revoke_key_v1", [KEYS_KEY], [sha256])) == 1

    async def list_keys(self, team: str | None = None) -> list[KeyRecord]:
        with guard(self._where):
            raw = await self._r.hgetall(KEYS_KEY)
        records = [_key_record(_b(sha).decode(), _b(doc)) for sha, doc in raw.items()]
        records = [r for r in records if team is None or r.team == team]
        return sorted(records, key=lambda r: (r.team, r.name, r.sha256))

    # overrides

    async def set_override(self, team: str, budgets: list[dict[str, Any]]) -> None:
        with guard(self._where):
            await self._r.hset(OVERRIDES_KEY, team, orjson.dumps(budgets))

    async def get_overrides(self) -> dict[str, list[dict[str, Any]]]:
        with guard(self._where):
            raw = await self._r.hgetall(OVERRIDES_KEY)
        return {_b(team).decode(): orjson.loads(doc) for team, doc in raw.items()}

    # ledger

    async def write_ledger(self, records: Sequence[LedgerRecord]) -> None:
        """Append records; the same batch again within LEDGER_DEDUP_MS is skipped (a retry or a replay).

        Per batch, not per record: a marker per batch costs ~100 bytes for LEDGER_DEDUP_MS, one per
        record would cost that for every request. The ledger retries and replays whole batches."""
        if not records:
            return
        digest = hashlib.blake2b(b"\n".join(r.request_id.encode() for r in records), digest_size=12).hexdigest()
        # the marker's hash tag is the stream's name: the same cluster slot as the stream
        keys = [LEDGER_KEY, f"{hash_tag(LEDGER_KEY)}:b:{digest}"]
        args: list[str | int | bytes] = [LEDGER_DEDUP_MS, self._ledger_max_len]
        for r in records:  # one field per entry: the record as JSON (orjson encodes dataclasses natively)
            args += [_ms(r.ts), 1, "r", orjson.dumps(r)]
        await self._script("ledger_v2", keys, args)

    async def _read_ledger(self, since: float, team: str | None) -> list[tuple[bytes, LedgerRecord]]:
        """Every record with ts >= since; stream ids are >= the record's ts (ledger_v2.lua)."""
        out: list[tuple[bytes, LedgerRecord]] = []
        start: str | bytes = str(max(_ms(since) - 1, 0))
        with guard(self._where):
            while True:
                page = cast(
                    "list[tuple[bytes, dict[bytes, bytes]]]",
                    await self._r.xrange(LEDGER_KEY, min=start, max="+", count=PAGE),
                )
                for entry_id, fields in page:
                    record = _ledger_record(fields)
                    if record.ts >= since and (team is None or record.team == team):
                        out.append((entry_id, record))
                if len(page) < PAGE:
                    return out
                start = b"(" + page[-1][0]

    async def ledger_page(self, count: int = PAGE) -> list[tuple[bytes, LedgerRecord]]:
        """The stream's oldest ``count`` entries, oldest first (an unreadable one is logged and left out)."""
        with guard(self._where):
            page = cast("list[tuple[bytes, dict[bytes, bytes]]]", await self._r.xrange(LEDGER_KEY, count=count))
        out: list[tuple[bytes, LedgerRecord]] = []
        for entry_id, fields in page:
            try:
                out.append((entry_id, _ledger_record(fields)))
            except (ValueError, TypeError) as e:
                log.error("ledger stream entry %s unreadable, not copied: %s: %r", entry_id.decode(), e, fields)
        return out

    async def trim_ledger(self, through: bytes) -> None:
        """Delete every stream entry up to and including ``through`` (XTRIM MINID, exact)."""
        ms, seq = _stream_id(through)
        with guard(self._where):
            await self._r.xtrim(LEDGER_KEY, minid=f"{ms}-{seq + 1}", approximate=False)

    async def usage(self, since: float, team: str | None = None) -> list[UsageRow]:
        return usage_rows(r for _, r in await self._read_ledger(since, team))

    async def ledger(self, since: float, team: str | None = None, limit: int = 1000) -> list[LedgerRecord]:
        hits = await self._read_ledger(since, team)
        hits.sort(key=lambda t: (t[1].ts, _stream_id(t[0])), reverse=True)
        return [r for _, r in hits[:limit]]

    # objects: qg:o:<kind>:<id> HASH t(eam), p(rovider), c(reated_at), d(eleted), with a TTL until its
    # retention ends (Redis' expiry is garbage collection only: reads check created_at by the clock)

    async def put_object(self, record: ObjectRecord) -> None:
        ttl = int(record.created_at + OBJECT_RETENTION_S - self._clock()) + 1
        if ttl <= 1:
            return
        key = _object_key(record.kind, record.object_id)
        fields = {"t": record.team, "p": record.provider, "c": repr(record.created_at), "d": int(record.deleted)}
        with guard(self._where):
            async with self._r.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping=fields)  # type: ignore[arg-type]  # the stub's Mapping key is invariant
                pipe.expire(key, ttl)
                await pipe.execute()

    async def find_objects(self, kind: str, object_ids: Sequence[str]) -> dict[str, ObjectRecord]:
        ids = list(dict.fromkeys(object_ids))
        if not ids:
            return {}
        cutoff = self._clock() - OBJECT_RETENTION_S
        with guard(self._where):
            async with self._r.pipeline(transaction=False) as pipe:
                for object_id in ids:
                    pipe.hmget(_object_key(kind, object_id), ["t", "p", "c", "d"])
                rows = await pipe.execute()
        out: dict[str, ObjectRecord] = {}
        for object_id, (team, provider, created, deleted) in zip(ids, rows, strict=True):
            if team is None or float(created) <= cutoff:
                continue
            out[object_id] = ObjectRecord(
                kind, object_id, _b(team).decode(), _b(provider).decode(), float(created), _b(deleted) == b"1"
            )
        return out

    async def delete_object(self, kind: str, object_id: str) -> bool:
        args: list[str | int | bytes] = [repr(self._clock() - OBJECT_RETENTION_S)]
        return int(await self._script("object_delete_v1", [_object_key(kind, object_id)], args)) == 1


def _b(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def _key_record(sha256: str, raw: bytes) -> KeyRecord:
    d = orjson.loads(raw)
    return KeyRecord(sha256=sha256, team=d["team"], name=d["name"], created_at=d["created_at"], revoked=d["revoked"])


def _ledger_record(fields: Mapping[bytes, bytes]) -> LedgerRecord:
    whole = fields.get(b"r")
    values = orjson.loads(whole) if whole is not None else {k.decode(): orjson.loads(v) for k, v in fields.items()}
    return LedgerRecord(**{k: v for k, v in values.items() if k in _LEDGER_FIELDS})


def _stream_id(entry_id: bytes) -> tuple[int, int]:
    ms, _, seq = entry_id.partition(b"-")
    return int(ms), int(seq)


def _object_key(kind: str, object_id: str) -> str:
    return f"qg:o:{kind}:{object_id}"

"""The in-process store: the reference implementation of the contract, for tests and single workers.

Nothing here awaits inside a critical section, so each call is atomic with respect to other tasks on
the same event loop. Nothing is durable and nothing is shared between processes.

Counter expiry, shared by every store: a counter whose ``expires_at`` has passed (by the store's clock)
reads as zero, and the next write starts it afresh. ``settle``/``reap``/``add_usage`` skip a hold whose
window has already ended: charging it could only create a counter that reads as zero.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from proxy.store.base import (
    OBJECT_RETENTION_S,
    Admitted,
    CounterValue,
    Denied,
    Hold,
    KeyRecord,
    Lease,
    LedgerRecord,
    ObjectRecord,
    UsageRow,
)

_PURGE_EVERY = 60.0  # seconds of store clock between sweeps of expired counters


def is_expired(expires_at: float, now: float) -> bool:
    """The one expiry rule: 0 never expires; otherwise a counter is dead from ``expires_at`` on."""
    return expires_at > 0 and now >= expires_at


def usage_rows(records: Iterable[LedgerRecord]) -> list[UsageRow]:
    """Aggregate ledger records per (team, model), provider-reported tokens preferred over counted ones.

    The SQLite store does the same in SQL; memory and Redis share this function.
    """
    acc: dict[tuple[str, str], list[int]] = {}
    for r in records:
        row = acc.setdefault((r.team, r.model), [0, 0, 0, 0, 0, 0])
        row[0] += 1
        row[5] += r.cost_micro_usd
        if not r.charged:  # refused before the provider saw it: a request, but no tokens
            continue
        row[1] += _first(r.input_tokens, r.counted_input)
        row[2] += r.cached_input_tokens or 0
        row[3] += _first(r.output_tokens, r.counted_output)
        row[4] += r.reasoning_tokens or 0
    return [UsageRow(team, model, *vals) for (team, model), vals in sorted(acc.items())]


def full_charges(holds: Iterable[Hold]) -> dict[str, int]:
    """What reap charges: every hold in full, except slots (commit=False), which are only released."""
    out: dict[str, int] = {}
    for h in holds:
        out[h.key] = out.get(h.key, 0) + (h.amount if h.commit else 0)
    return out


def _first(reported: int | None, counted: int | None) -> int:
    if reported is not None:
        return reported
    return counted or 0


@dataclass(slots=True)
class _Counter:
    used: int = 0
    reserved: int = 0
    expires_at: float = 0.0


class MemoryStore:
    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._counters: dict[str, _Counter] = {}
        self._leases: dict[tuple[str, str], Lease] = {}
        self._keys: dict[str, KeyRecord] = {}
        self._overrides: dict[str, list[dict[str, Any]]] = {}
        self._ledger: list[LedgerRecord] = []
        self._last_purge = 0.0

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    # counters and leases

    def _live(self, key: str, now: float) -> _Counter | None:
        c = self._counters.get(key)
        if c is None or is_expired(c.expires_at, now):
            return None
        return c

    def _touch(self, key: str, expires_at: float, now: float) -> _Counter:
        """The live counter for a write (a fresh one if missing or expired), stamped with the window end."""
        c = self._live(key, now)
        if c is None:
            c = self._counters[key] = _Counter()
        c.expires_at = expires_at
        return c

    async def reserve(self, lease: Lease) -> Denied | Admitted:
        """Admit every hold or none. Reserving an existing lease id again is a no-op (safe to retry)."""
        now = self._clock()
        if (lease.hash_tag, lease.id) in self._leases:
            return Admitted()
        pending: dict[str, int] = {}  # two holds on one counter are admitted together
        for hold in lease.holds:
            c = self._live(hold.key, now) or _Counter()
            ahead = pending.get(hold.key, 0)
            if hold.limit >= 0 and c.used + c.reserved + ahead + hold.amount > hold.limit:
                return Denied(hold=hold, used=c.used, reserved=c.reserved)
            pending[hold.key] = ahead + hold.amount
        values: dict[str, CounterValue] = {}
        for hold in lease.holds:
            c = self._touch(hold.key, hold.expires_at, now)
            c.reserved += hold.amount
            values[hold.key] = CounterValue(c.used, c.reserved)
        self._leases[(lease.hash_tag, lease.id)] = lease
        return Admitted(values)

    def _charge(self, lease: Lease, charges: Mapping[str, int], now: float) -> None:
        for hold in lease.holds:
            if is_expired(hold.expires_at, now):
                continue
            c = self._touch(hold.key, hold.expires_at, now)
            c.reserved = max(0, c.reserved - hold.amount)
            c.used += charges.get(hold.key, 0)

    async def settle(self, lease_id: str, hash_tag: str, charges: Mapping[str, int]) -> bool:
        lease = self._leases.pop((hash_tag, lease_id), None)
        if lease is None:
            return False
        self._charge(lease, charges, self._clock())
        return True

    async def extend(self, lease_id: str, hash_tag: str, expires_at: float) -> bool:
        lease = self._leases.get((hash_tag, lease_id))
        if lease is None:
            return False
        self._leases[(hash_tag, lease_id)] = replace(lease, expires_at=expires_at)
        return True

    async def reap(self, hash_tag: str, now: float) -> list[Lease]:
        clock_now = self._clock()
        expired = [lease for (tag, _), lease in self._leases.items() if tag == hash_tag and lease.expires_at <= now]
        for lease in expired:
            del self._leases[(hash_tag, lease.id)]
            self._charge(lease, full_charges(lease.holds), clock_now)
        self._purge(clock_now)
        return expired

    def _purge(self, now: float) -> None:
        if now - self._last_purge < _PURGE_EVERY:
            return
        self._last_purge = now
        for key in [k for k, c in self._counters.items() if is_expired(c.expires_at, now)]:
            del self._counters[key]

    async def add_usage(self, hash_tag: str, charges: Mapping[str, int], expires_at: Mapping[str, float]) -> None:
        now = self._clock()
        for key, amount in charges.items():
            exp = expires_at.get(key, 0.0)
            if not is_expired(exp, now):
                self._touch(key, exp, now).used += amount

    async def counters(self, keys: Sequence[str]) -> dict[str, CounterValue]:
        now = self._clock()
        out: dict[str, CounterValue] = {}
        for key in keys:
            c = self._live(key, now)
            out[key] = CounterValue() if c is None else CounterValue(c.used, c.reserved)
        return out

    # keys

    async def put_key(self, record: KeyRecord) -> None:
        self._keys[record.sha256] = record

    async def find_key(self, sha256: str) -> KeyRecord | None:
        return self._keys.get(sha256)

    async def revoke_key(self, sha256: str) -> bool:
        record = self._keys.get(sha256)
        if record is None:
            return False
        self._keys[sha256] = replace(record, revoked=True)
        return True

    async def list_keys(self, team: str | None = None) -> list[KeyRecord]:
        records = [r for r in self._keys.values() if team is None or r.team == team]
        return sorted(records, key=lambda r: (r.team, r.name, r.sha256))

    # overrides

    async def set_override(self, team: str, budgets: list[dict[str, Any]]) -> None:
        self._overrides[team] = [dict(b) for b in budgets]

    async def get_overrides(self) -> dict[str, list[dict[str, Any]]]:
        return {team: [dict(b) for b in budgets] for team, budgets in self._overrides.items()}

    # ledger

    async def write_ledger(self, records: Sequence[LedgerRecord]) -> None:
        self._ledger.extend(records)

    async def usage(self, since: float, team: str | None = None) -> list[UsageRow]:
        return usage_rows(r for r in self._ledger if r.ts >= since and (team is None or r.team == team))

    async def ledger(self, since: float, team: str | None = None, limit: int = 1000) -> list[LedgerRecord]:
        hits = [(r.ts, i, r) for i, r in enumerate(self._ledger) if r.ts >= since and (team is None or r.team == team)]
        hits.sort(key=lambda t: (t[0], t[1]), reverse=True)
        return [r for _, _, r in hits[:limit]]

    # objects (who owns a provider-side id), kept in insertion order so that expired ones are dropped
    # from the front

    @functools.cached_property
    def _objects(self) -> dict[tuple[str, str], ObjectRecord]:
        return {}

    async def put_object(self, record: ObjectRecord) -> None:
        now = self._clock()
        objects = self._objects
        while objects:
            first = next(iter(objects.values()))
            if first.created_at + OBJECT_RETENTION_S > now:
                break
            del objects[(first.kind, first.object_id)]
        objects[(record.kind, record.object_id)] = record

    async def find_objects(self, kind: str, object_ids: Sequence[str]) -> dict[str, ObjectRecord]:
        cutoff = self._clock() - OBJECT_RETENTION_S
        out: dict[str, ObjectRecord] = {}
        for object_id in object_ids:
            record = self._objects.get((kind, object_id))
            if record is not None and record.created_at > cutoff:
                out[object_id] = record
        return out

    async def delete_object(self, kind: str, object_id: str) -> bool:
        record = (await self.find_objects(kind, [object_id])).get(object_id)
        if record is None:
            return False
        self._objects[(kind, object_id)] = replace(record, deleted=True)
        return True

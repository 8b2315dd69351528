"""The in-process store: the reference implementation of the contract, for tests and single workers.

Nothing here awaits inside a critical section, so each call is atomic with respect to other tasks on
the same event loop. Nothing is durable and nothing is shared between processes.

What each call does to a counter is ``proxy/store/rules.py``, shared with the SQLite store (and written
in Lua for Redis); this module only keeps the counters.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Any

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
)
from proxy.store.rules import is_expired

_PURGE_EVERY = 60.0  # seconds of store clock between sweeps of expired counters


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


def _first(reported: int | None, counted: int | None) -> int:
    if reported is not None:
        return reported
    return counted or 0


class MemoryStore:
    def __init__(self, *, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._counters: dict[str, tuple[int, int, float]] = {}  # key -> used, reserved, expires_at
        self._leases: dict[tuple[str, str], Lease] = {}
        self._keys: dict[str, KeyRecord] = {}
        self._overrides: dict[str, list[dict[str, Any]]] = {}
        self._ledger: list[LedgerRecord] = []
        self._ledger_ids: set[str] = set()
        self._last_purge = 0.0
        self._claims: dict[str, float] = {}  # claim key -> expires_at

    async def open(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def ping(self) -> None:
        return None

    # counters and leases

    def _read(self, keys: Iterable[str], now: float) -> dict[str, rules.Counts]:
        out: dict[str, rules.Counts] = {}
        for key in keys:
            c = self._counters.get(key)
            out[key] = (0, 0) if c is None or is_expired(c[2], now) else (c[0], c[1])
        return out

    def _write(self, rows: list[rules.Row]) -> None:
        for key, used, reserved, expires_at in rows:
            self._counters[key] = (used, reserved, expires_at)

    def _apply(self, deltas: Mapping[str, rules.Delta], now: float) -> None:
        self._write(rules.written(self._read(deltas, now), deltas))

    async def reserve(self, lease: Lease) -> Denied | Admitted:
        """Admit every hold or none. Reserving an existing lease id again is a no-op (safe to retry)."""
        now = self._clock()
        if (lease.hash_tag, lease.id) in self._leases:
            return Admitted()
        read = self._read((h.key for h in lease.holds), now)
        deltas = rules.admit(lease.holds, read, now)
        if isinstance(deltas, Denied):
            return deltas
        rows = rules.written(read, deltas)
        self._write(rows)
        self._leases[(lease.hash_tag, lease.id)] = lease
        return rules.admitted(read, rows)

    async def settle(self, lease_id: str, hash_tag: str, charges: Mapping[str, int]) -> bool:
        lease = self._leases.pop((hash_tag, lease_id), None)
        if lease is None:
            return False
        now = self._clock()
        self._apply(rules.settle_deltas(lease.holds, charges, now), now)
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
            self._apply(rules.reap_deltas(lease.holds, clock_now), clock_now)
        self._purge(clock_now)
        return expired

    def _purge(self, now: float) -> None:
        if now - self._last_purge < _PURGE_EVERY:
            return
        self._last_purge = now
        for key in [k for k, c in self._counters.items() if is_expired(c[2], now)]:
            del self._counters[key]

    async def add_usage(self, hash_tag: str, charges: Mapping[str, int], expires_at: Mapping[str, float]) -> None:
        now = self._clock()
        self._apply(rules.usage_deltas(charges, expires_at, now), now)

    async def counters(self, keys: Sequence[str]) -> dict[str, CounterValue]:
        return {key: CounterValue(*counts) for key, counts in self._read(keys, self._clock()).items()}

    async def claim(self, key: str, expires_at: float) -> bool:
        now = self._clock()
        if len(self._claims) > 10_000:  # claims are rare (one per threshold and window): sweep only when many
            self._claims = {k: t for k, t in self._claims.items() if t > now}
        held = self._claims.get(key)
        if held is not None and held > now:
            return False
        self._claims[key] = expires_at
        return True

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
        """One row per request id, the first written wins (as in SQLite: a replayed batch adds nothing)."""
        for r in records:
            if r.request_id not in self._ledger_ids:
                self._ledger_ids.add(r.request_id)
                self._ledger.append(r)

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

    # histograms (proxy/observed.py)

    @functools.cached_property
    def _histograms(self) -> dict[str, tuple[dict[int, int], float]]:  # key -> bucket counts, expires_at
        return {}

    async def add_histogram(self, key: str, increments: Mapping[int, int], expires_at: float) -> None:
        now = self._clock()
        hists = self._histograms
        if len(hists) > 10_000:  # one key per (team, model) slot: sweep the expired ones only when many
            for k in [k for k, v in hists.items() if is_expired(v[1], now)]:
                del hists[k]
        if is_expired(expires_at, now):
            return
        found = hists.get(key)
        counts = dict(found[0]) if found is not None and not is_expired(found[1], now) else {}
        for b, n in increments.items():
            counts[b] = counts.get(b, 0) + n
        hists[key] = (counts, expires_at)

    async def histograms(self, keys: Sequence[str]) -> dict[str, dict[int, int]]:
        now = self._clock()
        out: dict[str, dict[int, int]] = {}
        for key in keys:
            found = self._histograms.get(key)
            out[key] = dict(found[0]) if found is not None and not is_expired(found[1], now) else {}
        return out

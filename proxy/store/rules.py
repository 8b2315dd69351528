"""The store rules, written once: what reserve, settle, reap and add_usage do to each counter, the expiry
rule, and how a lease is encoded. No I/O.

The memory and SQLite stores apply these functions; the Redis store runs the same rule in Lua
(``lua/lib_counters.lua``, prepended to its scripts), and ``tests/test_store_differential.py`` holds the
two languages to each other.

Every write is one ``Delta`` (du, dr, window end) per distinct counter key, applied to the counter as it
reads now (zero when missing or expired)::

    used      += du
    reserved   = max(0, reserved + dr)      # dr > 0 when reserving, < 0 when releasing
    expires_at = window end                 # that of the key's last hold

A key whose delta's window has already ended is not written at all: that could only create a counter
that reads as zero, or cut a live one short. Holds on one key are independent: each adds (reserve) and
releases (settle, reap) its own amount, while a settle charge is per key, so it is charged once.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import orjson

from proxy.store.base import Admitted, CounterValue, Denied, Hold, Lease

# Plain tuples, not frozen dataclasses: several are built per request on the hot path, where a tuple costs
# a few nanoseconds and a dataclass (or NamedTuple) most of a microsecond.
Delta = tuple[int, int, float]  # one key's change: used (added), reserved (signed, added), window end after
Counts = tuple[int, int]  # (used, reserved) of a counter as it reads now: (0, 0) when missing or expired
Row = tuple[str, int, int, float]  # a counter to store: key, used, reserved, expires_at


def is_expired(expires_at: float, now: float) -> bool:
    """The one expiry rule: 0 never expires; otherwise a counter is dead from ``expires_at`` on."""
    return expires_at > 0 and now >= expires_at


def written(read: Mapping[str, Counts], deltas: Mapping[str, Delta]) -> list[Row]:
    """The counters after their deltas, as rows to store; ``read`` holds every key of ``deltas``."""
    rows: list[Row] = []
    for key, (du, dr, expires_at) in deltas.items():
        used, reserved = read[key]
        reserved += dr
        rows.append((key, used + du, reserved if reserved > 0 else 0, expires_at))
    return rows


def admitted(read: Mapping[str, Counts], rows: Sequence[Row]) -> Admitted:
    """What reserve answers: every counter of the lease just after (unchanged where nothing was written)."""
    values = {key: CounterValue(used, reserved) for key, used, reserved, _ in rows}
    if len(values) < len(read):  # a hold whose window had ended: its counter as read
        values = {key: values[key] if key in values else CounterValue(*counts) for key, counts in read.items()}
    return Admitted(values)


def admit(holds: Sequence[Hold], read: Mapping[str, Counts], now: float) -> Denied | dict[str, Delta]:
    """Admission of a whole lease against the counters as read: the deltas to write, or the first refusal.

    Each hold must fit: ``used + reserved + (earlier holds of this lease on the key) + amount <= limit``,
    unless ``limit < 0`` (tracked only). ``Denied`` carries the counter as read, before this lease.
    """
    deltas: dict[str, Delta] = {}
    for hold in holds:
        used, reserved = read[hold.key]
        earlier = deltas.get(hold.key)
        ahead = 0 if earlier is None else earlier[1]
        if hold.limit >= 0 and used + reserved + ahead + hold.amount > hold.limit:
            return Denied(hold=hold, used=used, reserved=reserved)
        deltas[hold.key] = (0, ahead + hold.amount, hold.expires_at)  # the last hold's window end wins
    return _unexpired(deltas, now)


def settle_deltas(holds: Sequence[Hold], charges: Mapping[str, int], now: float) -> dict[str, Delta]:
    """Release every hold; charge ``charges[key]`` once per distinct key (keys the lease lacks are ignored)."""
    deltas: dict[str, Delta] = {}
    for h in holds:
        earlier = deltas.get(h.key)
        if earlier is None:
            deltas[h.key] = (charges.get(h.key, 0), -h.amount, h.expires_at)
        else:
            deltas[h.key] = (earlier[0], earlier[1] - h.amount, h.expires_at)
    return _unexpired(deltas, now)


def reap_deltas(holds: Sequence[Hold], now: float) -> dict[str, Delta]:
    """Settle an abandoned lease at its full amount: each hold is charged what it held, slots nothing."""
    return settle_deltas(holds, full_charges(holds), now)


def usage_deltas(charges: Mapping[str, int], expires_at: Mapping[str, float], now: float) -> dict[str, Delta]:
    """add_usage: ``used += amount`` on each counter, whatever its limit."""
    return _unexpired({k: (n, 0, expires_at.get(k, 0.0)) for k, n in charges.items()}, now)


def full_charges(holds: Iterable[Hold]) -> dict[str, int]:
    """What reap charges: every hold in full, except slots (commit=False), which are only released."""
    out: dict[str, int] = {}
    for h in holds:
        out[h.key] = out.get(h.key, 0) + (h.amount if h.commit else 0)
    return out


def _unexpired(deltas: dict[str, Delta], now: float) -> dict[str, Delta]:
    """Drop the keys whose window has ended (in place: the common case drops nothing)."""
    for key in [k for k, d in deltas.items() if is_expired(d[2], now)]:
        del deltas[key]
    return deltas


# Leases, encoded here for both stores that keep them. SQLite keeps the holds and the meta as two JSON
# columns beside the tag, id and expiry; Redis one JSON document (id, tag, holds, meta) beside the expiry,
# which changes on extend. Rows written before `commit` existed have 4 fields; they still load.


def hold_rows(holds: Iterable[Hold]) -> list[list[Any]]:
    return [[h.key, h.limit, h.amount, h.expires_at, h.commit] for h in holds]


def holds_from_rows(rows: Iterable[Sequence[Any]]) -> tuple[Hold, ...]:
    return tuple(Hold(*row) for row in rows)


def lease_row(lease: Lease) -> tuple[str, str, float, str, str]:
    """The SQLite layout, in the table's column order: hash_tag, id, expires_at, holds and meta as JSON."""
    holds, meta = orjson.dumps(hold_rows(lease.holds)).decode(), orjson.dumps(dict(lease.meta)).decode()
    return lease.hash_tag, lease.id, lease.expires_at, holds, meta


def lease_from_row(row: Sequence[Any]) -> Lease:
    hash_tag, lease_id, expires_at, holds, meta = row
    return Lease(
        id=lease_id,
        hash_tag=hash_tag,
        holds=holds_from_rows(orjson.loads(holds)),
        expires_at=expires_at,
        meta=orjson.loads(meta),
    )


def lease_json(lease: Lease) -> bytes:
    """The Redis layout: the lease without its expiry, as one JSON document."""
    doc = {"id": lease.id, "hash_tag": lease.hash_tag, "holds": hold_rows(lease.holds), "meta": dict(lease.meta)}
    return orjson.dumps(doc)


def lease_from_json(doc: bytes | str, expires_at: float) -> Lease:
    d = orjson.loads(doc)
    return Lease(
        id=d["id"], hash_tag=d["hash_tag"], holds=holds_from_rows(d["holds"]), expires_at=expires_at, meta=d["meta"]
    )

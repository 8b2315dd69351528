"""The store contract: atomic reserve/settle of counters, leases, keys, overrides and the ledger.

A *counter* is an opaque string key (the caller encodes scope and window instance in it, e.g.
``{search}:b:day:tokens:2026-11-24``) holding two integers: ``used`` (committed) and ``reserved`` (held by
open leases). The store knows nothing of teams, windows or money: the caller turns policy into ``Hold``\\ s.

Flow (every implementation is atomic per call, across processes and replicas)::

    reserve(lease)  -> all holds admitted (reserved += amount for each; Admitted) or none (Denied, no change)
    settle(id, ch)  -> for each hold: reserved -= amount; for each distinct key: used += ch.get(key, 0);
                       lease deleted (keys of ch the lease does not hold are ignored)
    extend(id, t)   -> lease lives until t (long streams)
    reap(team, now) -> expired, unsettled leases are settled at their full amount (for each hold:
                       used += amount, except holds with commit=False, which are only released) and
                       returned so that the caller records them, in no particular order; never dropped
    add_usage(ch)   -> used += amount, unconditionally (reconciling what was admitted while the store was down)
    claim(key, t)   -> True for exactly one caller per key until t (epoch seconds, by the store's clock), then
                       the key may be claimed again; who sends a notification (proxy/notify.py). The caller's
                       key starts with the hash tag (``{team}``, ``{qg-org}``), as a counter's does

Admission rule for each hold: ``used + reserved + (this lease's earlier holds on the key) + amount <=
limit``. A hold with ``limit < 0`` is tracked but never refuses (used for concurrency gauges and
usage-only counters). Counters expire at ``expires_at`` (epoch seconds; 0 = never); an expired counter
reads as zero, and the next write starts it afresh. ``reserved`` never goes below zero.

One lease may hold a key more than once (the config refuses two budgets that would share a counter, but
the contract does not rely on it). Each hold is independent: reserve adds and settle/reap release each
hold's amount, reap commits each hold's amount, while a settle charge is given per key and so is
charged once. A write leaves the counter's ``expires_at`` at that of the key's last hold in the lease,
and a key whose window has already ended (by the store's clock) is not written at all, by any call.
``proxy/store/rules.py`` is this rule as code (memory, SQLite); ``lua/lib_counters.lua`` is it for Redis,
which sees every time in milliseconds; ``tests/test_store_differential.py`` holds the stores to each other.

Cluster: every key of one lease shares the ``hash_tag`` (``{team}``, built by ``hash_tag(team)``), so a
Redis Cluster keeps them in one slot; implementations must prefix their own keys with the same tag.

All I/O errors (connection refused, timeouts, locked database past its timeout) surface as
``StoreUnavailable`` from ``proxy.errors``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import field
from typing import Any, Protocol

from ..values import value


def hash_tag(name: str) -> str:
    """``{name}``: the Redis Cluster hash tag of a team's counters and leases (every key carrying it shares a
    slot). Written here once; callers never build the braces by hand."""
    return "{" + name + "}"


@value
class Hold:
    key: str
    limit: int  # < 0: unlimited (tracked only)
    amount: int
    expires_at: float  # epoch seconds when the counter's window ends; 0 = never
    commit: bool = True  # False: a slot (concurrency) that is only ever released, never committed, even by reap


@value
class Lease:
    id: str
    hash_tag: str  # "{team}"
    holds: tuple[Hold, ...]
    expires_at: float  # epoch seconds; past it, reap() charges the holds in full
    meta: Mapping[str, Any] = field(default_factory=dict)  # JSON-able; returned by reap() for the ledger


@value
class Denied:
    hold: Hold  # the first hold that did not fit
    used: int
    reserved: int


@value
class CounterValue:
    used: int = 0
    reserved: int = 0


@value
class Admitted:
    """Every hold was admitted; ``values`` are the counters just after (for x-ratelimit-remaining-*).

    A retried reserve of a lease that already exists admits nothing new and returns empty values."""

    values: Mapping[str, CounterValue] = field(default_factory=dict)


@value
class KeyRecord:
    sha256: str  # hex digest of the key; the key itself is never stored
    team: str
    name: str
    created_at: float
    revoked: bool = False


@value
class LedgerRecord:
    """One request, whatever its outcome. Version 3 (2: before ``charged_tokens``; 1: before the analysis
    fields, from ``input_system`` on)."""

    request_id: str
    ts: float  # epoch seconds at arrival
    team: str
    key_name: str
    model: str  # the configured (client-facing) model name, after any downgrade
    provider: str
    endpoint: str  # chat | completions | embeddings | responses
    stream: bool
    status: int  # HTTP status returned to the client (0 = client gone before any status)
    outcome: str  # a proxy.outcomes.Outcome (a str here: rows written by other versions read back as they are)
    counted_input: int | None  # quotagate's own pre-count (before a pre-count factor, proxy/precount.py)
    counted_output: int | None  # quotagate's count of the streamed/returned output
    input_tokens: int | None  # provider-reported (None = not reported)
    cached_input_tokens: int | None
    output_tokens: int | None
    reasoning_tokens: int | None
    cost_micro_usd: int  # what was charged
    latency_ms: float | None
    ttft_ms: float | None
    trimmed_tokens: int = 0
    estimated: bool = False  # the pre-count is an estimate (no exact tokenizer)
    seed: int | None = None
    system_fingerprint: str | None = None
    upstream_model: str | None = None
    error: str | None = None
    charged: bool = True  # the request reached the provider and was billed; usage reports add only these
    version: int = 3
    # part of input_tokens written to the provider's prompt cache, by lifetime (Anthropic)
    cache_write_5m_tokens: int | None = None
    cache_write_1h_tokens: int | None = None
    usage_raw: str | None = None  # the provider's usage object, JSON as it came
    service_tier: str | None = None  # the tier the response says served it, as named (None: not said)
    # what analysis needs (proxy/analysis/): the counted input by part (they add up to counted_input less
    # input out of sight), the output cap the request went out with (None: none), the price it was charged
    # at (``Price.version``), and who and what it was for, as the client said (proxy/attribution.py)
    input_system: int | None = None
    input_tools: int | None = None
    input_history: int | None = None
    input_new: int | None = None
    history_messages: int | None = None  # how many messages input_history is made of (None: not known)
    output_cap: int | None = None
    price_version: str | None = None
    end_user: str | None = None
    tags: str | None = None  # comma-separated
    # the tokens charged to the request's token counters (finish: the usage total settled; a lease the reaper
    # charged: its full worst case; 0: nothing charged). Rows before version 3 read 0. ``cost_micro_usd`` is
    # what its USD counters were charged. The drift reconcile and the seeding add these up (proxy/drift.py).
    charged_tokens: int = 0


@value
class UsageRow:
    """An aggregate of ledger records for ``quotagate usage`` and the admin API."""

    team: str
    model: str
    requests: int
    input_tokens: int
    cached_input_tokens: int
    output_tokens: int
    reasoning_tokens: int
    cost_micro_usd: int


# How long a provider keeps a stored response or chat completion by default (30 days): past it, quotagate
# forgets whose it was, so an id reads as unknown (404), as the provider would answer.
OBJECT_RETENTION_S = 30 * 86_400


@value
class ObjectRecord:
    """An object a provider created for a request through quotagate (a response, a chat completion): the
    team it belongs to, and the provider that holds it (where requests naming its id are sent)."""

    kind: str  # "response" | "chat.completion"
    object_id: str
    team: str
    provider: str  # configured provider name
    created_at: float  # epoch seconds, by the gateway's clock
    deleted: bool = False


class Store(Protocol):
    async def open(self) -> None: ...
    async def close(self) -> None: ...
    async def ping(self) -> None: ...  # raises StoreUnavailable

    # counters and leases
    async def reserve(self, lease: Lease) -> Denied | Admitted: ...
    async def settle(self, lease_id: str, hash_tag: str, charges: Mapping[str, int]) -> bool: ...
    async def extend(self, lease_id: str, hash_tag: str, expires_at: float) -> bool: ...
    async def reap(self, hash_tag: str, now: float) -> list[Lease]: ...
    async def add_usage(self, hash_tag: str, charges: Mapping[str, int], expires_at: Mapping[str, float]) -> None: ...
    async def counters(self, keys: Sequence[str]) -> dict[str, CounterValue]: ...
    async def claim(self, key: str, expires_at: float) -> bool: ...  # once per key until expires_at

    # API keys created at runtime (config keys live in settings)
    async def put_key(self, record: KeyRecord) -> None: ...
    async def find_key(self, sha256: str) -> KeyRecord | None: ...
    async def revoke_key(self, sha256: str) -> bool: ...
    async def list_keys(self, team: str | None = None) -> list[KeyRecord]: ...

    # runtime budget overrides: team -> JSON-able list of budget dicts
    async def set_override(self, team: str, budgets: list[dict[str, Any]]) -> None: ...
    async def get_overrides(self) -> dict[str, list[dict[str, Any]]]: ...

    # ledger
    async def write_ledger(self, records: Sequence[LedgerRecord]) -> None: ...
    async def usage(self, since: float, team: str | None = None) -> list[UsageRow]: ...
    async def ledger(self, since: float, team: str | None = None, limit: int = 1000) -> list[LedgerRecord]: ...

    # objects created through the gateway: who owns them. A record older than OBJECT_RETENTION_S (by the
    # store's clock) reads as missing; delete_object only marks a record (True if it existed).
    async def put_object(self, record: ObjectRecord) -> None: ...
    async def find_objects(self, kind: str, object_ids: Sequence[str]) -> dict[str, ObjectRecord]: ...
    async def delete_object(self, kind: str, object_id: str) -> bool: ...

    # histograms (proxy/observed.py): per key, a count per bucket, added to atomically (one call, one atomic
    # write); a key past its expires_at (epoch seconds, by the store's clock) reads as empty, and an add to it
    # starts it afresh (an add whose expires_at has passed writes nothing). The key starts with the hash tag.
    async def add_histogram(self, key: str, increments: Mapping[int, int], expires_at: float) -> None: ...
    async def histograms(self, keys: Sequence[str]) -> dict[str, dict[int, int]]: ...  # every key asked ({}: none)

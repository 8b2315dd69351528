"""Reserve the worst case before forwarding, settle what was used after (tensorzero's flow, in integers)::

    limits = every budget / TPM / RPM / concurrency limit of the team and of the key   (BudgetsInForce)
    reserve(worst case: counted input + output cap, priced at the tier that applies)  all or nothing
    ... forward ...
    settle(actual: provider usage, else counted)  commit what was used, release the rest

A reservation is a lease: if this process dies before settling, the reaper charges the lease in full once
it expires (``lease_seconds``) and records it in the ledger from the lease's ``LeaseMeta``.

``on_store_error``: ``closed`` answers 503 while the store is unreachable. ``open`` admits against a
process-local memory store (so limits still hold per replica), and queues what was used; once the store
answers again ``reconcile`` adds the queued usage there, so nothing served meanwhile is lost.

The downgrade decision (``downgrade_target``) reads the committed usage this process last saw in a reserve
answer, plus what it settled since: no store round trip on the hot path, per counter (so per team and key).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .budgets import BudgetsInForce
from .errors import StoreUnavailable
from .ids import ids
from .limits import Limit, Subject, charges, holds, tag
from .observed import Sizing, largest_hold, observed_holds
from .observed_outputs import ObservedOutputs
from .refusals import denial, rate_limit_headers
from .settings import BudgetSettings, Settings
from .store.base import Admitted, Denied, Lease, Store
from .values import value

log = logging.getLogger("quotagate.settle")
_HELD = ("tokens", "usd")  # the units a request holds its size of (requests and slots hold 1)
_SEEN_MAX = 100_000  # window keys roll over; past this many, drop the old ones wholesale
# (team, key digest, the limits in force, the store's answer): called on the hot path, so it must not block
Watch = Callable[[str, str, Sequence[Limit], Admitted | Denied], None]


@value
class LeaseMeta:
    """What the ledger needs to record a lease the reaper charges (its process died before settling).

    Stored in the lease as JSON (``Lease.meta``): the store keeps it without reading it."""

    request_id: str
    ts: float  # epoch seconds at arrival
    team: str
    key_name: str
    model: str
    provider: str
    endpoint: str
    stream: bool
    counted_input: int | None
    worst_tokens: int
    worst_micro_usd: int
    end_user: str | None = None  # who and what it was for, as recorded (proxy/attribution.py)
    tags: str | None = None

    def to_json(self) -> dict[str, Any]:
        out = {  # by hand: dataclasses.asdict deep-copies, and this runs once per request
            "request_id": self.request_id,
            "ts": self.ts,
            "team": self.team,
            "key_name": self.key_name,
            "model": self.model,
            "provider": self.provider,
            "endpoint": self.endpoint,
            "stream": self.stream,
            "counted_input": self.counted_input,
            "worst_tokens": self.worst_tokens,
            "worst_micro_usd": self.worst_micro_usd,
        }
        if self.end_user is not None:
            out["end_user"] = self.end_user
        if self.tags is not None:
            out["tags"] = self.tags
        return out

    @classmethod
    def from_json(cls, m: Mapping[str, Any]) -> LeaseMeta:
        """Leniently: a lease written by an older version, or with no meta, still reads (unknowns empty)."""
        counted = m.get("counted_input")
        return cls(
            request_id=str(m.get("request_id", "")),
            ts=float(m.get("ts", 0.0)),
            team=str(m.get("team", "")),
            key_name=str(m.get("key_name", "")),
            model=str(m.get("model", "")),
            provider=str(m.get("provider", "")),
            endpoint=str(m.get("endpoint", "")),
            stream=bool(m.get("stream", False)),
            counted_input=int(counted) if counted is not None else None,
            worst_tokens=int(m.get("worst_tokens", 0)),
            worst_micro_usd=int(m.get("worst_micro_usd", 0)),
            end_user=_text(m.get("end_user")),
            tags=_text(m.get("tags")),
        )


def _text(v: Any) -> str | None:
    return v if isinstance(v, str) else None


@dataclass(slots=True)
class Reservation:
    lease_id: str
    hash_tag: str
    limits: tuple[Limit, ...]
    local: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    past_warn: BudgetSettings | None = None  # a budget with downgrade_to whose used share, per this answer, >= warn_at
    team: str = ""  # whose output histogram a served request adds to (proxy/observed.py)
    model: str = ""
    reserved_tokens: int = 0  # x-quotagate-reserved-tokens: the largest token or USD hold, in tokens (observed.py)


class Reservations:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        local: Store,
        budgets: BudgetsInForce,
        *,
        clock: Callable[[], float] = time.time,
        watch: Watch | None = None,
    ) -> None:
        self._s = settings
        self._store = store
        self._local = local
        self._budgets = budgets
        self._clock = clock
        self._watch = watch  # shown every answer of the shared store (proxy/notify.py: threshold crossings)
        self._ids = ids("l-")
        self._pending_usage: list[tuple[str, dict[str, int], dict[str, float]]] = []
        self._pending_settles: list[tuple[str, str, dict[str, int]]] = []
        # counter key -> committed usage last seen in a reserve answer (plus what this process settled since)
        self._seen_used: dict[str, int] = {}
        self.observed = ObservedOutputs(settings, store, clock=clock)  # flushed/refreshed by the reaper loop

    async def reserve(
        self,
        team: str,
        key_digest: str,
        model: str,
        worst_tokens: int,
        worst_micro_usd: int,
        meta: LeaseMeta | Mapping[str, Any],
        subject: Subject | None = None,
        *,
        sizing: Sizing | None = None,
    ) -> Reservation | None:
        """Hold the worst case on every limit in force (the observed amount on those in ``reserve: observed``
        mode, given the request's ``sizing``: proxy/observed.py) (the request's ``subject`` included: its end user,
        tags and model), all or nothing; None when no limit applies.

        Raises the refusal (BudgetExceeded, RateLimited) or, ``on_store_error: closed``, StoreUnavailable."""
        now = self._clock()
        lims = self._budgets.limits(team, key_digest, now, subject)
        if not lims:
            return None
        body = meta.to_json() if isinstance(meta, LeaseMeta) else meta
        expires = now + self._s.lease_seconds
        sized = self._sized(team, model, lims, sizing) if sizing is not None and self._budgets.observed else {}
        if sized:
            top = largest_hold(lims, (worst_tokens, worst_micro_usd), sized)
            if top is not None:  # what the reaper records for a lease left unsettled: its largest hold
                body = {**body, "worst_tokens": top[0], "worst_micro_usd": top[1]}
        else:
            top = (worst_tokens, worst_micro_usd) if any(lim.unit in _HELD for lim in lims) else None
        lease = Lease(next(self._ids), tag(team), holds(lims, worst_tokens, worst_micro_usd, sized), expires, body)
        local = False
        try:
            result = await self._store.reserve(lease)
        except StoreUnavailable as e:
            if self._s.on_store_error == "closed":
                log.error("store unreachable, refusing requests (on_store_error: closed): %s", e)
                raise StoreUnavailable(
                    "The gateway's quota store is unreachable, so budgets cannot be enforced; requests are "
                    "refused until it is back (on_store_error: closed). Please try again shortly."
                ) from None
            log.warning("store unreachable: admitting on the local store (on_store_error: open)")
            result = await self._local.reserve(lease)
            local = True
        if self._watch is not None and not local and self._budgets.notifying:
            self._watch(team, key_digest, lims, result)
        if isinstance(result, Denied):
            raise denial(team, model, lims, result, now)
        past = self._observe(lims, result, model)
        headers = rate_limit_headers(lims, result, now)
        held = top[0] if top is not None else 0
        return Reservation(lease.id, lease.hash_tag, tuple(lims), local, headers, past, team, model, held)

    def _sized(self, team: str, model: str, lims: Sequence[Limit], sizing: Sizing) -> dict[str, tuple[int, int]]:
        """The observed holds (limit key -> tokens, micro-USD) of the limits in observed mode; no I/O."""
        return observed_holds(lims, self._s.teams.get(team), sizing, lambda: self.observed.output(team, model))

    async def settle(self, res: Reservation, tokens: int, micro_usd: int, output_tokens: int | None = None) -> None:
        """Commit what was used on every counter the reservation holds, release the rest; ``output_tokens``
        (a request served to its end) go into the output histogram of its team and model."""
        if output_tokens is not None and res.team and self._budgets.observed:
            self.observed.record(res.team, res.model, output_tokens)
        ch = charges(res.limits, tokens, micro_usd)
        if res.local:
            await self._local.settle(res.lease_id, res.hash_tag, ch)
            expires = {lim.key: lim.hold(0).expires_at for lim in res.limits}
            self._pending_usage.append((res.hash_tag, {k: v for k, v in ch.items() if v}, expires))
            return
        for key, amount in ch.items():
            if amount and key in self._seen_used:
                self._seen_used[key] += amount
        await self._write_settle(res.lease_id, res.hash_tag, ch)

    async def release(self, res: Reservation) -> None:
        """Give a reservation back unused (nothing is charged), e.g. to reserve again for a cheaper model."""
        ch = dict.fromkeys((lim.key for lim in res.limits), 0)
        if res.local:
            await self._local.settle(res.lease_id, res.hash_tag, ch)
            return
        await self._write_settle(res.lease_id, res.hash_tag, ch)

    async def _write_settle(self, lease_id: str, hash_tag: str, ch: dict[str, int]) -> None:
        try:
            await self._store.settle(lease_id, hash_tag, ch)
        except StoreUnavailable:
            self._pending_settles.append((lease_id, hash_tag, ch))

    def renew_at(self, res: Reservation | None) -> float:
        """Monotonic time at which a long stream should extend its lease (a third of the lease)."""
        return float("inf") if res is None or res.local else time.monotonic() + self._s.lease_seconds / 3

    async def extend(self, res: Reservation) -> None:
        """Keep a long stream's lease alive; a store hiccup here only means the reaper may charge it in full."""
        try:
            await self._store.extend(res.lease_id, res.hash_tag, self._clock() + self._s.lease_seconds)
        except StoreUnavailable:
            log.warning("could not extend lease %s", res.lease_id)

    # ---- what could not be written while the store was away --------------------------------------------
    async def reconcile(self) -> None:
        """Replay the queued settlements, then add what was admitted locally; raises StoreUnavailable (and
        keeps the rest queued, in order) while the store is still away."""
        while self._pending_settles:
            lease_id, htag, ch = self._pending_settles[0]
            await self._store.settle(lease_id, htag, ch)
            self._pending_settles.pop(0)
        while self._pending_usage:
            htag, ch, expires = self._pending_usage[0]
            await self._store.add_usage(htag, ch, expires)
            self._pending_usage.pop(0)

    @property
    def pending(self) -> int:
        return len(self._pending_settles) + len(self._pending_usage)

    # ---- downgrade knowledge ----------------------------------------------------------------------------
    def downgrade_target(self, team: str, key_digest: str, model: str) -> BudgetSettings | None:
        """The first budget with ``downgrade_to`` (another model than ``model``) whose used share, as last
        seen by this process (reserve answers and its own settlements), is at or past ``warn_at``. No I/O."""
        for lim in self._budgets.limits(team, key_digest, self._clock()):
            b = lim.budget
            if b is None or b.downgrade_to is None or b.downgrade_to == model or b.warn_at is None:
                continue
            if self._seen_used.get(lim.key, 0) >= b.warn_at * lim.limit:
                return b
        return None

    def _observe(self, lims: Sequence[Limit], admitted: Admitted, model: str) -> BudgetSettings | None:
        """Remember committed usage from a reserve answer; the budget past ``warn_at`` it shows, if any."""
        past: BudgetSettings | None = None
        for lim in lims:
            b = lim.budget
            v = admitted.values.get(lim.key)
            if b is None or b.downgrade_to is None or v is None:
                continue
            self._seen_used[lim.key] = v.used
            if past is None and b.downgrade_to != model and b.warn_at is not None and v.used >= b.warn_at * lim.limit:
                past = b
        if len(self._seen_used) > _SEEN_MAX:
            self._seen_used.clear()
        return past

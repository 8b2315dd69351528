"""Reserve the worst case before forwarding, settle what was used after; leases, reaping, reconciliation.

Flow for one request (tensorzero's rate-limiting flow, in integers)::

    limits = every budget / TPM / RPM / concurrency limit of the team and of the key
    reserve(worst case: counted input + output cap, priced at the tier that applies)  all or nothing
    ... forward ...
    settle(actual: provider usage, else counted)  commit what was used, release the rest

A reservation is a lease: if this process dies before settling, ``reap`` charges the lease in full
once it expires (``lease_seconds``), and records it in the ledger.

``on_store_error``: ``closed`` answers 503 while the store is unreachable. ``open`` admits against a
process-local memory store (so limits still hold per replica), and queues what was used; once the
store answers again the queued usage is added there, so nothing served meanwhile is lost.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .errors import BudgetExceeded, ProxyError, RateLimited, StoreUnavailable
from .limits import Limit, charges, go_duration, holds, limits_for, tag
from .settings import BudgetSettings, KeySettings, RateLimitSettings, Settings
from .store.base import Admitted, CounterValue, Denied, Lease, LedgerRecord, Store
from .units import human_amount, rfc3339, usd

log = logging.getLogger("quotagate.settle")
_NO_RATES = RateLimitSettings()


@dataclass(slots=True)
class Reservation:
    lease_id: str
    hash_tag: str
    limits: tuple[Limit, ...]
    local: bool = False
    headers: dict[str, str] = field(default_factory=dict)
    past_warn: BudgetSettings | None = None  # a budget with downgrade_to whose used share, per this answer, >= warn_at


@dataclass(frozen=True, slots=True)
class BudgetSample:
    """One team budget's current window, read from the store at scrape time (``usd`` in micro-USD)."""

    team: str
    window: str
    unit: str
    limit: int
    used: int
    reserved: int


class Accountant:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        local: Store,
        *,
        clock: Callable[[], float] = time.time,
        on_reaped: Callable[[LedgerRecord], None] | None = None,
    ) -> None:
        self._s = settings
        self._store = store
        self._local = local
        self._clock = clock
        self._on_reaped = on_reaped
        self._keys: dict[str, KeySettings] = {k.digest: k for k in settings.keys}
        self._overrides: dict[str, tuple[BudgetSettings, ...]] = {}
        self._pending_usage: list[tuple[str, dict[str, int], dict[str, float]]] = []
        self._pending_settles: list[tuple[str, str, dict[str, int]]] = []
        # counter key -> committed usage last seen in a reserve answer (plus what this process settled since):
        # the downgrade decision reads it without a store round trip, per (team, key) by construction
        self._seen_used: dict[str, int] = {}
        self._overrides_due = 0.0
        self.tags: set[str] = {tag(t) for t in settings.teams}
        self._ids = ids("l-")
        self._limits_minute = -1
        self._limits_cache: dict[tuple[str, str], list[Limit]] = {}

    # ---- budgets in force -------------------------------------------------------------------------------
    def team_budgets(self, team: str) -> tuple[BudgetSettings, ...]:
        if team in self._overrides:
            return self._overrides[team]
        t = self._s.teams.get(team)
        return t.budgets if t is not None else ()

    async def load_overrides(self) -> bool:
        """Read the runtime overrides every process shares; True when they changed since the last read."""
        raw = await self._store.get_overrides()
        fresh = {t: tuple(BudgetSettings.model_validate(b) for b in bs) for t, bs in raw.items()}
        if fresh == self._overrides:
            return False
        changed = sorted(t for t in fresh.keys() | self._overrides.keys() if fresh.get(t) != self._overrides.get(t))
        self._overrides = fresh
        self._limits_minute = -1  # rebuild the limits with the new budgets
        log.info("budget overrides in force for teams %s", ", ".join(changed))
        return True

    async def set_override(self, team: str, budgets: Sequence[BudgetSettings]) -> None:
        await self._store.set_override(team, [b.model_dump(mode="json", exclude_none=True) for b in budgets])
        self._overrides[team] = tuple(budgets)
        self._limits_minute = -1  # rebuild the limits with the new budgets

    def limits(self, team: str, key_digest: str, now: float) -> list[Limit]:
        """The limits in force; every window boundary is a minute boundary, so they are built once a minute."""
        minute = int(now // 60)
        if minute != self._limits_minute:
            self._limits_minute, self._limits_cache = minute, {}
        hit = self._limits_cache.get((team, key_digest))
        if hit is None:
            hit = self._limits_cache[(team, key_digest)] = self._build_limits(team, key_digest, now)
        return hit

    def _build_limits(self, team: str, key_digest: str, now: float) -> list[Limit]:
        t = self._s.teams.get(team)
        k = self._keys.get(key_digest)
        return limits_for(
            team,
            key_digest,
            self.team_budgets(team),
            t.rate_limits if t is not None else _NO_RATES,
            k.budgets if k is not None else (),
            k.rate_limits if k is not None else _NO_RATES,
            now,
        )

    def downgrade_target(self, team: str, key_digest: str, model: str) -> BudgetSettings | None:
        """The first budget with ``downgrade_to`` (another model than ``model``) whose used share, as last
        seen by this process (reserve answers and its own settlements), is at or past ``warn_at``. No I/O."""
        now = self._clock()
        for lim in self.limits(team, key_digest, now):
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
        if len(self._seen_used) > 100_000:  # window keys roll over; drop the old ones wholesale
            self._seen_used.clear()
        return past

    async def budget_samples(self) -> list[BudgetSample]:
        """Every configured team's budgets in their current window, in one store round trip (for /metrics)."""
        now = self._clock()
        lims = [
            (team, lim)
            for team in self._s.teams
            for lim in self.limits(team, "", now)
            if lim.budget is not None and lim.scope == "team"
        ]
        values = await self._store.counters([lim.key for _, lim in lims]) if lims else {}
        out: list[BudgetSample] = []
        for team, lim in lims:
            v = values.get(lim.key, CounterValue())
            out.append(BudgetSample(team, lim.window or "", lim.unit, lim.limit, v.used, v.reserved))
        return out

    async def budget_status(self, team: str, key_digest: str = "") -> list[dict[str, Any]]:
        """Every budget of a team (and of one of its keys): limit, used, held, remaining, window end."""
        now = self._clock()
        lims = [lim for lim in self.limits(team, key_digest, now) if lim.budget is not None]
        values = await self._store.counters([lim.key for lim in lims]) if lims else {}
        out: list[dict[str, Any]] = []
        for lim in lims:
            v = values.get(lim.key, CounterValue())
            remaining = max(lim.limit - v.used - v.reserved, 0)
            money = lim.unit == "usd"  # limit/used/reserved/remaining are in the unit: tokens, or micro-USD
            out.append(
                {
                    "scope": lim.scope,
                    "window": lim.window,
                    "unit": lim.unit,
                    "limit": lim.limit,
                    "used": v.used,
                    "reserved": v.reserved,
                    "remaining": remaining,
                    "limit_usd": usd(lim.limit) if money else None,
                    "used_usd": usd(v.used) if money else None,
                    "reserved_usd": usd(v.reserved) if money else None,
                    "remaining_usd": usd(remaining) if money else None,
                    "resets_at": rfc3339(lim.window_end),
                    "warn_at": lim.budget.warn_at if lim.budget else None,
                    "downgrade_to": lim.budget.downgrade_to if lim.budget else None,
                }
            )
        return out

    # ---- reserve and settle -----------------------------------------------------------------------------
    async def reserve(
        self,
        team: str,
        key_digest: str,
        model: str,
        worst_tokens: int,
        worst_micro_usd: int,
        meta: Mapping[str, Any],
    ) -> Reservation | None:
        now = self._clock()
        lims = self.limits(team, key_digest, now)
        if not lims:
            return None
        lease = Lease(
            next(self._ids),
            tag(team),
            holds(lims, worst_tokens, worst_micro_usd),
            now + self._s.lease_seconds,
            meta,
        )
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
        if isinstance(result, Denied):
            raise self._denial(team, model, lims, result, now)
        past = self._observe(lims, result, model)
        return Reservation(lease.id, lease.hash_tag, tuple(lims), local, self._headers(lims, result, now), past)

    async def settle(self, res: Reservation, tokens: int, micro_usd: int) -> None:
        ch = charges(res.limits, tokens, micro_usd)
        if res.local:
            await self._local.settle(res.lease_id, res.hash_tag, ch)
            expires = {lim.key: lim.hold(0).expires_at for lim in res.limits}
            self._pending_usage.append((res.hash_tag, {k: v for k, v in ch.items() if v}, expires))
            return
        for key, amount in ch.items():
            if amount and key in self._seen_used:
                self._seen_used[key] += amount
        try:
            await self._store.settle(res.lease_id, res.hash_tag, ch)
        except StoreUnavailable:
            self._pending_settles.append((res.lease_id, res.hash_tag, ch))

    async def release(self, res: Reservation) -> None:
        """Give a reservation back unused (nothing is charged), e.g. to reserve again for a cheaper model."""
        ch = dict.fromkeys((lim.key for lim in res.limits), 0)
        if res.local:
            await self._local.settle(res.lease_id, res.hash_tag, ch)
            return
        try:
            await self._store.settle(res.lease_id, res.hash_tag, ch)
        except StoreUnavailable:
            self._pending_settles.append((res.lease_id, res.hash_tag, ch))

    def renew_at(self, res: Reservation | None) -> float:
        """Monotonic time at which a long stream should extend its lease (a third of the lease)."""
        return float("inf") if res is None or res.local else time.monotonic() + self._s.lease_seconds / 3

    async def extend(self, res: Reservation) -> None:
        """Keep a long stream's lease alive; a store hiccup here only means the reaper may charge it in full."""
        try:
            await self._store.extend(res.lease_id, res.hash_tag, self._clock() + self._s.lease_seconds)
        except StoreUnavailable:
            log.warning("could not extend lease %s", res.lease_id)

    # ---- background: reap expired leases, replay what could not be written ----------------------------
    async def reconcile(self) -> None:
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

    async def reap(self) -> int:
        now = self._clock()
        n = 0
        for htag in sorted(self.tags):
            for lease in await self._store.reap(htag, now):
                n += 1
                if self._on_reaped is not None:
                    self._on_reaped(_reaped_record(lease))
        return n

    async def run(self, interval: float = 1.0) -> None:
        """Background: replay what could not be written, refresh overrides set by any process, reap."""
        reap_every = max(1.0, min(30.0, self._s.lease_seconds / 10))
        refresh_every = self._s.overrides_refresh_seconds
        interval = min(interval, refresh_every)
        next_reap = 0.0
        next_refresh = time.monotonic() + refresh_every
        while True:
            try:
                if self.pending:
                    await self.reconcile()
                if time.monotonic() >= next_refresh:
                    next_refresh = time.monotonic() + refresh_every
                    await self.load_overrides()
                if time.monotonic() >= next_reap:
                    next_reap = time.monotonic() + reap_every
                    await self.reap()
            except StoreUnavailable:
                pass  # try again on the next tick; nothing is dropped
            except Exception:
                log.exception("accounting background task")
            await asyncio.sleep(interval)

    # ---- answers -----------------------------------------------------------------------------------------
    def _denial(self, team: str, model: str, lims: list[Limit], d: Denied, now: float) -> ProxyError:
        err = self._refusal(team, model, lims, d, now)
        err.limit = refusal_limit(next(x for x in lims if x.key == d.hold.key), d)  # for the request's log line
        return err

    def _refusal(self, team: str, model: str, lims: list[Limit], d: Denied, now: float) -> ProxyError:
        lim = next(x for x in lims if x.key == d.hold.key)
        wait = max(lim.window_end - now, 0.0) if lim.window else 1.0
        headers = {"retry-after": str(max(1, math.ceil(wait))), "retry-after-ms": str(int(wait * 1000))}
        used, asked = d.used + d.reserved, d.hold.amount
        if lim.budget is not None:
            what = f"{lim.budget.usd} USD" if lim.unit == "usd" else f"{lim.limit} tokens"

            def amount(v: int) -> str:
                return f"{v / 1e6:.6f} USD" if lim.unit == "usd" else f"{v} tokens"

            return BudgetExceeded(
                "You exceeded your current quota, please check your plan and billing details. "
                f"The {lim.scope} budget of team '{team}' for this {lim.window} ({what}) cannot cover this "
                f"request: used {amount(d.used)}, held by requests in flight {amount(d.reserved)}, this request "
                f"needs up to {amount(asked)}. The budget renews in {go_duration(wait)}.",
                headers=headers,
                downgrade_to=lim.budget.downgrade_to,
            )
        # OpenAI's wording ("Rate limit reached for M in organization O on ..."), the team in place of the
        # organization, so that clients matching on it (LiteLLM: "rate limit") recognise a rate limit.
        who = f"team '{team}'" if lim.scope == "team" else f"team '{team}' (this key's own limit)"
        if lim.unit == "concurrent":
            return RateLimited(
                f"Rate limit reached for {model} in {who} on concurrent requests: Limit {lim.limit}, "
                f"In flight {d.reserved}. Too many concurrent requests; please try again in 1s.",
                kind="requests",
                headers={"retry-after": "1", "retry-after-ms": "1000"},
            )
        per = "tokens per min (TPM)" if lim.unit == "tokens" else "requests per min (RPM)"
        kind = "tokens" if lim.unit == "tokens" else "requests"
        headers.update(self._headers(lims, None, now, denied=d))
        if asked > lim.limit:
            headers["x-should-retry"] = "false"  # waiting cannot help
            return RateLimited(
                f"Request too large for {model} in {who} on {per}: Limit {lim.limit}, Requested {asked}. "
                "The input or output tokens must be reduced in order to run successfully.",
                kind=kind,
                headers=headers,
            )
        return RateLimited(
            f"Rate limit reached for {model} in {who} on {per}: Limit {lim.limit}, Used {used}, "
            f"Requested {asked}. Please try again in {go_duration(wait)}.",
            kind=kind,
            headers=headers,
        )

    def _headers(
        self, lims: list[Limit], admitted: Admitted | None, now: float, *, denied: Denied | None = None
    ) -> dict[str, str]:
        """OpenAI's x-ratelimit-* headers for the team's per-minute limits, from the reserve's answer."""
        values: Mapping[str, CounterValue] = admitted.values if admitted is not None else {}
        out: dict[str, str] = {}
        for lim in lims:
            if lim.scope != "team" or lim.window != "minute" or lim.budget is not None:
                continue
            kind = "tokens" if lim.unit == "tokens" else "requests"
            v = values.get(lim.key)
            if denied is not None and denied.hold.key == lim.key:
                v = CounterValue(denied.used, denied.reserved)
            out[f"x-ratelimit-limit-{kind}"] = str(lim.limit)
            if v is not None:
                out[f"x-ratelimit-remaining-{kind}"] = str(max(lim.limit - v.used - v.reserved, 0))
            out[f"x-ratelimit-reset-{kind}"] = go_duration(max(lim.window_end - now, 0.0))
        return out


def refusal_limit(lim: Limit, d: Denied) -> str:
    """The limit that refused, in a few words: ``budget team day tokens used 1.9M/2M held 40K asked 120K``."""

    def h(v: int) -> str:
        return human_amount(v, lim.unit)

    if lim.unit == "concurrent":
        return f"concurrent {lim.scope} {d.reserved}/{lim.limit} in flight"
    what = f"budget {lim.scope} {lim.window} {lim.unit}" if lim.budget is not None else f"{lim.scope} "
    if lim.budget is None:
        what += "tpm" if lim.unit == "tokens" else "rpm"
    return f"{what} used {h(d.used)}/{h(lim.limit)} held {h(d.reserved)} asked {h(d.hold.amount)}"


def ids(kind: str) -> Iterator[str]:
    """Unique ids without a uuid4 per request: a random per-process prefix and a counter."""
    prefix = f"{kind}{os.urandom(6).hex()}-"
    return (f"{prefix}{n:x}" for n in itertools.count(1))


def _reaped_record(lease: Lease) -> LedgerRecord:
    m = lease.meta
    return LedgerRecord(
        request_id=str(m.get("request_id", lease.id)),
        ts=float(m.get("ts", 0.0)),
        team=str(m.get("team", "")),
        key_name=str(m.get("key_name", "")),
        model=str(m.get("model", "")),
        provider=str(m.get("provider", "")),
        endpoint=str(m.get("endpoint", "")),
        stream=bool(m.get("stream", False)),
        status=0,
        outcome="lease_expired",
        counted_input=m.get("counted_input"),
        counted_output=int(m.get("worst_tokens", 0)) - int(m.get("counted_input") or 0),
        input_tokens=None,
        cached_input_tokens=None,
        output_tokens=None,
        reasoning_tokens=None,
        cost_micro_usd=int(m.get("worst_micro_usd", 0)),
        latency_ms=None,
        ttft_ms=None,
        error="lease expired unsettled (replica died?): charged the full reservation",
    )

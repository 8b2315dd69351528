"""Budgets in force: the config's, unless a runtime override (set by any process, kept in the store)
replaces a team's; the limits they and the rate limits make; what each budget has used and held.

Every process re-reads the overrides every ``overrides_refresh_seconds`` (``load_overrides``, from the
reaper's loop), so an override set through one replica reaches the others within that time. Every window
boundary is a minute boundary, so the limits are built once a minute and whenever the budgets change.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from .limits import Limit, Subject, Unit, limits_for, subject_limits
from .settings import BudgetSettings, KeySettings, RateLimitSettings, Settings, Window
from .store.base import CounterValue, Store, hash_tag
from .units import rfc3339, usd
from .values import value

log = logging.getLogger("quotagate.settle")
_NO_RATES = RateLimitSettings()


@value
class BudgetSample:
    """One team budget's current window, read from the store at scrape time (``usd`` in micro-USD)."""

    team: str
    window: str
    unit: str
    limit: int
    used: int
    reserved: int


@value
class BudgetStatus:
    """One budget in its current window. ``limit``, ``used``, ``reserved`` and ``remaining`` are in the
    budget's unit (tokens, or integer micro-USD); the ``*_usd`` dollars exist for ``usd`` budgets only."""

    scope: str  # org | team | key | end_user | tag | model
    window: Window | None
    unit: Unit
    limit: int
    used: int
    reserved: int  # held by requests in flight
    remaining: int
    resets_at: float  # epoch seconds: the end of the window (a rolling one: when its oldest usage is freed)
    warn_at: float | None
    downgrade_to: str | None
    rolling: str | None = None  # a rolling budget's length (``24h``); window is None then

    @property
    def limit_usd(self) -> float | None:
        return self._dollars(self.limit)

    @property
    def used_usd(self) -> float | None:
        return self._dollars(self.used)

    @property
    def reserved_usd(self) -> float | None:
        return self._dollars(self.reserved)

    @property
    def remaining_usd(self) -> float | None:
        return self._dollars(self.remaining)

    def _dollars(self, micro_usd: int) -> float | None:
        return usd(micro_usd) if self.unit == "usd" else None

    def to_json(self) -> dict[str, Any]:
        """The one rendering (``GET /v1/usage``, ``/admin/*``, ``quotagate budgets show``): see proxy/units.py."""
        return {
            "scope": self.scope,
            "window": self.window,
            "rolling": self.rolling,
            "unit": self.unit,
            "limit": self.limit,
            "used": self.used,
            "reserved": self.reserved,
            "remaining": self.remaining,
            "limit_usd": self.limit_usd,
            "used_usd": self.used_usd,
            "reserved_usd": self.reserved_usd,
            "remaining_usd": self.remaining_usd,
            "resets_at": rfc3339(self.resets_at),
            "warn_at": self.warn_at,
            "downgrade_to": self.downgrade_to,
        }


def status_of(lim: Limit, value: CounterValue) -> BudgetStatus:
    b = lim.budget
    return BudgetStatus(
        scope=lim.scope,
        window=lim.window,
        unit=lim.unit,
        limit=lim.limit,
        used=value.used,
        reserved=value.reserved,
        remaining=max(lim.limit - value.used - value.reserved, 0),
        resets_at=lim.window_end,
        warn_at=b.warn_at if b is not None else None,
        downgrade_to=b.downgrade_to if b is not None else None,
        rolling=lim.rolling or None,
    )


def configured_budgets(s: Settings) -> Iterator[BudgetSettings]:
    """Every budget the config sets: the org's, each team's and its levels' (end users, models, tags), each
    key's (not runtime overrides)."""
    yield from s.org.budgets
    for t in s.teams.values():
        yield from t.budgets
        yield from t.end_user_budgets
        for level in (*t.end_users.values(), *t.model_limits.values()):
            yield from level.budgets
        for budgets in t.tags.budgets.values():
            yield from budgets
    for k in s.keys:
        yield from k.budgets


class BudgetsInForce:
    def __init__(self, settings: Settings, store: Store, *, clock: Callable[[], float] = time.time) -> None:
        self._s = settings
        self._store = store
        self._clock = clock
        self._keys: dict[str, KeySettings] = {k.digest: k for k in settings.keys}
        self._overrides: dict[str, tuple[BudgetSettings, ...]] = {}
        self._limits_minute = -1
        self._limits_cache: dict[tuple[str, str], list[Limit]] = {}
        self._uses()

    def _uses(self) -> None:
        """What the budgets in force use, so that the request path skips what none of them does:
        ``observed`` (a ``reserve: observed`` team or budget), ``notifying`` (a budget with ``notify_at``)."""
        budgets = [*configured_budgets(self._s), *(b for bs in self._overrides.values() for b in bs)]
        self.observed = any(b.reserve == "observed" for b in budgets) or any(
            t.reserve == "observed" for t in self._s.teams.values()
        )
        self.notifying = any(b.notify_at for b in budgets)

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
        self._uses()
        self._limits_minute = -1  # rebuild the limits with the new budgets
        log.info("budget overrides in force for teams %s", ", ".join(changed))
        return True

    async def set_override(self, team: str, budgets: Sequence[BudgetSettings]) -> None:
        await self._store.set_override(team, [b.model_dump(mode="json", exclude_defaults=True) for b in budgets])
        self._overrides[team] = tuple(budgets)
        self._uses()
        self._limits_minute = -1  # rebuild the limits with the new budgets

    def limits(self, team: str, key_digest: str, now: float, subject: Subject | None = None) -> list[Limit]:
        """The limits in force: the org's, the team's and the key's (built once a minute: every window boundary
        is a minute boundary), then those of the request's ``subject`` (end user, tags, model)."""
        minute = int(now // 60)
        if minute != self._limits_minute:
            self._limits_minute, self._limits_cache = minute, {}
        hit = self._limits_cache.get((team, key_digest))
        if hit is None:
            hit = self._limits_cache[(team, key_digest)] = self._build_limits(team, key_digest, now)
        t = self._s.teams.get(team)
        levels = t is not None and (
            t.end_user_budgets or t.end_users or t.tags.budgets or t.model_limits or t.session_budgets
        )
        if subject is None or t is None or not levels:
            return hit
        return hit + subject_limits(team, t, subject, now)

    def budgeted(self, team: str, key_digest: str) -> bool:
        """A budget (of the org, of the team, runtime overrides included, or of the key) applies to its
        requests, or may (the team budgets some of its end users, tags, models or sessions)."""
        if any(lim.budget is not None for lim in self.limits(team, key_digest, self._clock())):
            return True
        t = self._s.teams.get(team)
        return t is not None and bool(
            t.end_user_budgets
            or any(level.budgets for level in t.end_users.values())
            or t.tags.budgets
            or any(level.budgets for level in t.model_limits.values())
            or t.session_budgets
        )

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
            self._s.org if self._s.org.budgets or self._s.org.rate_limits != _NO_RATES else None,
        )

    async def budget_samples(self) -> list[BudgetSample]:
        """Every configured team's budgets in their current window, in one store round trip (for /metrics)."""
        now = self._clock()
        lims = [
            (team, lim)
            for team in self._s.teams
            for lim in self.limits(team, "", now)
            if lim.budget is not None and lim.scope == "team" and not lim.shadow
        ]
        values = await self._store.counters([lim.key for _, lim in lims]) if lims else {}
        out: list[BudgetSample] = []
        for team, lim in lims:
            v = values.get(lim.key, CounterValue())
            window = lim.window or f"rolling_{lim.rolling}"
            out.append(BudgetSample(team, window, lim.unit, lim.limit, v.used, v.reserved))
        return out

    async def reset(self, team: str, window: Window, unit: Unit | None = None) -> int:
        """Start a team's budgets on ``window`` (and ``unit``) over in their current window, which does not move:
        what they used goes back to zero, what requests in flight hold stays held. Relative (``used -= what
        was read``, one atomic add per store), so a request settling meanwhile stays charged. Returns how many
        budgets matched."""
        lims = [
            lim
            for lim in self.limits(team, "", self._clock())
            if lim.budget is not None and lim.scope == "team" and lim.window == window and unit in (None, lim.unit)
        ]
        values = await self._store.counters([lim.key for lim in lims]) if lims else {}
        back = {lim.key: -values[lim.key].used for lim in lims if lim.key in values and values[lim.key].used}
        if back:
            await self._store.add_usage(hash_tag(team), back, {lim.key: lim.hold(0).expires_at for lim in lims})
        return len(lims)

    async def budget_status(self, team: str, key_digest: str = "") -> list[BudgetStatus]:
        """Every budget of a team (and of one of its keys): limit, used, held, remaining, window end."""
        lims = self.limits(team, key_digest, self._clock())
        return await self.statuses([lim for lim in lims if lim.budget is not None and not lim.shadow])

    # the levels view (proxy/usage_view.py): any limits' status, by the clock the limits in force are built by

    def now(self) -> float:
        return self._clock()

    async def statuses(self, lims: Sequence[Limit]) -> list[BudgetStatus]:
        """The status of each of ``lims`` (budgets and rate limits alike), in one store round trip."""
        values = await self._store.counters(list(dict.fromkeys(lim.key for lim in lims))) if lims else {}
        return [status_of(lim, values.get(lim.key, CounterValue())) for lim in lims]

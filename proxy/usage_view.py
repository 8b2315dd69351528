"""Every level that governs a team's requests, with what each has used and has left: the ``levels`` of
``GET /v1/usage`` (the caller's team and key), of ``GET /admin/usage`` and of ``quotagate budgets show --levels``.

The levels: the org, the team, the caller's key, each tag budget of the team (and its tag allow-list), each
model limit of the team, its end users (the terms of the team's default end-user budget, which every end user
gets a counter of, and the top spenders of the current window from the ledger, each with the status of their
own budget: the default or an explicit one) and its session budgets' terms. One entity on request:
``?end_user=ID``, ``?tag=NAME``, ``?session=ID`` (``?top=N``: how many top spenders, 0-100, default 10).

The org's budgets are shown whole: one counter for every team, and a ceiling that refuses this team's
requests too, so what it has left is what the team can count on; its totals name no other team.

Nothing of another team can appear, by construction: every counter read is a limit proxy/limits.py builds for
the caller's team (its hash tag leads the key), the ledger is asked for that team's end users only, and an end
user, tag or session named in the query is one of the caller's team whatever its name (another team's
``alice`` is another counter). Statuses are ``BudgetStatus.to_json``'s, read in one store round trip.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import parse_qsl

from .attribution import MAX_END_USER, MAX_SESSION
from .budgets import BudgetsInForce, BudgetStatus, status_of
from .errors import InvalidRequest, NotFound
from .limits import Limit, Subject, budget_bounds, subject_limits, window_bounds
from .settings import Settings, TeamSettings
from .settings_budget import TAG_NAME
from .store.base import CounterValue
from .store.end_user_spend import EndUserSpend, SpendBy
from .units import rfc3339, usd
from .values import value

TOP_DEFAULT = 10
TOP_MAX = 100
_PARAMS = ("end_user", "tag", "session", "top")
_TERMS = ("scope", "window", "rolling", "unit", "limit", "limit_usd", "resets_at", "warn_at", "downgrade_to")


class TopSpenders(Protocol):
    """The ledger's ranking (proxy/store/end_user_spend.py)."""

    async def top_end_users(
        self, team: str, since: float, limit: int = TOP_DEFAULT, by: SpendBy = "cost"
    ) -> list[EndUserSpend]: ...


@value
class UsageQuery:
    """What a caller asks of the levels beyond the defaults: one end user's, tag's or session's status."""

    end_user: str | None = None
    tag: str | None = None
    session: str | None = None
    top: int = TOP_DEFAULT


def usage_query(
    end_user: str | None = None, tag: str | None = None, session: str | None = None, top: int | str = TOP_DEFAULT
) -> UsageQuery:
    """The query, checked as the gateway reads these names from requests; 400 naming the parameter."""
    if end_user is not None and not 0 < len(end_user) <= MAX_END_USER:
        raise InvalidRequest(f"end_user: give 1 to {MAX_END_USER} characters", param="end_user")
    if tag is not None and not re.fullmatch(TAG_NAME, tag):
        raise InvalidRequest("tag: up to 64 letters, digits and . _ / - (starting with a letter or digit)", param="tag")
    if session is not None and not 0 < len(session) <= MAX_SESSION:
        raise InvalidRequest(f"session: give 1 to {MAX_SESSION} characters", param="session")
    number = top if isinstance(top, int) else int(top) if re.fullmatch(r"\d{1,4}", top) else -1
    if not 0 <= number <= TOP_MAX:
        raise InvalidRequest(f"top: give a whole number from 0 to {TOP_MAX}", param="top")
    return UsageQuery(end_user, tag, session, number)


def parse_usage_query(raw: bytes) -> UsageQuery:
    """``GET /v1/usage``'s query string: each known parameter at most once, nothing else."""
    try:
        pairs = parse_qsl(raw.decode("latin-1"), keep_blank_values=True, errors="strict")
    except (UnicodeDecodeError, ValueError):
        raise InvalidRequest("The query string is not valid UTF-8 percent-encoding.") from None
    seen: dict[str, str] = {}
    for name, text in pairs:
        if name not in _PARAMS:
            raise InvalidRequest(f"Unknown query parameter {name!r}: give {', '.join(_PARAMS)}.", param=name)
        if name in seen:
            raise InvalidRequest(f"{name}: give it once", param=name)
        seen[name] = text
    return usage_query(seen.get("end_user"), seen.get("tag"), seen.get("session"), seen.get("top", TOP_DEFAULT))


class LevelsView:
    """Builds the levels of one team: limits as the gateway builds them, counters read through the budgets
    in force (their clock), the top end users from the ledger."""

    def __init__(self, settings: Settings, budgets: BudgetsInForce, ledger: TopSpenders) -> None:
        self._s = settings
        self._budgets = budgets
        self._ledger = ledger

    async def levels(
        self, team: str, query: UsageQuery = UsageQuery(), key: tuple[str, str] | None = None
    ) -> dict[str, Any]:
        """``{"levels": {...}}``, and ``end_user`` / ``tag`` / ``session`` when the query names one. ``key``: the
        caller's (name, digest) on ``GET /v1/usage`` (``levels.key``); every configured key of the team with a
        limit of its own is in ``levels.keys``."""
        t = self._s.teams.get(team)
        if t is None:
            raise NotFound(f"Unknown team '{team}'.", code="team_not_found")
        if query.tag is not None and t.tags.allowed is not None and query.tag not in t.tags.allowed:
            raise NotFound(f"Team '{team}' allows no tag '{query.tag}' (tags.allowed).", code="tag_not_found")
        now = self._budgets.now()
        ranking = _ranking(t, now)
        top = await self._ledger.top_end_users(team, ranking.since, query.top, ranking.by) if query.top else []
        read = await self._status(self._groups(team, t, now, query, key, top))
        anyone = _nobody(t)
        levels: dict[str, Any] = {
            "org": {"shared": True, **read["org"]} if "org" in read else None,
            "team": read.get("team", _EMPTY),
            "key": {"name": key[0], **read.get("key", _EMPTY)} if key else None,
            "keys": {name[4:]: group for name, group in read.items() if name.startswith("key:")},
            "tags": {
                "allowed": list(t.tags.allowed) if t.tags.allowed is not None else None,
                "budgets": {n: read[f"tag:{n}"]["budgets"] for n in t.tags.budgets},
            },
            "models": {m: read[f"model:{m}"] for m in t.model_limits},
            "end_users": {
                "default": _terms(_of(team, t, Subject(anyone), now)),
                "explicit": sorted(t.end_users),
                "top": {**ranking.to_json(), "limit": query.top, "end_users": [_spender(t, s, read) for s in top]},
            },
            "sessions": {"ttl": t.session_ttl, **_terms(_of(team, t, Subject(session=anyone), now))},
        }
        out: dict[str, Any] = {"levels": levels}
        if query.end_user is not None:
            out["end_user"] = {"end_user": query.end_user, "budget": _source(t, query.end_user), **read["ask:end_user"]}
        if query.tag is not None:
            out["tag"] = {"tag": query.tag, "budgets": read["ask:tag"]["budgets"]}
        if query.session is not None:
            out["session"] = {"session": query.session, "budgets": read["ask:session"]["budgets"]}
        return out

    def _groups(
        self,
        team: str,
        t: TeamSettings,
        now: float,
        query: UsageQuery,
        key: tuple[str, str] | None,
        top: Sequence[EndUserSpend],
    ) -> dict[str, list[Limit]]:
        """The limits to read, by where they are shown: the org's, the team's and the key's as the gateway holds
        them (runtime overrides included), then those of the team's tags, models, top end users and the query."""
        groups: dict[str, list[Limit]] = {}
        for lim in self._budgets.limits(team, key[1] if key else "", now):
            if not lim.shadow:
                groups.setdefault(lim.scope, []).append(lim)
        for k in (k for k in self._s.keys if k.team == team):
            own = [lim for lim in self._budgets.limits(team, k.digest, now) if lim.scope == "key" and not lim.shadow]
            if own:
                groups[f"key:{k.display_name}"] = own
        groups.update({f"tag:{n}": _of(team, t, Subject(tags=(n,)), now) for n in t.tags.budgets})
        groups.update({f"model:{m}": _of(team, t, Subject(model=m), now) for m in t.model_limits})
        groups.update({f"top:{s.end_user}": _of(team, t, Subject(s.end_user), now) for s in top})
        if query.end_user is not None:
            groups["ask:end_user"] = _of(team, t, Subject(query.end_user), now)
        if query.tag is not None:
            groups["ask:tag"] = _of(team, t, Subject(tags=(query.tag,)), now)
        if query.session is not None:
            groups["ask:session"] = _of(team, t, Subject(session=query.session), now)
        return groups

    async def _status(self, groups: Mapping[str, Sequence[Limit]]) -> dict[str, dict[str, list[dict[str, Any]]]]:
        flat = [lim for lims in groups.values() for lim in lims]
        statuses = iter(await self._budgets.statuses(flat))
        out: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for name, lims in groups.items():
            out[name] = _split([(lim, next(statuses)) for lim in lims])
        return out


_EMPTY: dict[str, list[dict[str, Any]]] = {"budgets": [], "rate_limits": []}


@value
class Ranking:
    """Which spend ranks the end users: since the start of the current window of the team's longest end-user
    budget (default or explicit), in its unit (tokens, else cost); with none, today's (UTC) cost."""

    since: float
    by: SpendBy
    window: str | None
    rolling: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"by": self.by, "window": self.window, "rolling": self.rolling, "since": rfc3339(self.since)}


def _ranking(t: TeamSettings, now: float) -> Ranking:
    budgets = [*t.end_user_budgets, *(b for level in t.end_users.values() for b in level.budgets)]
    if not budgets:
        return Ranking(window_bounds("day", now)[1], "cost", "day")
    longest, since = budgets[0], 0.0
    span = -1.0
    for b in budgets:  # the longest current window; the first of equals
        _, start, end = budget_bounds(b, now)
        if end - start > span:
            longest, since, span = b, start, end - start
    return Ranking(since, "cost" if longest.unit == "usd" else "tokens", longest.window, longest.rolling)


def _of(team: str, t: TeamSettings, subject: Subject, now: float) -> list[Limit]:
    return [lim for lim in subject_limits(team, t, subject, now) if not lim.shadow]


def _nobody(t: TeamSettings) -> str:
    """A name no explicit end user has: the default budget's limits (their counter is never read)."""
    name = "\x00"
    while name in t.end_users:
        name += "\x00"
    return name


def _source(t: TeamSettings, end_user: str) -> str | None:
    """Which budget an end user has: their own (``explicit``), the team's ``default``, or none."""
    if end_user in t.end_users:
        return "explicit"
    return "default" if t.end_user_budgets else None


def _spender(t: TeamSettings, s: EndUserSpend, read: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    return {
        "end_user": s.end_user,
        "requests": s.requests,
        "tokens": s.tokens,
        "cost_usd": usd(s.cost_micro_usd),
        "cost_micro_usd": s.cost_micro_usd,
        "budget": _source(t, s.end_user),
        **read[f"top:{s.end_user}"],
    }


def _render(lim: Limit, status: BudgetStatus) -> dict[str, Any]:
    doc = status.to_json()
    if lim.unit == "concurrent" or (lim.scope == "session" and lim.window is None and not doc.get("rolling")):
        doc["resets_at"] = None  # in flight: never resets; a session's life: forgotten session_ttl after its last use
    return doc


def _split(pairs: Sequence[tuple[Limit, BudgetStatus]]) -> dict[str, list[dict[str, Any]]]:
    """Budgets apart from rate limits (per minute, in flight)."""
    return {
        "budgets": [_render(lim, s) for lim, s in pairs if lim.budget is not None],
        "rate_limits": [_render(lim, s) for lim, s in pairs if lim.budget is None],
    }


def _terms(lims: Sequence[Limit]) -> dict[str, list[dict[str, Any]]]:
    """What each end user (each session) gets, without anyone's usage."""
    zero = [(lim, status_of(lim, CounterValue())) for lim in lims]
    return {k: [{f: d.get(f) for f in _TERMS} for d in docs] for k, docs in _split(zero).items()}

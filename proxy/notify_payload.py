"""What a budget notification says: one ``Crossing`` (a budget's used share reached one of its ``notify_at``
thresholds in its current window), rendered as quotagate's JSON event or as a Slack message. No I/O.

The JSON event follows proxy/units.py: ``limit`` and ``used`` in the budget's unit (tokens, or integer
micro-USD, as ``GET /v1/usage`` gives them), dollars in ``*_usd`` (null for token budgets), times as RFC 3339
UTC. ``id`` is the same for every delivery of one crossing (and sent as ``x-quotagate-event-id``), so a
receiver can drop a retried delivery it already has. No key, provider secret or request content is sent.
"""

from __future__ import annotations

import hashlib
from typing import Any

import orjson

from .units import human_amount, human_count, rfc3339, usd
from .values import value

EVENT = "budget.threshold_crossed"
_LEVEL = {"end_user": "end user", "tag": "tag", "model": "model"}


@value
class Crossing:
    key: str  # the claim key: the counter's (which names the window instance) + the threshold
    scope: str  # org | team | key | end_user | tag | model
    team: str  # "" for the org's budgets (one counter for every team)
    entity: str  # the key's name, the end user, tag or model; "" for org and team budgets
    window: str  # day, month, ...
    window_id: str  # 2026-11-24, 2026-11, 2026-W48, ...
    window_start: float
    window_end: float
    unit: str  # tokens | usd
    limit: int  # tokens, or micro-USD
    used: int  # committed, as the store last answered
    threshold: float  # the used fraction crossed: 0.8
    at: float  # epoch seconds: when this process saw it

    @property
    def event_id(self) -> str:
        return hashlib.sha256(self.key.encode()).hexdigest()[:32]

    @property
    def percent(self) -> str:
        return f"{self.threshold * 100:g}%"


def whose(c: Crossing) -> str:
    """The budget's owner, worded as a refusal words it (proxy/refusals.py)."""
    if c.scope == "org":
        return "The organisation's budget"
    if c.scope == "team":
        return f"The team budget of team '{c.team}'"
    if c.scope == "key":
        return f"The budget of key '{c.entity}' in team '{c.team}'"
    return f"The budget of {_LEVEL.get(c.scope, c.scope)} '{c.entity}' in team '{c.team}'"


def summary(c: Crossing) -> str:
    """``The team budget of team 'search' for this day (2026-11-24) reached 80%: used $8.12 of $10.00; it
    renews at 2026-11-25T00:00:00.000Z.``"""
    return (
        f"{whose(c)} for this {c.window} ({c.window_id}) reached {c.percent}: used {_amount(c.used, c.unit)} "
        f"of {_amount(c.limit, c.unit)}; it renews at {rfc3339(c.window_end)}."
    )


def _amount(v: int, unit: str) -> str:
    return human_amount(v, unit) if unit == "usd" else f"{human_count(v)} tokens"


def event(c: Crossing) -> dict[str, Any]:
    dollars = c.unit == "usd"
    return {
        "event": EVENT,
        "id": c.event_id,
        "at": rfc3339(c.at),
        "scope": c.scope,
        "team": c.team or None,
        "entity": c.entity or None,
        "window": c.window,
        "window_id": c.window_id,
        "window_start": rfc3339(c.window_start),
        "window_end": rfc3339(c.window_end),
        "unit": c.unit,
        "threshold": c.threshold,
        "limit": c.limit,
        "used": c.used,
        "limit_usd": usd(c.limit) if dollars else None,
        "used_usd": usd(c.used) if dollars else None,
        "used_fraction": round(c.used / c.limit, 4) if c.limit else None,
        "message": summary(c),
    }


def slack(c: Crossing) -> dict[str, Any]:
    """A Slack incoming-webhook message (also read by Mattermost, Rocket.Chat): ``text`` for notifications
    and clients without blocks, and the same in blocks with the window's details."""
    icon = ":rotating_light:" if c.threshold >= 1 else ":warning:"
    text = f"{icon} {summary(c)}"
    details = f"{c.scope} budget · {c.window} {c.window_id} · threshold {c.percent} · event {c.event_id[:12]}"
    return {
        "text": text,
        "blocks": [
            {"type": "section", "text": {"type": "mrkdwn", "text": text}},
            {"type": "context", "elements": [{"type": "mrkdwn", "text": details}]},
        ],
    }


def body(c: Crossing, fmt: str) -> bytes:
    return orjson.dumps(slack(c) if fmt == "slack" else event(c))

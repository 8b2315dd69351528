"""Budgets and rate limits, at every level a request can be governed at: a budget (a limit in tokens or USD
over a calendar window, and the calendar it follows), rate limits, and the levels beyond team and key
(``org``; a team's end users, tags and models: ``Level``, ``TagSettings``).

Windows align to the calendar of ``timezone`` (an IANA name; default UTC): a day starts at local midnight, so
a day across a DST change lasts 23 or 25 hours. ``week`` windows start on ``week_start`` (default Monday),
``quarter`` windows on the first of ``quarter_start_month`` and every third month after it (a fiscal year
starting in April: 4). A ``rolling`` budget (``rolling: 24h``) limits any trailing span of that length
instead of a calendar window (proxy/limits.py ``rolling_limits``). Re-exported by proxy/settings.py.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import TYPE_CHECKING, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Window = Literal["minute", "hour", "day", "week", "month", "quarter"]
ROLLING = r"^[1-9]\d*(m|h|d)$"  # a rolling window's length: whole minutes at least
TAG_NAME = r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,63}$"  # a tag a budget or an allow-list names
Weekday = Literal["monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday"]
WEEKDAYS: tuple[Weekday, ...] = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
# how a budget is held before forwarding (proxy/observed.py): the worst case, or the output observed so far
ReserveMode = Literal["worst_case", "observed"]


class _Amount:
    """A budget's amount, in exactly one unit: ``tokens``, or ``usd`` (read as integer micro-USD)."""

    if TYPE_CHECKING:
        tokens: int | None
        usd: Decimal | None

    def _check_amount(self) -> None:
        if (self.tokens is None) == (self.usd is None):
            raise ValueError("give exactly one of `tokens` or `usd`")

    @property
    def unit(self) -> Literal["tokens", "usd"]:
        return "tokens" if self.tokens is not None else "usd"

    @property
    def limit(self) -> int:
        """Tokens, or micro-USD."""
        if self.tokens is not None:
            return self.tokens
        assert self.usd is not None
        return int(self.usd * 1_000_000)


class BudgetSettings(_Amount, BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    window: Window | None = None
    rolling: str | None = Field(default=None, pattern=ROLLING)  # a trailing window (``24h``) instead of ``window``
    tokens: int | None = Field(default=None, gt=0)
    usd: Decimal | None = Field(default=None, gt=0)
    warn_at: float | None = Field(default=None, gt=0, lt=1)
    downgrade_to: str | None = None
    # used fractions at which the budget's owners are notified, once per window each (proxy/notify.py)
    notify_at: tuple[float, ...] = ()
    timezone: str | None = None  # IANA name; None: UTC
    week_start: Weekday = "monday"
    quarter_start_month: int = Field(default=1, ge=1, le=12)
    reserve: ReserveMode | None = None  # None: the team's `reserve` (worst_case for org budgets)

    @model_validator(mode="after")
    def _one_unit(self) -> BudgetSettings:
        self._check_amount()
        if (self.window is None) == (self.rolling is None):
            raise ValueError("give exactly one of `window` (a calendar window) or `rolling` (a trailing one: 24h)")
        if self.rolling is not None and self.timezone is not None:
            raise ValueError("`timezone` applies to calendar windows (`window`), not to `rolling` ones")
        if self.downgrade_to is not None and self.warn_at is None:
            raise ValueError("`downgrade_to` needs `warn_at` (the used fraction past which to downgrade)")
        if self.timezone is not None:
            try:
                ZoneInfo(self.timezone)
            except (ZoneInfoNotFoundError, ValueError):
                raise ValueError(
                    f"unknown timezone {self.timezone!r}: give an IANA name such as Europe/Paris or America/New_York"
                ) from None
        if self.week_start != "monday" and self.window != "week":
            raise ValueError("`week_start` applies to `window: week` only")
        if self.quarter_start_month != 1 and self.window != "quarter":
            raise ValueError("`quarter_start_month` applies to `window: quarter` only")
        return self

    @field_validator("notify_at")
    @classmethod
    def _thresholds(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        return notify_thresholds(v)

    @model_validator(mode="after")
    def _notify_calendar(self) -> BudgetSettings:
        if self.notify_at and self.window is None:
            raise ValueError("`notify_at` applies to calendar windows (`window`), not to `rolling` ones")
        return self

    @property
    def period(self) -> str:
        """The window as config and messages name it: ``day``, or ``rolling 24h``."""
        return self.window if self.window is not None else f"rolling {self.rolling}"

    @property
    def calendar(self) -> str:
        """What the counter's name adds for a calendar other than UTC's with Monday weeks and January
        quarters (``@Europe/Paris``, ``/sunday``, ``/q4``): another calendar, another counter."""
        out = f"@{self.timezone}" if self.timezone not in (None, "UTC") else ""
        if self.window == "week" and self.week_start != "monday":
            out += f"/{self.week_start}"
        if self.window == "quarter" and self.quarter_start_month != 1:
            out += f"/q{self.quarter_start_month}"
        return out


class SessionBudgetSettings(_Amount, BaseModel):
    """A budget for each session (``x-quotagate-session: ID``, an agent's run): over the session's life (no
    ``window``: its counter lives until the team's ``session_ttl`` passes without a request), or per calendar
    window within it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    window: Window | None = None
    tokens: int | None = Field(default=None, gt=0)
    usd: Decimal | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _one_unit(self) -> SessionBudgetSettings:
        self._check_amount()
        return self

    # what a refusal, a status and a downgrade read of any budget: a session budget has none of them
    @property
    def warn_at(self) -> None:
        return None

    @property
    def downgrade_to(self) -> None:
        return None

    @property
    def calendar(self) -> str:
        return ""


def notify_thresholds(v: tuple[float, ...]) -> tuple[float, ...]:
    """``notify_at``: used fractions in (0, 1], each once, in ascending order."""
    for f in v:
        if not 0 < f <= 1:
            raise ValueError(f"{f}: a threshold is a used fraction in (0, 1], e.g. 0.8 for 80%")
    if len(set(v)) != len(v):
        raise ValueError("each threshold once")
    return tuple(sorted(v))


_DURATION = re.compile(r"^(\d+)(s|m|h|d)$")


def duration_seconds(text: str) -> float:
    """``90s``, ``30m``, ``24h``, ``7d`` in seconds (validated by the settings' pattern)."""
    found = _DURATION.match(text)
    if found is None:
        raise ValueError(f"not a duration: {text!r} (give e.g. 30m, 24h, 7d)")
    return int(found.group(1)) * {"s": 1, "m": 60, "h": 3600, "d": 86400}[found.group(2)]


class RateLimitSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    tpm: int | None = Field(default=None, gt=0)
    rpm: int | None = Field(default=None, gt=0)
    concurrent: int | None = Field(default=None, gt=0)


class Level(BaseModel):
    """The budgets and rate limits of one level: the org, one end user, one model within a team."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    budgets: tuple[BudgetSettings, ...] = ()
    rate_limits: RateLimitSettings = RateLimitSettings()


class TagSettings(BaseModel):
    """A team's tags: ``allowed`` (None: any tag; else a request naming another one is refused, so that a
    client cannot escape a tag budget by inventing a tag) and the budgets of named tags."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    allowed: tuple[str, ...] | None = None
    budgets: dict[str, tuple[BudgetSettings, ...]] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _named(self) -> TagSettings:
        for tag in (*(self.allowed or ()), *self.budgets):
            if not re.fullmatch(TAG_NAME, tag):
                raise ValueError(f"tag {tag!r}: up to 64 letters, digits and . _ / - (starting with a letter or digit)")
        if self.allowed is not None:
            stray = sorted(set(self.budgets) - set(self.allowed))
            if stray:
                raise ValueError(f"budgets for tags not in `allowed`: {', '.join(stray)}")
        return self

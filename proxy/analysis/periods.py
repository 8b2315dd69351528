"""Periods of the ledger the analysis commands read: ``A..B`` (``explain --period``) and a start alone (``--since``).

A bound is one of:

* a date, ``2026-03-04``: UTC midnight of that day;
* an RFC 3339 timestamp, ``2026-03-04T12:00:00Z`` (or with an offset, ``+01:00``; a bare time is UTC);
* a relative time before ``now``: ``30m``, ``2h``, ``7d``, ``2w`` (``s`` seconds too); ``0d`` is now.

A period is ``[start, end)`` in epoch seconds: ``2026-03-01..2026-03-08`` is the seven days of March 1 to
7, the end date excluded, so that consecutive periods (``A..B``, ``B..C``) share no request. ``parse_since``
takes one bound (the period runs from it to ``now``) or a whole ``A..B``. Bad input raises ``PeriodError``
(a ``ValueError``) saying what is accepted.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from ..values import value

_RELATIVE = re.compile(r"(\d+(?:\.\d+)?)([smhdw])")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400, "w": 604_800}
_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
FORMS = "a date (2026-03-04), an RFC 3339 time (2026-03-04T12:00:00Z) or a time ago (30m, 2h, 7d, 2w; 0d = now)"


class PeriodError(ValueError):
    """A period or bound that cannot be read; the message says what is accepted."""


@value
class Period:
    start: float  # epoch seconds, inclusive
    end: float  # epoch seconds, exclusive

    @property
    def seconds(self) -> float:
        return self.end - self.start

    def label(self) -> str:
        """``2026-03-01..2026-03-08`` (whole UTC days), else RFC 3339 bounds."""
        return f"{_show(self.start)}..{_show(self.end)}"


def _show(t: float) -> str:
    d = datetime.fromtimestamp(t, UTC)
    if d.hour == d.minute == d.second == d.microsecond == 0:
        return d.strftime("%Y-%m-%d")
    return d.strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_bound(text: str, now: float) -> float:
    """One bound, as epoch seconds."""
    t = text.strip()
    m = _RELATIVE.fullmatch(t)
    if m:
        return now - float(m.group(1)) * _UNITS[m.group(2)]
    if _DATE.fullmatch(t):
        try:
            return datetime.strptime(t, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()
        except ValueError:
            raise PeriodError(f"{text!r} is not a valid date") from None
    if "T" in t or " " in t:
        try:
            d = datetime.fromisoformat(t.replace("z", "Z").replace("Z", "+00:00"))
        except ValueError:
            raise PeriodError(f"{text!r} is not a valid RFC 3339 time (e.g. 2026-03-04T12:00:00Z)") from None
        return (d if d.tzinfo is not None else d.replace(tzinfo=UTC)).timestamp()
    raise PeriodError(f"cannot read {text!r} as a time: give {FORMS}")


def parse_period(text: str, now: float) -> Period:
    """``A..B``: from bound A (inclusive) to bound B (exclusive); B must come after A."""
    if text.count("..") != 1:
        raise PeriodError(f"{text!r} is not a period: give START..END, each {FORMS}")
    a, b = text.split("..")
    if not a.strip() or not b.strip():
        raise PeriodError(f"{text!r}: both ends of START..END are needed")
    start, end = parse_bound(a, now), parse_bound(b, now)
    if end <= start:
        raise PeriodError(f"{text!r}: the end ({_show(end)}) is not after the start ({_show(start)})")
    return Period(start, end)


def parse_since(text: str, now: float) -> Period:
    """``--since``: one bound (from it to ``now``), or a whole ``A..B``."""
    if ".." in text:
        return parse_period(text, now)
    start = parse_bound(text, now)
    if start >= now:
        raise PeriodError(f"{text!r}: the start ({_show(start)}) is not before now ({_show(now)})")
    return Period(start, now)

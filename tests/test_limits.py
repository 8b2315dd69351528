"""proxy.limits, pure: calendar windows (UTC), counter keys, holds and charges, Go durations."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from decimal import Decimal

import pytest

from proxy.limits import Limit, charges, go_duration, holds, limits_for, tag, window_bounds
from proxy.settings import BudgetSettings, RateLimitSettings
from proxy.store.base import Hold

DAY = 86_400.0


def ts(y: int, mo: int, d: int, h: int = 0, mi: int = 0, s: int = 0, us: int = 0) -> float:
    return datetime(y, mo, d, h, mi, s, us, tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("window", "now", "wid", "start", "end"),
    [
        (
            "minute",
            ts(2026, 11, 24, 10, 31, 59, 999_000),
            "2026-11-24T10:31",
            ts(2026, 11, 24, 10, 31),
            ts(2026, 11, 24, 10, 32),
        ),
        ("minute", ts(2026, 12, 31, 23, 59, 30), "2026-12-31T23:59", ts(2026, 12, 31, 23, 59), ts(2027, 1, 1)),
        ("hour", ts(2026, 11, 24, 10, 0, 0), "2026-11-24T10", ts(2026, 11, 24, 10), ts(2026, 11, 24, 11)),
        ("hour", ts(2026, 11, 24, 23, 59, 59), "2026-11-24T23", ts(2026, 11, 24, 23), ts(2026, 11, 25)),
        ("day", ts(2026, 11, 24, 23, 59, 59, 999_999), "2026-11-24", ts(2026, 11, 24), ts(2026, 11, 25)),
        ("day", ts(2026, 11, 25), "2026-11-25", ts(2026, 11, 25), ts(2026, 11, 26)),
        ("day", ts(2026, 12, 31, 12), "2026-12-31", ts(2026, 12, 31), ts(2027, 1, 1)),
        # ISO weeks start on Monday; 2026-11-23 is a Monday, 2026-11-29 a Sunday
        ("week", ts(2026, 11, 23), "2026-W48", ts(2026, 11, 23), ts(2026, 11, 30)),
        ("week", ts(2026, 11, 29, 23, 59, 59), "2026-W48", ts(2026, 11, 23), ts(2026, 11, 30)),
        ("week", ts(2026, 11, 30), "2026-W49", ts(2026, 11, 30), ts(2026, 12, 7)),
        # 2026-01-01 is a Thursday: its ISO week (2026-W01) began on Monday 2025-12-29
        ("week", ts(2026, 1, 1), "2026-W01", ts(2025, 12, 29), ts(2026, 1, 5)),
        ("week", ts(2025, 12, 29), "2026-W01", ts(2025, 12, 29), ts(2026, 1, 5)),
        # 2021-01-03 (Sunday) still belongs to 2020-W53
        ("week", ts(2021, 1, 3, 12), "2020-W53", ts(2020, 12, 28), ts(2021, 1, 4)),
        ("month", ts(2026, 11, 30, 23, 59, 59), "2026-11", ts(2026, 11, 1), ts(2026, 12, 1)),
        ("month", ts(2026, 12, 1), "2026-12", ts(2026, 12, 1), ts(2027, 1, 1)),
        ("month", ts(2026, 12, 31, 23, 59, 59), "2026-12", ts(2026, 12, 1), ts(2027, 1, 1)),
        ("month", ts(2024, 2, 29, 12), "2024-02", ts(2024, 2, 1), ts(2024, 3, 1)),  # leap year
        ("month", ts(2026, 2, 28, 23, 59, 59), "2026-02", ts(2026, 2, 1), ts(2026, 3, 1)),
        ("month", ts(2026, 1, 31, 23, 59, 59), "2026-01", ts(2026, 1, 1), ts(2026, 2, 1)),
    ],
)
def test_window_bounds(window: str, now: float, wid: str, start: float, end: float) -> None:
    assert window_bounds(window, now) == (wid, start, end)  # type: ignore[arg-type]
    assert start <= now < end


def test_utc_midnight_rollover_is_a_new_day_window() -> None:
    before, after = ts(2026, 11, 24, 23, 59, 59, 999_000), ts(2026, 11, 25)
    b, a = window_bounds("day", before), window_bounds("day", after)
    assert b[0] == "2026-11-24" and a[0] == "2026-11-25"
    assert b[2] == a[1] == after
    # the instant of midnight belongs to the new day in every window that starts there
    assert window_bounds("minute", after)[1] == after
    assert window_bounds("hour", after)[1] == after


def test_windows_ignore_the_local_timezone(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    monkeypatch.setenv("TZ", "Pacific/Kiritimati")  # UTC+14: a different local date most of the day
    time.tzset()
    try:
        assert window_bounds("day", ts(2026, 11, 24, 12)) == ("2026-11-24", ts(2026, 11, 24), ts(2026, 11, 25))
    finally:
        monkeypatch.undo()
        time.tzset()


# ---- counter keys, holds, charges --------------------------------------------------------------------------

NOW = ts(2026, 11, 24, 10, 31, 5)
DIGEST = "ab" * 32


def test_limits_for_builds_one_key_per_limit_and_window() -> None:
    lims = limits_for(
        "search",
        DIGEST,
        (BudgetSettings(window="day", tokens=1000), BudgetSettings(window="month", usd=Decimal("12.5"))),
        RateLimitSettings(tpm=500, rpm=3, concurrent=2),
        (BudgetSettings(window="week", tokens=50),),
        RateLimitSettings(rpm=7),
        NOW,
    )
    kp = "{search}:k:" + DIGEST[:16]
    assert [(x.key, x.limit, x.unit, x.window, x.scope) for x in lims] == [
        ("{search}:t:b:day:tokens:2026-11-24", 1000, "tokens", "day", "team"),
        ("{search}:t:b:month:usd:2026-11", 12_500_000, "usd", "month", "team"),
        ("{search}:t:tpm:2026-11-24T10:31", 500, "tokens", "minute", "team"),
        ("{search}:t:rpm:2026-11-24T10:31", 3, "requests", "minute", "team"),
        ("{search}:t:conc", 2, "concurrent", None, "team"),
        (f"{kp}:b:week:tokens:2026-W48", 50, "tokens", "week", "key"),
        (f"{kp}:rpm:2026-11-24T10:31", 7, "requests", "minute", "key"),
    ]
    assert all(x.key.startswith(tag("search")) for x in lims)  # one Redis Cluster slot per team
    ends = [x.window_end for x in lims]
    minute_end = ts(2026, 11, 24, 10, 32)
    assert ends == [ts(2026, 11, 25), ts(2026, 12, 1), minute_end, minute_end, 0.0, ts(2026, 11, 30), minute_end]
    assert lims[0].budget == BudgetSettings(window="day", tokens=1000)
    assert lims[2].budget is None


def test_limits_for_nothing_configured_is_empty() -> None:
    assert limits_for("t", DIGEST, (), RateLimitSettings(), (), RateLimitSettings(), NOW) == []


def test_holds_size_each_limit_by_its_unit() -> None:
    lims = limits_for(
        "t",
        DIGEST,
        (BudgetSettings(window="day", tokens=1000), BudgetSettings(window="day", usd=Decimal(1))),
        RateLimitSettings(tpm=500, rpm=3, concurrent=2),
        (),
        RateLimitSettings(),
        NOW,
    )
    hs = holds(lims, 321, 4567)
    day_end = ts(2026, 11, 25)
    minute_end = ts(2026, 11, 24, 10, 32)
    assert hs == (
        Hold("{t}:t:b:day:tokens:2026-11-24", 1000, 321, day_end + DAY),
        Hold("{t}:t:b:day:usd:2026-11-24", 1_000_000, 4567, day_end + DAY),
        Hold("{t}:t:tpm:2026-11-24T10:31", 500, 321, minute_end + DAY),
        Hold("{t}:t:rpm:2026-11-24T10:31", 3, 1, minute_end + DAY),
        Hold("{t}:t:conc", 2, 1, 0.0, commit=False),  # no window; a slot: released, never committed
    )
    assert charges(lims, 40, 77) == {
        "{t}:t:b:day:tokens:2026-11-24": 40,
        "{t}:t:b:day:usd:2026-11-24": 77,
        "{t}:t:tpm:2026-11-24T10:31": 40,
        "{t}:t:rpm:2026-11-24T10:31": 1,
        "{t}:t:conc": 0,  # in-flight slots are released, never committed
    }


def test_limit_hold() -> None:
    lim = Limit("{t}:t:conc", 4, "concurrent", None, 0.0, "team")
    assert lim.hold(1) == Hold("{t}:t:conc", 4, 1, 0.0, commit=False)
    day = Limit("{t}:t:b:day:tokens:x", 9, "tokens", "day", 1000.0, "team")
    assert day.hold(5) == Hold("{t}:t:b:day:tokens:x", 9, 5, 1000.0 + DAY, commit=True)


# ---- Go durations -------------------------------------------------------------------------------------------

_GO = re.compile(r"^(?:(\d+)h)?(?:(\d+)m(?!s))?(?:(\d+(?:\.\d+)?)s)?(?:(\d+)ms)?$")


def parse_go(text: str) -> float:
    """A small Go ``time.ParseDuration`` for the shapes OpenAI sends (h, m, s with decimals, ms)."""
    m = _GO.match(text)
    assert m and text, f"not a Go duration: {text!r}"
    h, mins, s, ms = m.groups()
    return int(h or 0) * 3600 + int(mins or 0) * 60 + float(s or 0) + int(ms or 0) / 1000


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        (0.012, "12ms"),
        (0.084, "84ms"),
        (0.5, "500ms"),
        (0.9999, "999ms"),
        (1.0, "1s"),
        (1.5, "1.5s"),
        (20.0, "20s"),
        (59.25, "59.25s"),
        (60.0, "1m0s"),
        (90.5, "1m30.5s"),
        (360.0, "6m0s"),
        (3600.0, "1h0m0s"),
        (3723.0, "1h2m3s"),
        (86_400.0, "24h0m0s"),
        (8.881, "8.881s"),
    ],
)
def test_go_duration(seconds: float, text: str) -> None:
    assert go_duration(seconds) == text
    assert parse_go(text) == pytest.approx(seconds, abs=0.001)


@pytest.mark.parametrize("seconds", [0.0, -3.0, 0.0004, 59.9996, 3599.9999, 12345.678])
def test_go_duration_always_parses_back(seconds: float) -> None:
    text = go_duration(seconds)
    assert parse_go(text) == pytest.approx(max(seconds, 0.0), abs=0.001)

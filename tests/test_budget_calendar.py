"""Budget windows in a team's own calendar (issue 13, windows): ``timezone`` (local midnight, DST handled),
``week_start``, ``quarter`` windows with ``quarter_start_month``; the windows' bounds across DST changes, and a
day budget in Paris' calendar rolling over at Paris' midnight on every store, with an injected clock."""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from proxy.errors import BudgetExceeded
from proxy.limits import budget_bounds, window_bounds
from proxy.settings import BudgetSettings, ConfigError, parse
from proxy.store.base import Store
from tests.test_settle import DIGEST, KEY, Clock, accountant, clock, meta, store  # noqa: F401 (fixtures)

PARIS = ZoneInfo("Europe/Paris")
NEW_YORK = ZoneInfo("America/New_York")


def at(tz: tzinfo, y: int, mo: int, d: int, h: int, mi: int) -> float:
    return datetime(y, mo, d, h, mi, tzinfo=tz).timestamp()


def hours(bounds: tuple[str, float, float]) -> float:
    return (bounds[2] - bounds[1]) / 3600


def test_a_local_day_lasts_23_or_25_hours_across_dst() -> None:
    spring = window_bounds("day", at(PARIS, 2026, 3, 29, 12, 0), PARIS)  # clocks go forward at 02:00
    assert spring[0] == "2026-03-29" and hours(spring) == 23
    assert spring[1] == at(PARIS, 2026, 3, 29, 0, 0) == datetime(2026, 3, 28, 23, tzinfo=UTC).timestamp()
    autumn = window_bounds("day", at(PARIS, 2026, 10, 25, 2, 30), PARIS)  # 02:00-03:00 happens twice
    assert autumn[0] == "2026-10-25" and hours(autumn) == 25
    ny = window_bounds("day", at(NEW_YORK, 2026, 3, 8, 23, 59), NEW_YORK)
    assert ny[0] == "2026-03-08" and hours(ny) == 23
    assert window_bounds("day", at(NEW_YORK, 2026, 3, 9, 0, 0), NEW_YORK)[0] == "2026-03-09"


def test_local_hours_weeks_months_and_quarters() -> None:
    kolkata = ZoneInfo("Asia/Kolkata")  # +05:30: local hours start on the half hour of UTC
    wid, start, end = window_bounds("hour", datetime(2026, 5, 1, 10, 45, tzinfo=UTC).timestamp(), kolkata)
    assert (wid, end - start) == ("2026-05-01T16", 3600)
    assert datetime.fromtimestamp(start, UTC).minute == 30
    thursday = at(PARIS, 2026, 10, 29, 9, 0)
    assert window_bounds("week", thursday, PARIS)[0] == "2026-W44"  # ISO weeks from Monday
    sunday_week = window_bounds("week", thursday, PARIS, week_start=6)
    assert sunday_week[0] == "2026-10-25" and sunday_week[1] == at(PARIS, 2026, 10, 25, 0, 0)
    assert hours(sunday_week) == 7 * 24 + 1  # the week of the autumn change
    month = window_bounds("month", at(NEW_YORK, 2026, 11, 30, 23, 0), NEW_YORK)
    assert month[0] == "2026-11" and month[2] == at(NEW_YORK, 2026, 12, 1, 0, 0)
    assert window_bounds("quarter", at(PARIS, 2026, 2, 10, 0, 0), PARIS)[:2] == (
        "2026-01/Q",
        at(PARIS, 2026, 1, 1, 0, 0),
    )
    fiscal = window_bounds("quarter", at(PARIS, 2026, 2, 10, 0, 0), PARIS, quarter_start_month=4)
    assert fiscal == ("2026-01/Q", at(PARIS, 2026, 1, 1, 0, 0), at(PARIS, 2026, 4, 1, 0, 0))
    may = window_bounds("quarter", at(PARIS, 2026, 5, 31, 23, 0), PARIS, quarter_start_month=4)
    assert may == ("2026-04/Q", at(PARIS, 2026, 4, 1, 0, 0), at(PARIS, 2026, 7, 1, 0, 0))
    december = window_bounds("quarter", at(UTC, 2026, 12, 15, 0, 0), quarter_start_month=11)
    assert december[0] == "2026-11/Q" and december[2] == at(UTC, 2027, 2, 1, 0, 0)


def test_a_budget_names_its_calendar_in_its_counter() -> None:
    b = BudgetSettings(window="quarter", usd=Decimal(100), timezone="Europe/Paris", quarter_start_month=4)
    assert b.calendar == "@Europe/Paris/q4"
    assert BudgetSettings(window="day", tokens=5).calendar == ""
    assert budget_bounds(b, at(PARIS, 2026, 6, 30, 23, 30))[2] == at(PARIS, 2026, 7, 1, 0, 0)


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        ({"window": "day", "tokens": 5, "timezone": "Mars/Olympus"}, "unknown timezone 'Mars/Olympus'"),
        ({"window": "day", "tokens": 5, "week_start": "sunday"}, "`week_start` applies to `window: week` only"),
        ({"window": "month", "tokens": 5, "quarter_start_month": 4}, "applies to `window: quarter` only"),
        ({"window": "quarter", "tokens": 5, "quarter_start_month": 13}, "less than or equal to 12"),
    ],
)
def test_a_bad_calendar_is_a_config_error_naming_the_budget(budget: dict[str, Any], message: str) -> None:
    raw = {
        "providers": {"p": {"base_url": "http://127.0.0.1:9/v1"}},
        "models": {"gpt-4o-mini": {"provider": "p"}},
        "teams": {"t": {"budgets": [budget]}},
    }
    with pytest.raises(ConfigError) as e:
        parse(raw, env={})
    assert "teams.t.budgets.0" in str(e.value) and message in str(e.value)


async def test_a_day_budget_in_paris_rolls_over_at_paris_midnight(store: Store, clock: Clock) -> None:  # noqa: F811
    teams = {"t": {"budgets": [{"window": "day", "tokens": 1000, "timezone": "Europe/Paris"}]}}
    clock.t = at(PARIS, 2026, 3, 28, 23, 59)  # 22:59 UTC: the UTC day still has an hour to go
    acct = accountant(store, clock, teams=teams, keys=[{"team": "t", "key": KEY}])
    res = await acct.reserve("t", DIGEST, "gpt-4o-mini", 1000, 0, meta())
    assert res is not None
    await acct.settle(res, 1000, 0)
    with pytest.raises(BudgetExceeded) as e:
        await acct.reserve("t", DIGEST, "gpt-4o-mini", 1, 0, meta())
    assert e.value.headers["retry-after"] == "60"  # Paris' midnight, not UTC's
    clock.t = at(PARIS, 2026, 3, 29, 0, 0) + 1  # a new Paris day (23 hours long: DST starts at 02:00)
    (row,) = await acct.budgets.budget_status("t")
    assert (row.used, row.resets_at) == (0, at(PARIS, 2026, 3, 30, 0, 0))
    assert row.resets_at - at(PARIS, 2026, 3, 29, 0, 0) == 23 * 3600
    assert await acct.reserve("t", DIGEST, "gpt-4o-mini", 1000, 0, meta()) is not None

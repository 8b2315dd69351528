"""Rolling budgets (issue 13): ``rolling: 24h`` limits every trailing 24 hours, not a calendar day.

The rule (proxy/limits.py ``rolling_limits``): a request is held and charged on the spans of the last
n + 1 steps (each span a little longer than the window), all or nothing in the store's one reserve, so no
trailing window ever holds more than the limit, on every store; usage is forgotten at most one step late.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.errors import BudgetExceeded
from proxy.limits import rolling_limits, rolling_step
from proxy.settings import BudgetSettings, ConfigError
from proxy.settings import parse as parse_settings
from proxy.store.base import Store
from proxy.store.memory import MemoryStore
from tests.test_settle import DIGEST, KEY, T0, Clock, accountant, clock, meta, store  # noqa: F401 (fixtures)

HOUR = 3600.0
DAY = 24 * HOUR


def rolling(limit: int = 1000, length: str = "24h") -> dict[str, Any]:
    return {"teams": {"t": {"budgets": [{"rolling": length, "tokens": limit}]}}, "keys": [{"team": "t", "key": KEY}]}


def test_a_day_rolls_in_hour_steps_and_the_oldest_span_is_the_one_shown() -> None:
    b = BudgetSettings(rolling="24h", tokens=100)
    lims = rolling_limits("{t}:t:b:r24h:tokens", b, "team", "t", T0)
    assert rolling_step(DAY) == 3600 and len(lims) == 25
    shown = [lim for lim in lims if not lim.shadow]
    assert len(shown) == 1 and shown[0] is lims[0]
    # every span contains now and is a step longer than the window; the shown one covers the last 24 h
    for lim in lims:
        start = lim.window_end - DAY - HOUR
        assert start <= T0 < lim.window_end
    assert lims[0].window_end - DAY - HOUR <= T0 - DAY


@pytest.mark.parametrize(("length", "step"), [("1h", 120), ("90m", 180), ("7d", 25200), ("2m", 60), ("30d", 108000)])
def test_steps_are_whole_minutes(length: str, step: int) -> None:
    lims = rolling_limits("{t}:x", BudgetSettings(rolling=length, tokens=1), "team", "t", T0)
    assert all(int(b.window_end - a.window_end) == step for a, b in itertools.pairwise(lims))
    assert step % 60 == 0


@pytest.mark.parametrize(
    ("budget", "words"),
    [
        ({"rolling": "24h", "window": "day", "tokens": 1}, "exactly one of `window`"),
        ({"tokens": 1}, "exactly one of `window`"),
        ({"rolling": "24h", "timezone": "Europe/Paris", "tokens": 1}, "`timezone` applies to calendar windows"),
        ({"rolling": "30s", "tokens": 1}, "rolling"),
    ],
)
def test_a_rolling_budget_is_checked_when_the_config_loads(budget: dict[str, Any], words: str) -> None:
    raw = {
        "providers": {"p": {"base_url": "http://127.0.0.1:9/v1"}},
        "models": {"m": {"provider": "p", "price": {"input": 1, "output": 1}}},
        "teams": {"t": {"budgets": [budget]}},
    }
    with pytest.raises(ConfigError) as e:
        parse_settings(raw)
    assert words in str(e.value)


async def test_a_rolling_day_frees_usage_a_day_later_not_at_midnight(store: Store, clock: Clock) -> None:  # noqa: F811
    acct = accountant(store, clock, **rolling(1000))
    res = await acct.reserve("t", DIGEST, "gpt-4o-mini", 1000, 0, meta())
    assert res is not None
    await acct.settle(res, 1000, 0)
    for later in (1.0, 6 * HOUR, DAY - 1):  # a calendar day would have renewed at midnight in between
        clock.t = T0 + later
        with pytest.raises(BudgetExceeded) as e:
            await acct.reserve("t", DIGEST, "gpt-4o-mini", 1, 0, meta())
        assert "for any 24h" in e.value.message
        assert int(e.value.headers["retry-after"]) <= HOUR + 1  # the oldest span ends within a step
    clock.t = T0 + DAY + HOUR  # a day and at most a step later: all of it is free again
    assert await acct.reserve("t", DIGEST, "gpt-4o-mini", 1000, 0, meta()) is not None
    status = await acct.budgets.budget_status("t", DIGEST)
    assert [(s.rolling, s.window, s.used, s.reserved) for s in status] == [("24h", None, 0, 1000)]
    assert status[0].to_json()["rolling"] == "24h"


async def test_200_concurrent_requests_spread_over_a_day_admit_exactly_the_limit(store: Store, clock: Clock) -> None:  # noqa: F811
    acct = accountant(store, clock, **rolling(37 * 10))
    admitted = 0
    for hour in range(0, 30, 3):  # waves across a day and past it
        clock.t = T0 + hour * HOUR

        async def one(i: int, hour: int = hour) -> bool:
            try:
                res = await acct.reserve("t", DIGEST, "gpt-4o-mini", 10, 0, meta(request_id=f"r{hour}-{i}"))
            except BudgetExceeded:
                return False
            assert res is not None
            await acct.settle(res, 10, 0)
            return True

        wave = sum(await asyncio.gather(*(one(i) for i in range(200))))
        admitted += wave
        assert wave == (37 if hour in (0, 27) else 0)  # the first wave fills it; it is free again a day on


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.lists(
        st.tuples(  # half steps (the 6 h window moves in 15 min steps), where an off-by-one step would show
            st.integers(min_value=0, max_value=3 * 24 * 8).map(lambda k: k * 450.0) | st.floats(0, 3 * DAY),
            st.integers(min_value=1, max_value=1000),
        ),
        min_size=1,
        max_size=60,
    )
)
async def test_no_trailing_window_ever_holds_more_than_the_limit(requests: list[tuple[float, int]]) -> None:
    clk = Clock()
    acct = accountant(MemoryStore(clock=clk), clk, **rolling(1000, "6h"))
    kept: list[tuple[float, int]] = []
    for offset, amount in sorted(requests):
        clk.t = T0 + offset
        try:
            res = await acct.reserve("t", DIGEST, "gpt-4o-mini", amount, 0, meta())
        except BudgetExceeded:
            continue
        assert res is not None
        await acct.settle(res, amount, 0)
        kept.append((clk.t, amount))
    for end, _ in kept:  # the worst trailing windows end at an admitted request
        assert sum(a for t, a in kept if end - 6 * HOUR < t <= end) <= 1000
    # and nothing is remembered more than a step past the window: a request alone in its window fits
    clk.t = (kept[-1][0] if kept else T0) + 6 * HOUR + rolling_step(6 * HOUR) + 1
    assert await acct.reserve("t", DIGEST, "gpt-4o-mini", 1000, 0, meta()) is not None

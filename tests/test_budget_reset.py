"""Reset on demand (issue 13): a team's budgets on a window start over now, without moving the window; what
requests in flight hold stays held and is charged when they settle; on every store, through the admin API and
the CLI."""

from __future__ import annotations

from pathlib import Path

from proxy.store.base import Store
from tests.inprocess import chat_answer, json_reply, running
from tests.test_settle import DIGEST, KEY, Clock, accountant, clock, meta, store  # noqa: F401 (fixtures)


async def test_reset_zeroes_used_keeps_held_and_the_window(store: Store, clock: Clock) -> None:  # noqa: F811
    teams = {"t": {"budgets": [{"window": "day", "tokens": 1000}, {"window": "month", "usd": 1}]}}
    acct = accountant(store, clock, teams=teams, keys=[{"team": "t", "key": KEY}])
    done = await acct.reserve("t", DIGEST, "gpt-4o-mini", 600, 0, meta(request_id="a"))
    assert done is not None
    await acct.settle(done, 600, 50)
    inflight = await acct.reserve("t", DIGEST, "gpt-4o-mini", 300, 0, meta(request_id="b"))
    assert inflight is not None
    before = {b.window: b for b in await acct.budgets.budget_status("t")}
    assert await acct.budgets.reset("t", "day", "tokens") == 1
    after = {b.window: b for b in await acct.budgets.budget_status("t")}
    assert (after["day"].used, after["day"].reserved, after["day"].resets_at) == (0, 300, before["day"].resets_at)
    assert after["month"].used == 50  # another window: untouched
    await acct.settle(inflight, 120, 0)  # what was in flight at the reset is charged when it settles
    (day,) = [b for b in await acct.budgets.budget_status("t") if b.window == "day"]
    assert (day.used, day.reserved) == (120, 0)
    assert await acct.budgets.reset("t", "week") == 0  # no such budget: nothing matched


async def test_reset_through_the_admin_api_and_its_refusal(tmp_path: Path) -> None:
    async with running(tmp_path, "sqlite") as gw:
        gw.provider.on("/v1/chat/completions", json_reply(chat_answer("ok", 9, 2)))
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}
        assert (await gw.post("/v1/chat/completions", body)).status_code == 200
        await gw.settled()
        status = (await gw.admin("GET", "/admin/teams/search/budgets")).json()["status"]
        assert [s["used"] for s in status if s["window"] == "day"] == [11]
        r = await gw.admin("POST", "/admin/teams/search/budgets/reset", {"window": "day"})
        assert r.status_code == 200, r.text
        assert [s["used"] for s in r.json()["status"] if s["window"] == "day"] == [0]
        assert [s["used"] for s in r.json()["status"] if s["window"] == "month"] != [0]
        r = await gw.admin("POST", "/admin/teams/search/budgets/reset", {"window": "quarter"})
        assert r.status_code == 400 and "has no quarter budget" in r.json()["error"]["message"]
        r = await gw.admin("POST", "/admin/teams/search/budgets/reset", {"window": "day"}, key="wrong")
        assert r.status_code == 401

"""Budgets at every level an organisation has (issue 13): the org, the team, the key, an end user (the team's
default for any end user, or their own), a tag, a model within the team. Every level that applies holds the
request in the same all-or-nothing reservation, so 200 concurrent requests against any level (or against
three at once) admit exactly as many as fit, on memory, SQLite and Redis; refusals name the level and the
entity; a team's tag allow-list refuses an invented tag."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from proxy.errors import BudgetExceeded, RateLimited
from proxy.limits import Subject
from proxy.pricing import price_of
from proxy.settings import BudgetSettings
from proxy.settle import Accountant
from proxy.store.base import Store
from tests.inprocess import KEYS, chat_answer, config, json_reply, running
from tests.test_settle import DIGEST, KEY, Clock, accountant, clock, meta, settings, store  # noqa: F401 (fixtures)

WORST = 10  # tokens each request reserves
FIT = 37  # requests a binding limit admits: its limit is FIT * WORST

LEVELS: dict[str, dict[str, Any]] = {
    "org": {"org": {"budgets": [{"window": "day", "tokens": FIT * WORST}]}},
    "team": {"teams": {"t": {"budgets": [{"window": "day", "tokens": FIT * WORST}]}}},
    "key": {"keys": [{"team": "t", "key": KEY, "budgets": [{"window": "month", "tokens": FIT * WORST}]}]},
    "end_user": {"teams": {"t": {"end_user_budgets": [{"window": "day", "tokens": FIT * WORST}]}}},
    "explicit end user": {
        "teams": {
            "t": {
                "end_user_budgets": [{"window": "day", "tokens": 10**9}],
                "end_users": {"u-1": {"budgets": [{"window": "week", "tokens": FIT * WORST}]}},
            }
        }
    },
    "tag": {"teams": {"t": {"tags": {"budgets": {"checkout": [{"window": "day", "tokens": FIT * WORST}]}}}}},
    "model": {
        "teams": {"t": {"model_limits": {"gpt-4o-mini": {"budgets": [{"window": "hour", "tokens": FIT * WORST}]}}}}
    },
    "session": {"teams": {"t": {"session_budgets": [{"tokens": FIT * WORST}]}}},
    "rolling": {"teams": {"t": {"budgets": [{"rolling": "24h", "tokens": FIT * WORST}]}}},  # 25 counters at once
    "three at once": {  # the end user binds first, then the tag, then the model: the tightest wins
        "teams": {
            "t": {
                "end_user_budgets": [{"window": "day", "tokens": FIT * WORST}],
                "tags": {"budgets": {"checkout": [{"window": "day", "tokens": (FIT + 5) * WORST}]}},
                "model_limits": {"gpt-4o-mini": {"rate_limits": {"tpm": (FIT + 9) * WORST}}},
            }
        }
    },
}
SUBJECT = Subject("u-1", ("checkout", "beta"), "gpt-4o-mini", "run-42")


def account(store: Store, clock: Clock, level: str) -> Accountant:  # noqa: F811
    over: dict[str, Any] = {"teams": {"t": {}}, "keys": [{"team": "t", "key": KEY}]}
    over.update(LEVELS[level])
    return accountant(store, clock, **over)


@pytest.mark.parametrize("level", list(LEVELS))
async def test_200_concurrent_requests_admit_exactly_what_fits(store: Store, clock: Clock, level: str) -> None:  # noqa: F811
    acct = account(store, clock, level)

    async def one(i: int) -> bool:
        try:
            res = await acct.reserve("t", DIGEST, "gpt-4o-mini", WORST, 0, meta(request_id=f"r{i}"), SUBJECT)
        except (BudgetExceeded, RateLimited):
            return False
        assert res is not None
        await acct.settle(res, WORST, 0)
        return True

    admitted = await asyncio.gather(*(one(i) for i in range(200)))
    assert sum(admitted) == FIT
    used = {lim.key: lim for lim in acct.budgets.limits("t", DIGEST, clock(), SUBJECT)}
    values = await store.counters(list(used))
    assert all(v.used <= used[k].limit and v.reserved == 0 for k, v in values.items())
    assert max(v.used for v in values.values()) == FIT * WORST


@pytest.mark.parametrize(
    ("level", "words"),
    [
        ("org", "The organisation's budget for this day"),
        ("end_user", "The budget of end user 'u-1' in team 't' for this day"),
        ("explicit end user", "The budget of end user 'u-1' in team 't' for this week"),
        ("tag", "The budget of tag 'checkout' in team 't' for this day"),
        ("model", "The budget of model 'gpt-4o-mini' in team 't' for this hour"),
        ("session", "The budget of session 'run-42' in team 't' for this session"),
        ("rolling", "The team budget of team 't' for any 24h"),
    ],
)
async def test_a_refusal_names_the_level_and_the_entity(store: Store, clock: Clock, level: str, words: str) -> None:  # noqa: F811
    acct = account(store, clock, level)
    with pytest.raises(BudgetExceeded) as e:
        await acct.reserve("t", DIGEST, "gpt-4o-mini", (FIT + 1) * WORST, 0, meta(), SUBJECT)
    assert words in e.value.message
    assert e.value.limit is not None and e.value.limit.startswith("budget ")


async def test_other_end_users_tags_and_models_have_their_own_counters(store: Store, clock: Clock) -> None:  # noqa: F811
    acct = account(store, clock, "three at once")
    res = await acct.reserve("t", DIGEST, "gpt-4o-mini", FIT * WORST, 0, meta(), SUBJECT)
    assert res is not None
    with pytest.raises(BudgetExceeded):
        await acct.reserve("t", DIGEST, "gpt-4o-mini", WORST, 0, meta(), SUBJECT)
    # another end user has the team's default budget of their own; no end user: only the other levels
    assert await acct.reserve("t", DIGEST, "gpt-4o-mini", WORST, 0, meta(), Subject("u-2", ("checkout",))) is not None
    assert await acct.reserve("t", DIGEST, "gpt-4o-mini", WORST, 0, meta(), Subject(None, (), "gpt-4o")) is None


async def test_an_invented_tag_is_refused_where_the_team_allows_only_some(tmp_path: Path) -> None:
    search = {
        "budgets": [{"window": "day", "tokens": 10_000_000}],
        "tags": {"allowed": ["checkout", "ranking"], "budgets": {"checkout": [{"window": "day", "usd": 1}]}},
        "end_user_budgets": [{"window": "day", "tokens": 30}],
    }
    teams = {**config("", "", "")["teams"], "search": search}
    async with running(tmp_path, "memory", teams=teams) as gw:
        gw.provider.on("/v1/chat/completions", json_reply(chat_answer("ok", 9, 2)))
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}
        r = await gw.post("/v1/chat/completions", body, headers={"x-quotagate-tags": "checkout,free-lunch"})
        assert r.status_code == 400
        err = r.json()["error"]
        assert err["code"] == "tag_not_allowed" and "'free-lunch'" in err["message"] and "ranking" in err["message"]
        assert (
            await gw.post("/v1/chat/completions", body, headers={"x-quotagate-tags": "checkout"})
        ).status_code == 200
        # the end user's default budget (30 tokens a day) holds whatever the key, and names them
        user = {**body, "user": "u-123"}
        assert (await gw.post("/v1/chat/completions", user)).status_code == 200
        r = await gw.post("/v1/chat/completions", user, key=KEYS["search-batch"])
        assert r.status_code == 429
        assert "The budget of end user 'u-123' in team 'search'" in r.json()["error"]["message"]
        rows = await gw.new_rows()
    assert [row.outcome for row in rows] == ["invalid_request", "ok", "ok", "budget_exceeded"]


async def test_metadata_tags_count_as_tags(tmp_path: Path) -> None:
    """The body's ``metadata.tags`` (OpenAI metadata holds strings: "a,b") adds to the header's tags: held by
    the tag's budget, checked against the allow-list, recorded; the body is forwarded as sent."""
    search = {"tags": {"allowed": ["checkout", "ranking"], "budgets": {"ranking": [{"window": "day", "tokens": 30}]}}}
    teams = {**config("", "", "")["teams"], "search": search}
    async with running(tmp_path, "memory", teams=teams) as gw:
        gw.provider.on("/v1/chat/completions", json_reply(chat_answer("ok", 9, 2)))
        body = {
            "model": "gpt-4o-mini",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 20,
            "metadata": {"tags": "ranking"},
        }
        r = await gw.post("/v1/chat/completions", body, headers={"x-quotagate-tags": "checkout"})
        assert r.status_code == 200
        assert gw.provider.bodies("/v1/chat/completions")[-1]["metadata"] == {"tags": "ranking"}
        r = await gw.post("/v1/chat/completions", body)  # the tag budget (30 tokens) is spent: 11 + 28 > 30
        assert r.status_code == 429 and "The budget of tag 'ranking'" in r.json()["error"]["message"]
        r = await gw.post("/v1/chat/completions", {**body, "metadata": {"tags": "free-lunch"}})
        assert r.status_code == 400 and r.json()["error"]["code"] == "tag_not_allowed"
        rows = await gw.new_rows()
    assert [row.tags for row in rows] == ["checkout,ranking", "ranking", "free-lunch"]


async def test_a_session_budget_lasts_the_session_and_expires_after_its_ttl(store: Store, clock: Clock) -> None:  # noqa: F811
    """No window: one counter for the session's life, across days, gone once ``session_ttl`` passes without a
    request; another session has its own."""
    teams = {"t": {"session_budgets": [{"tokens": 100}], "session_ttl": "2h"}}
    acct = accountant(store, clock, teams=teams, keys=[{"team": "t", "key": KEY}])
    run = Subject(None, (), "gpt-4o-mini", "run-1")

    async def spend(tokens: int, subject: Subject = run) -> None:
        res = await acct.reserve("t", DIGEST, "gpt-4o-mini", tokens, 0, meta(), subject)
        assert res is not None
        await acct.settle(res, tokens, 0)

    await spend(60)
    clock.t += 90 * 60  # an hour and a half later (the UTC day may have turned): the same session budget
    with pytest.raises(BudgetExceeded) as e:
        await spend(41)
    assert "for this session (100 tokens)" in e.value.message
    await spend(40)
    await spend(100, Subject(None, (), "gpt-4o-mini", "run-2"))  # another run: its own budget
    clock.t += 2 * 3600 + 1  # two hours without a request: the session's counter is gone
    await spend(100)


async def test_a_session_header_is_held_by_the_session_budget(tmp_path: Path) -> None:
    search = {"session_budgets": [{"tokens": 30}], "session_ttl": "1h"}
    teams = {**config("", "", "")["teams"], "search": search}
    async with running(tmp_path, "memory", teams=teams) as gw:
        gw.provider.on("/v1/chat/completions", json_reply(chat_answer("ok", 9, 2)))
        body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}
        run = {"x-quotagate-session": "agent-run-7"}
        assert (await gw.post("/v1/chat/completions", body, headers=run)).status_code == 200
        r = await gw.post("/v1/chat/completions", body, headers=run)  # 11 used + 28 > 30
        assert r.status_code == 429
        assert "The budget of session 'agent-run-7' in team 'search' for this session" in r.json()["error"]["message"]
        assert (
            await gw.post("/v1/chat/completions", body, headers={"x-quotagate-session": "run-8"})
        ).status_code == 200
        assert (await gw.post("/v1/chat/completions", body)).status_code == 200  # no session: other levels only


async def test_a_zero_cost_model_spends_token_budgets_not_usd_ones(store: Store, clock: Clock) -> None:  # noqa: F811
    """A self-hosted model priced at 0 (every model has a price: an unpriced one is a config error) is held
    and charged by token budgets and never by USD budgets, at every level."""
    teams = {
        "t": {
            "budgets": [{"window": "day", "tokens": 100}, {"window": "day", "usd": "0.000001"}],
            "end_user_budgets": [{"window": "day", "usd": "0.000001"}],
        }
    }
    models = {"local": {"provider": "p", "price": {"input": 0, "output": 0}}}
    over: dict[str, Any] = {"teams": teams, "keys": [{"team": "t", "key": KEY}], "models": models}
    acct = accountant(store, clock, **over)
    worst = price_of(settings(**over).models["local"]).worst_case(60, 40)
    assert worst == 0
    res = await acct.reserve("t", DIGEST, "local", 100, worst, meta(), Subject("u-1", (), "local"))
    assert res is not None
    await acct.settle(res, 100, 0)
    with pytest.raises(BudgetExceeded) as e:  # the token budget is spent; the USD ones never were
        await acct.reserve("t", DIGEST, "local", 1, 0, meta(), Subject("u-1", (), "local"))
    assert "(100 tokens)" in e.value.message
    status = {(b.unit, b.scope): b.used for b in await acct.budgets.budget_status("t")}
    assert status == {("tokens", "team"): 100, ("usd", "team"): 0}


async def test_unknown_end_users_sessions_and_tags_escape_no_budget(store: Store, clock: Clock) -> None:  # noqa: F811
    """A client that invents a new ``user``, session or (where tags are not restricted) tag for every request
    still meets the team's budget, exactly, and each invented end user or session gets the team's default
    budget for one, never none."""
    acct = accountant(
        store,
        clock,
        teams={
            "t": {
                "budgets": [{"window": "day", "tokens": FIT * WORST}],
                "end_user_budgets": [{"window": "day", "tokens": 2 * WORST}],
                "session_budgets": [{"tokens": 3 * WORST}],
                "tags": {"budgets": {"checkout": [{"window": "day", "tokens": 10**9}]}},
            }
        },
        keys=[{"team": "t", "key": KEY}],
    )

    async def one(i: int) -> bool:
        who = Subject(f"user-{i}", (f"made-up-{i}",), "gpt-4o-mini", f"run-{i}")
        try:
            res = await acct.reserve("t", DIGEST, "gpt-4o-mini", WORST, 0, meta(request_id=f"r{i}"), who)
        except BudgetExceeded:
            return False
        assert res is not None
        await acct.settle(res, WORST, 0)
        return True

    assert sum(await asyncio.gather(*(one(i) for i in range(200)))) == FIT  # the team's budget, exactly
    clock.t += 86_400  # a new day; the session's life budget (3) and an end user's day budget (2) still bind
    stranger = Subject("stranger", (), "gpt-4o-mini", "run-new")
    assert await acct.reserve("t", DIGEST, "gpt-4o-mini", 2 * WORST, 0, meta(), stranger) is not None
    with pytest.raises(BudgetExceeded) as e:
        await acct.reserve("t", DIGEST, "gpt-4o-mini", WORST, 0, meta(), stranger)
    assert "end user 'stranger'" in e.value.message
    with pytest.raises(BudgetExceeded) as e:  # another end user, the same session: the session's life budget
        await acct.reserve("t", DIGEST, "gpt-4o-mini", 2 * WORST, 0, meta(), Subject("other", (), "", "run-new"))
    assert "session 'run-new'" in e.value.message


async def test_what_the_budgets_use_follows_runtime_overrides(store: Store, clock: Clock) -> None:  # noqa: F811
    """The request path skips observed sizing and threshold checks while no budget in force uses them; an
    override that does turns them on (here and, through load_overrides, in every other process)."""
    acct = accountant(store, clock, teams={"t": {"budgets": [{"window": "day", "tokens": 1000}]}}, keys=[])
    assert (acct.budgets.observed, acct.budgets.notifying) == (False, False)
    budget = BudgetSettings(window="day", tokens=1000, reserve="observed", notify_at=(0.5,))
    await acct.budgets.set_override("t", [budget])
    assert (acct.budgets.observed, acct.budgets.notifying) == (True, True)
    other = accountant(store, clock, teams={"t": {"budgets": [{"window": "day", "tokens": 1000}]}}, keys=[])
    assert await other.budgets.load_overrides()
    assert (other.budgets.observed, other.budgets.notifying) == (True, True)

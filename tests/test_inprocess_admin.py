"""The admin API in process (tests/inprocess.py): guarded by ``admin_key`` (401 in OpenAI's envelope, off
without one), budgets read and overridden at runtime (validated as the config is, in force at once,
persisted in the SQLite store across a restart), usage read from the ledger, runtime keys created, listed
and revoked."""

from __future__ import annotations

import hashlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from tests.inprocess import ADMIN_KEY, KEYS, Harness, chat_answer, json_reply, running

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100}
ADMIN_ROUTES = [
    ("GET", "/admin/usage"),
    ("GET", "/admin/teams/search/budgets"),
    ("PUT", "/admin/teams/search/budgets"),
    ("POST", "/admin/keys"),
    ("GET", "/admin/keys"),
    ("DELETE", "/admin/keys/" + "0" * 64),
    ("GET", "/admin/openapi.json"),
]


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running(tmp_path) as h:
        h.provider.on("/v1/chat/completions", json_reply(chat_answer("ok", prompt=12, completion=8)))
        yield h


def error_of(body: dict[str, Any]) -> dict[str, Any]:
    error: dict[str, Any] = body["error"]
    assert set(error) == {"message", "type", "param", "code"}
    return error


async def test_every_admin_route_needs_the_admin_key(gw: Harness) -> None:
    for method, path in ADMIN_ROUTES:
        for key in (None, "wrong-admin-key", KEYS["search-app"]):  # a team's key is no admin key
            r = await gw.admin(method, path, {"budgets": []} if method == "PUT" else None, key=key)
            assert r.status_code == 401, (method, path, key, r.text)
            assert error_of(r.json()) == {
                "message": "Invalid admin key.",
                "type": "invalid_request_error",
                "param": None,
                "code": "invalid_api_key",
            }
    assert (await gw.admin("GET", "/admin/teams/search/budgets")).json()["budgets"] != []  # nothing was changed
    spec = await gw.admin("GET", "/admin/openapi.json")
    assert spec.status_code == 200 and "/admin/teams/{team}/budgets" in spec.json()["paths"]
    missing = await gw.admin("GET", "/admin/nothing")
    assert missing.status_code == 404 and error_of(missing.json())["code"] == "not_found"


async def test_the_admin_api_is_off_without_an_admin_key(tmp_path: Path) -> None:
    async with running(tmp_path, admin_key=None) as gw:
        for method, path in ADMIN_ROUTES:
            r = await gw.admin(method, path, {"budgets": []} if method == "PUT" else None, key="anything")
            assert r.status_code == 404, (method, path, r.text)
            assert error_of(r.json())["code"] == "admin_disabled"


async def test_budgets_read_with_their_status(gw: Harness) -> None:
    assert (await gw.post("/v1/chat/completions", CHAT)).status_code == 200
    await gw.settled()
    r = await gw.admin("GET", "/admin/teams/search/budgets")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["team"] == "search"
    assert body["budgets"] == [{"window": "day", "tokens": 10_000_000}, {"window": "month", "usd": "100"}]
    status = {(s["window"], s["unit"]): s for s in body["status"]}
    day, month = status["day", "tokens"], status["month", "usd"]
    assert (day["scope"], day["limit"], day["used"], day["reserved"], day["remaining"]) == (
        "team",
        10_000_000,
        20,
        0,
        9_999_980,
    )
    assert day["resets_at"] == "2026-03-11T00:00:00.000Z"
    assert (month["limit"], month["used"], month["limit_usd"], month["resets_at"]) == (
        100_000_000,
        7,  # 12 x 0.15 + 8 x 0.60 = 6.6 micro-USD
        100,
        "2026-04-01T00:00:00.000Z",
    )

    unknown = await gw.admin("GET", "/admin/teams/nobody/budgets")
    assert unknown.status_code == 404
    assert error_of(unknown.json()) == {
        "message": "Unknown team 'nobody'.",
        "type": "invalid_request_error",
        "param": None,
        "code": "team_not_found",
    }


async def test_a_budget_override_is_in_force_at_once_and_survives_a_restart(tmp_path: Path) -> None:
    override = {"budgets": [{"window": "day", "tokens": 500}, {"window": "month", "usd": 1, "warn_at": 0.8}]}
    async with running(tmp_path) as gw:
        gw.provider.on("/v1/chat/completions", json_reply(chat_answer("ok", prompt=12, completion=8)))
        assert (await gw.post("/v1/chat/completions", {**CHAT, "max_tokens": 1000})).status_code == 200
        r = await gw.admin("PUT", "/admin/teams/search/budgets", override)
        assert r.status_code == 200, r.text
        assert r.json()["budgets"] == [
            {"window": "day", "tokens": 500},
            {"window": "month", "usd": "1", "warn_at": 0.8},
        ]

        refused = await gw.post("/v1/chat/completions", {**CHAT, "max_tokens": 1000})
        assert refused.status_code == 429, refused.text
        assert "for this day (500 tokens)" in refused.json()["error"]["message"]
        assert (await gw.post("/v1/chat/completions", CHAT)).status_code == 200  # 100 + the input fits
        assert [r.outcome for r in await gw.ledger()] == ["ok", "budget_exceeded", "ok"]
        others = (await gw.admin("GET", "/admin/teams/research/budgets")).json()["budgets"]
        assert others == [{"window": "day", "tokens": 5000}, {"window": "month", "usd": "2"}]  # only search's

    async with running(tmp_path) as gw:  # the same SQLite file: the override is the store's
        assert (await gw.admin("GET", "/admin/teams/search/budgets")).json()["budgets"] == r.json()["budgets"]
        again = await gw.post("/v1/chat/completions", {**CHAT, "max_tokens": 1000})
        assert again.status_code == 429 and "for this day (500 tokens)" in again.json()["error"]["message"]
        assert gw.provider.calls == []


@pytest.mark.parametrize(
    ("budgets", "message"),
    [
        (
            [{"window": "fortnight", "tokens": 5}],
            "budgets.0.window: Input should be 'minute', 'hour', 'day', 'week', 'month' or 'quarter'",
        ),
        (
            [{"window": "day", "tokens": 5}, {"window": "week", "tokens": 5, "usd": 1}],
            "budgets.1: Value error, give exactly one of `tokens` or `usd`",
        ),
        ([{"window": "day", "tokens": -1}], "budgets.0.tokens: Input should be greater than 0"),
        (
            [{"window": "day", "usd": 1, "warn_at": 0.5, "downgrade_to": "gpt-5"}],
            "budgets.0.downgrade_to: unknown model 'gpt-5'",
        ),
    ],
)
async def test_an_invalid_override_is_refused_and_changes_nothing(
    gw: Harness, budgets: list[dict[str, Any]], message: str
) -> None:
    r = await gw.admin("PUT", "/admin/teams/research/budgets", {"budgets": budgets})
    assert r.status_code == 400, r.text
    error = error_of(r.json())
    assert (error["type"], error["param"]) == ("invalid_request_error", "budgets")
    assert error["message"].startswith(message)  # the budget's index named, as in config errors
    current = (await gw.admin("GET", "/admin/teams/research/budgets")).json()["budgets"]
    assert current == [{"window": "day", "tokens": 5000}, {"window": "month", "usd": "2"}]


async def test_usage_reads_the_ledger(gw: Harness) -> None:
    for key in ("search-app", "search-batch", "research"):
        assert (await gw.post("/v1/chat/completions", CHAT, key=KEYS[key])).status_code == 200
    refused = await gw.post("/v1/chat/completions", {**CHAT, "model": "gpt-4o"}, key=KEYS["interns"])
    assert refused.status_code == 404  # interns may not use gpt-4o
    await gw.settled()

    r = await gw.admin("GET", "/admin/usage")
    assert r.status_code == 200, r.text
    teams = {t["team"]: t for t in r.json()["teams"]}
    assert set(teams) == {"search", "research", "interns"}
    (search,) = teams["search"]["usage"]
    assert search == {
        "model": "gpt-4o-mini",
        "requests": 2,
        "input_tokens": 24,
        "cached_input_tokens": 0,
        "output_tokens": 16,
        "reasoning_tokens": 0,
        "cost_usd": 0.000014,
        "cost_micro_usd": 14,
    }
    # a refused request is a request, with no tokens
    assert [(u["model"], u["requests"], u["input_tokens"], u["cost_micro_usd"]) for u in teams["interns"]["usage"]] == [
        ("gpt-4o", 1, 0, 0)
    ]
    # the key with a budget of its own shows it
    assert [b["limit"] for b in teams["search"]["keys"]["search-batch"]] == [1500]

    one = await gw.admin("GET", "/admin/usage?team=research")
    assert [t["team"] for t in one.json()["teams"]] == ["research"]
    assert one.json()["teams"][0]["usage"][0]["requests"] == 1
    assert (await gw.admin("GET", "/admin/usage?team=nobody")).status_code == 404
    # the ledger's rows are stamped with the wall clock: a window that ends before them holds none
    recent = await gw.admin("GET", "/admin/usage?team=search&since_seconds=0")
    assert recent.json()["teams"][0]["usage"] == []


async def test_runtime_keys_created_listed_and_revoked(gw: Harness) -> None:
    created = await gw.admin("POST", "/admin/keys", {"team": "research", "name": "notebook"})
    assert created.status_code == 201, created.text
    new = created.json()
    assert new["sha256"] == hashlib.sha256(new["key"].encode()).hexdigest()
    assert (new["team"], new["name"]) == ("research", "notebook")
    unnamed = (await gw.admin("POST", "/admin/keys", {"team": "interns"})).json()
    assert unnamed["name"] == f"key-{unnamed['sha256'][:8]}"

    listed = (await gw.admin("GET", "/admin/keys")).json()["keys"]
    config = [k for k in listed if k["source"] == "config"]
    assert [k["name"] for k in config] == ["search-app", "search-batch", "research", "interns"]
    assert config[0]["sha256"] == hashlib.sha256(KEYS["search-app"].encode()).hexdigest()
    assert "key" not in config[0]  # only digests are ever listed
    stored = {k["name"]: k for k in listed if k["source"] == "store"}
    assert stored["notebook"] == {
        "sha256": new["sha256"],
        "team": "research",
        "name": "notebook",
        "source": "store",
        "revoked": False,
    }
    research = (await gw.admin("GET", "/admin/keys?team=research")).json()["keys"]
    assert [(k["name"], k["source"]) for k in research] == [("research", "config"), ("notebook", "store")]

    assert (await gw.post("/v1/chat/completions", CHAT, key=new["key"])).status_code == 200
    revoked = await gw.admin("DELETE", f"/admin/keys/{new['sha256']}")
    assert revoked.status_code == 200 and revoked.json() == {"sha256": new["sha256"], "revoked": True}
    assert (await gw.post("/v1/chat/completions", CHAT, key=new["key"])).status_code == 401
    after = {k["name"]: k["revoked"] for k in (await gw.admin("GET", "/admin/keys")).json()["keys"]}
    assert after["notebook"] is True and after[unnamed["name"]] is False

    rows = await gw.ledger()
    assert [(r.team, r.key_name, r.outcome) for r in rows] == [
        ("research", "notebook", "ok"),
        ("", "", "unauthorized"),
    ]


async def test_key_requests_that_cannot_be_served(gw: Harness) -> None:
    unknown_team = await gw.admin("POST", "/admin/keys", {"team": "nobody"})
    assert unknown_team.status_code == 404 and error_of(unknown_team.json())["code"] == "team_not_found"
    no_team = await gw.admin("POST", "/admin/keys", {"name": "x"})
    assert no_team.status_code == 400
    assert error_of(no_team.json())["param"] == "team"
    unknown_key = await gw.admin("DELETE", "/admin/keys/" + "0" * 64)
    assert unknown_key.status_code == 404 and error_of(unknown_key.json())["code"] == "key_not_found"
    # a config key is revoked by editing the config, not here
    digest = hashlib.sha256(KEYS["research"].encode()).hexdigest()
    assert (await gw.admin("DELETE", f"/admin/keys/{digest}")).status_code == 404
    assert (await gw.post("/v1/chat/completions", CHAT, key=KEYS["research"])).status_code == 200
    assert [k for k in (await gw.admin("GET", "/admin/keys")).json()["keys"] if k["source"] == "store"] == []
    assert ADMIN_KEY not in (await gw.admin("GET", "/admin/keys")).text

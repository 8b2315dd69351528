"""Self-service usage at every level (issue 13): ``GET /v1/usage`` shows the caller every level that applies to
it (the org, its team, its key, the team's tags, models, end users with their top spenders, sessions) with the
amounts used, and nothing of another team; ``?end_user=`` / ``?tag=`` / ``?session=`` show one entity, bad ones
are a 400 in OpenAI's shape; ``/admin/usage`` and ``quotagate budgets show --levels`` show the same levels. The
ledger's top-end-users query answers alike on memory, SQLite, Redis and PostgreSQL.

Traffic goes through the official openai SDK into the in-process gateway (a real scripted provider behind it)."""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from proxy.ledger_sink import StoreLedger
from proxy.store import open_store
from proxy.store.base import LedgerRecord
from proxy.store.end_user_spend import EndUserSpend
from proxy.store.pg_ledger import PostgresLedger
from tests.inprocess import ADMIN_KEY, Clock, Harness, chat_answer, config, json_reply, running
from tests.pg_server import pg_server, postgres_url
from tests.test_cli import cli, ok

__all__ = ["pg_server", "postgres_url"]  # the fixtures, imported for pytest

A_KEY, B_KEY = "sk-alpha-app-0001", "sk-beta-app-0002"
TEAMS: dict[str, Any] = {
    "alpha": {
        "budgets": [{"window": "day", "tokens": 1_000_000}, {"window": "month", "usd": 50}],
        "rate_limits": {"rpm": 600},
        "end_user_budgets": [{"window": "day", "tokens": 100_000}],
        "end_users": {"vip-alice": {"budgets": [{"window": "week", "tokens": 500_000}]}},
        "tags": {"allowed": ["checkout", "ranking"], "budgets": {"checkout": [{"window": "day", "usd": 5}]}},
        "model_limits": {"gpt-4o": {"budgets": [{"window": "day", "tokens": 200_000}], "rate_limits": {"tpm": 50_000}}},
        "session_budgets": [{"tokens": 300_000}],
    },
    "beta": {
        "budgets": [{"window": "day", "tokens": 2_000_000}],
        "end_user_budgets": [{"window": "day", "usd": 1}],
    },
}
KEYS = [
    {"team": "alpha", "name": "alpha-app", "key": A_KEY, "budgets": [{"window": "day", "tokens": 400_000}]},
    {"team": "beta", "name": "beta-app", "key": B_KEY},
]
ORG = {"budgets": [{"window": "month", "usd": 1000}]}
# what only alpha has: no answer to beta may contain any of it
ALPHA_ONLY = ("alpha", "vip-alice", "u-carol", "ranking", "run-1", 'gpt-4o"', "500000", "300000")


def now_clear_of_midnight() -> float:
    """Real time (the CLI reads the windows by the wall clock), at least a minute clear of a UTC day's end."""
    now = time.time()
    if now % 86_400 > 86_400 - 60:
        time.sleep(86_400 - now % 86_400 + 1)
    return time.time()


def sdk(h: Harness, key: str) -> openai.AsyncOpenAI:
    """The official client, in process: over the same ASGI app as the harness's client (the SDK's own httpx)."""
    transport = h.client._transport
    assert isinstance(transport, httpx.ASGITransport)
    http = httpx2.AsyncClient(transport=httpx2.ASGITransport(app=transport.app))
    return openai.AsyncOpenAI(base_url="http://quotagate/v1", api_key=key, http_client=http, max_retries=0)


async def traffic(h: Harness) -> list[LedgerRecord]:
    """Alpha: bob twice (tag checkout, session run-1), vip-alice on gpt-4o (tag ranking), carol once; beta: its own
    bob (tag checkout, which beta does not budget). Returns the ledger."""
    h.provider.on(
        "/v1/chat/completions",
        json_reply(chat_answer("a", 100, 20)),
        json_reply(chat_answer("b", 100, 20)),
        json_reply(chat_answer("c", 300, 100, model="gpt-4o")),
        json_reply(chat_answer("d", 50, 10)),
        json_reply(chat_answer("e", 70, 30)),
    )
    hi: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]
    async with sdk(h, A_KEY) as a, sdk(h, B_KEY) as b:
        run = {"x-quotagate-tags": "checkout", "x-quotagate-session": "run-1"}
        for _ in range(2):
            await a.chat.completions.create(model="gpt-4o-mini", messages=hi, user="u-bob", extra_headers=run)
        tag = {"x-quotagate-tags": "ranking"}
        await a.chat.completions.create(model="gpt-4o", messages=hi, user="vip-alice", extra_headers=tag)
        await a.chat.completions.create(model="gpt-4o-mini", messages=hi, user="u-carol")
        tag = {"x-quotagate-tags": "checkout"}
        await b.chat.completions.create(model="gpt-4o-mini", messages=hi, user="u-bob", extra_headers=tag)
    rows = await h.ledger()
    assert [(r.team, r.end_user, r.outcome) for r in rows] == [
        ("alpha", "u-bob", "ok"),
        ("alpha", "u-bob", "ok"),
        ("alpha", "vip-alice", "ok"),
        ("alpha", "u-carol", "ok"),
        ("beta", "u-bob", "ok"),
    ]
    return rows


def cost(rows: list[LedgerRecord], **match: Any) -> int:
    return sum(r.cost_micro_usd for r in rows if all(getattr(r, k) == v for k, v in match.items()))


async def usage(h: Harness, key: str, query: str = "") -> Any:
    r = await h.client.get("/v1/usage" + query, headers={"authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return r.json()


def one(statuses: list[dict[str, Any]], **match: Any) -> dict[str, Any]:
    (found,) = [s for s in statuses if all(s[k] == v for k, v in match.items())]
    return found


@pytest.fixture(params=["sqlite", "redis"])
async def gw(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    store = request.getfixturevalue("clean_redis") if request.param == "redis" else "sqlite"
    clock = Clock(now_clear_of_midnight())
    async with running(tmp_path, store, clock=clock, teams=TEAMS, keys=KEYS, org=ORG) as h:
        yield h


async def test_the_caller_sees_every_level_with_what_it_used(gw: Harness) -> None:
    rows = await traffic(gw)
    doc = await usage(gw, A_KEY)
    lv = doc["levels"]

    # the fields that were there stay as they were
    assert doc["team"] == "alpha" and set(doc) >= {"since", "usage", "budgets", "keys"}
    assert [(b["scope"], b["window"], b["unit"]) for b in doc["budgets"]] == [
        ("org", "month", "usd"),
        ("team", "day", "tokens"),
        ("team", "month", "usd"),
    ]
    assert one(doc["keys"]["alpha-app"], window="day")["used"] == 700

    # the org: one counter for every team, shown whole (beta's spend included), named for no team
    assert lv["org"]["shared"] is True
    assert one(lv["org"]["budgets"], window="month")["used"] == cost(rows)
    assert one(lv["team"]["budgets"], window="day")["used"] == 120 + 120 + 400 + 60
    assert one(lv["team"]["budgets"], window="month")["used"] == cost(rows, team="alpha")
    assert one(lv["team"]["rate_limits"], unit="requests")["used"] == 4  # this minute
    assert lv["key"]["name"] == "alpha-app" and one(lv["key"]["budgets"], window="day")["used"] == 700
    assert lv["keys"]["alpha-app"] == {k: v for k, v in lv["key"].items() if k != "name"}

    # tags: the allow-list, and the budgeted tag's spend (only the requests tagged checkout)
    assert lv["tags"]["allowed"] == ["checkout", "ranking"]
    (checkout,) = lv["tags"]["budgets"]["checkout"]
    assert (checkout["scope"], checkout["used"]) == ("tag", cost(rows, team="alpha", tags="checkout"))
    assert checkout["used_usd"] == checkout["used"] / 1e6 and checkout["limit_usd"] == 5

    # the model limit: its budget and its TPM this minute
    gpt4o = lv["models"]["gpt-4o"]
    assert one(gpt4o["budgets"], window="day")["used"] == 400
    assert one(gpt4o["rate_limits"], unit="tokens")["used"] == 400

    # end users: the default's terms, and the top spenders of the longest end-user window (vip-alice's week), in
    # tokens, each with their own budget
    users = lv["end_users"]
    (default,) = users["default"]["budgets"]
    assert (default["window"], default["unit"], default["limit"]) == ("day", "tokens", 100_000)
    assert "used" not in default and users["explicit"] == ["vip-alice"]
    top = users["top"]
    assert (top["by"], top["window"], top["limit"]) == ("tokens", "week", 10)
    assert [(u["end_user"], u["budget"], u["requests"], u["tokens"]) for u in top["end_users"]] == [
        ("vip-alice", "explicit", 1, 400),
        ("u-bob", "default", 2, 240),
        ("u-carol", "default", 1, 60),
    ]
    alice, bob, _ = top["end_users"]
    assert alice["cost_micro_usd"] == cost(rows, end_user="vip-alice")
    assert [(s["window"], s["used"]) for s in alice["budgets"]] == [("week", 400)]
    assert [(s["window"], s["used"], s["remaining"]) for s in bob["budgets"]] == [("day", 240, 100_000 - 240)]

    # sessions: the terms (a session's life) and the TTL
    (life,) = lv["sessions"]["budgets"]
    assert (life["window"], life["limit"], life["resets_at"], lv["sessions"]["ttl"]) == (None, 300_000, None, "24h")


async def test_one_entity_on_request(gw: Harness) -> None:
    rows = await traffic(gw)
    doc = await usage(gw, A_KEY, "?end_user=u-bob&tag=checkout&session=run-1&top=1")
    assert doc["end_user"]["budget"] == "default"
    assert [(s["scope"], s["window"], s["used"]) for s in doc["end_user"]["budgets"]] == [("end_user", "day", 240)]
    assert [s["used"] for s in doc["tag"]["budgets"]] == [cost(rows, team="alpha", tags="checkout")]
    assert [(s["scope"], s["used"]) for s in doc["session"]["budgets"]] == [("session", 240)]
    assert [u["end_user"] for u in doc["levels"]["end_users"]["top"]["end_users"]] == ["vip-alice"]

    vip = await usage(gw, A_KEY, "?end_user=vip-alice")
    assert vip["end_user"]["budget"] == "explicit" and [s["used"] for s in vip["end_user"]["budgets"]] == [400]
    # an end user or session nobody used is a counter at zero; an allowed tag without a budget has none
    fresh = await usage(gw, A_KEY, "?end_user=nobody-yet&session=run-2&tag=ranking")
    assert [s["used"] for s in fresh["end_user"]["budgets"] + fresh["session"]["budgets"]] == [0, 0]
    assert fresh["tag"]["budgets"] == []
    assert (await usage(gw, A_KEY, "?top=0"))["levels"]["end_users"]["top"]["end_users"] == []


@pytest.mark.parametrize(
    ("query", "status", "param", "code"),
    [
        ("?tag=nightly", 404, None, "tag_not_found"),  # not in alpha's tags.allowed
        ("?tag=no%20spaces", 400, "tag", None),
        ("?end_user=", 400, "end_user", None),
        ("?end_user=" + "x" * 129, 400, "end_user", None),
        ("?session=", 400, "session", None),
        ("?top=101", 400, "top", None),
        ("?top=-1", 400, "top", None),
        ("?top=ten", 400, "top", None),
        ("?team=beta", 400, "team", None),
        ("?end_user=a&end_user=b", 400, "end_user", None),
        ("?end_user=%ff", 400, None, None),
    ],
)
async def test_bad_queries_are_refused_in_openais_shape(
    gw: Harness, query: str, status: int, param: str | None, code: str | None
) -> None:
    r = await gw.client.get("/v1/usage" + query, headers={"authorization": f"Bearer {A_KEY}"})
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", param, code)
    assert (await gw.client.get("/v1/usage" + query)).status_code == 401  # the key is checked first


async def test_another_team_sees_nothing_of_alpha(gw: Harness) -> None:
    rows = await traffic(gw)
    for query in ("", "?end_user=u-bob&tag=checkout&session=run-2"):
        r = await gw.client.get("/v1/usage" + query, headers={"authorization": f"Bearer {B_KEY}"})
        assert r.status_code == 200, r.text
        assert not [word for word in ALPHA_ONLY if word in r.text], query
    # naming alpha's end users, tags and sessions tells beta exactly what naming ones nobody used does
    for name, kind in (("vip-alice", "end_user"), ("u-carol", "end_user"), ("ranking", "tag"), ("run-1", "session")):
        theirs = await usage(gw, B_KEY, f"?{kind}={name}")
        unseen = await usage(gw, B_KEY, f"?{kind}=never-seen")
        assert theirs[kind] == unseen[kind] | {kind: name} and theirs["levels"] == unseen["levels"]
    doc = await usage(gw, B_KEY, "?end_user=vip-alice&tag=checkout&session=run-1")
    lv = doc["levels"]
    assert doc["team"] == "beta" and lv["key"] == {"name": "beta-app", "budgets": [], "rate_limits": []}
    assert (lv["tags"], lv["models"], lv["keys"]) == ({"allowed": None, "budgets": {}}, {}, {})
    # beta's own bob, in beta's own unit (its end-user budget is in USD): alpha's bob is another counter
    top = lv["end_users"]["top"]
    assert top["by"] == "cost" and [(u["end_user"], u["tokens"]) for u in top["end_users"]] == [("u-bob", 100)]
    assert [s["used"] for s in top["end_users"][0]["budgets"]] == [cost(rows, team="beta")]
    # alpha's explicit end user is, in beta, an end user on beta's default budget, unused
    assert doc["end_user"]["budget"] == "default" and [s["used"] for s in doc["end_user"]["budgets"]] == [0]
    assert (doc["tag"]["budgets"], doc["session"]["budgets"]) == ([], [])
    assert one(lv["team"]["budgets"], window="day")["used"] == 100
    # the org's total is every team's spend: a number, with no team's name
    assert one(lv["org"]["budgets"], window="month")["used"] == cost(rows)


async def test_admin_usage_shows_the_levels_of_any_team(gw: Harness) -> None:
    await traffic(gw)
    r = await gw.admin("GET", "/admin/usage?team=alpha&end_user=u-bob&top=2")
    assert r.status_code == 200, r.text
    (doc,) = r.json()["teams"]
    assert doc["levels"]["key"] is None and list(doc["levels"]["keys"]) == ["alpha-app"]
    assert [u["end_user"] for u in doc["levels"]["end_users"]["top"]["end_users"]] == ["vip-alice", "u-bob"]
    assert [s["used"] for s in doc["end_user"]["budgets"]] == [240]
    every = (await gw.admin("GET", "/admin/usage")).json()["teams"]
    assert [d["team"] for d in every] == ["alpha", "beta"]
    bad = await gw.admin("GET", "/admin/usage?end_user=u-bob")  # an entity is one team's
    assert (bad.status_code, bad.json()["error"]["param"]) == (400, "team")
    bad = await gw.admin("GET", "/admin/usage?team=alpha&top=500")
    assert (bad.status_code, bad.json()["error"]["param"]) == (400, "top")
    assert (await gw.client.get("/admin/usage", headers={"authorization": f"Bearer {A_KEY}"})).status_code == 401


async def test_the_cli_shows_the_same_levels(gw: Harness, tmp_path: Path) -> None:
    rows = await traffic(gw)
    raw = config("http://127.0.0.1:9/v1", gw.store_url, "http://127.0.0.1:9/v1")
    raw.update(teams=TEAMS, keys=KEYS, org=ORG, admin_key=ADMIN_KEY)
    path = tmp_path / "quotagate.yaml"
    path.write_text(json.dumps(raw))  # JSON is YAML
    base = ("budgets", "show", "--levels", "--config", str(path))

    docs = json.loads(ok(cli(*base, "--team", "alpha", "--end-user", "u-bob", "--json", cwd=tmp_path)))
    api = await usage(gw, A_KEY, "?end_user=u-bob")
    (doc,) = docs
    assert doc["team"] == "alpha" and doc["end_user"] == api["end_user"]
    # the gateway's clock is the wall clock, fixed at the start: the same windows, bar the minute's rate limits
    assert doc["levels"]["team"]["budgets"] == api["levels"]["team"]["budgets"]
    for level in ("org", "keys", "tags", "end_users", "sessions"):
        assert doc["levels"][level] == api["levels"][level], level

    table = ok(cli(*base, "--team", "alpha", cwd=tmp_path)).splitlines()
    assert table[0].split() == [
        "team", "level", "entity", "window", "unit", "limit", "used", "held", "remaining", "used%", "resets_at"
    ]  # fmt: skip
    cells = [line.split() for line in table[1:]]
    assert cells[0][:6] == ["alpha", "org", "(shared)", "month", "usd", "$1,000.00"]
    assert cells[1][:7] == ["alpha", "team", "alpha", "day", "tokens", "1M", "700"]
    assert ["alpha", "key", "alpha-app", "day", "tokens", "400K", "700"] in [c[:7] for c in cells]
    assert ["alpha", "model", "gpt-4o", "day", "tokens", "200K", "400"] in [c[:7] for c in cells]
    assert ["alpha", "end_user", "vip-alice", "(explicit)", "week", "tokens", "500K", "400"] in [c[:8] for c in cells]
    assert ["alpha", "end_user", "u-bob", "(default)", "day", "tokens", "100K", "240"] in [c[:8] for c in cells]
    assert ["alpha", "session", "(each)", "life", "tokens", "300K"] in [c[:6] for c in cells]
    assert "top end users (by tokens, since" in "\n".join(table)
    assert any(line.split()[:5] == ["alpha", "vip-alice", "explicit", "1", "400"] for line in table)
    assert cost(rows, end_user="vip-alice") > 0

    beta = ok(cli(*base, "--team", "beta", cwd=tmp_path))
    assert not [word for word in ALPHA_ONLY if word in beta]
    unknown = cli(*base, "--team", "alpha", "--tag", "nightly", cwd=tmp_path)
    assert unknown.returncode == 1 and "allows no tag 'nightly'" in unknown.stderr
    alone = cli(*base, "--end-user", "u-bob", cwd=tmp_path)
    assert alone.returncode == 1 and "give --team too" in alone.stderr


# ---- the ledger query, on every ledger ------------------------------------------------------------------


def rec(i: int, team: str, end_user: str | None, cost_micro_usd: int, tokens: int, **kw: Any) -> LedgerRecord:
    fields: dict[str, Any] = {
        "request_id": f"r{i}",
        "ts": 1_790_000_000.0 + i,
        "team": team,
        "key_name": "k",
        "model": "gpt-4o-mini",
        "provider": "openai",
        "endpoint": "chat",
        "stream": False,
        "status": 200,
        "outcome": "ok",
        "counted_input": tokens // 2,
        "counted_output": 1,
        "input_tokens": tokens // 2,
        "cached_input_tokens": 0,
        "output_tokens": tokens - tokens // 2,
        "reasoning_tokens": 0,
        "cost_micro_usd": cost_micro_usd,
        "latency_ms": 1.0,
        "ttft_ms": None,
        "end_user": end_user,
    }
    return LedgerRecord(**(fields | kw))


RECORDS = [
    rec(0, "t", "ann", 500, 10),
    rec(1, "t", "ann", 500, 10),  # ann: 1000 micro-USD, 20 tokens
    rec(2, "t", "ben", 900, 90),
    rec(3, "t", "ben", 0, 0, status=429, outcome="budget_exceeded", charged=False, input_tokens=None),
    rec(4, "t", "cyd", 1000, 5),  # ties with ann on cost: more tokens first
    rec(5, "t", "cyd", 0, 15, input_tokens=None, counted_input=7, output_tokens=None, counted_output=8),
    rec(6, "t", None, 99_999, 999),  # no end user: not ranked
    rec(7, "other", "ann", 77_777, 777),  # another team's ann
    rec(8, "t", "dee", 5000, 1, ts=1_789_999_000.0),  # before the window
]
ANN, BEN, CYD = EndUserSpend("ann", 2, 20, 1000), EndUserSpend("ben", 2, 90, 900), EndUserSpend("cyd", 2, 20, 1000)


@pytest.fixture(params=["memory", "sqlite", "redis", "postgresql"])
async def reads(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    if request.param == "postgresql":
        from tests.test_pg_ledger import sql

        url = request.getfixturevalue("postgres_url")
        sql(url, "DROP TABLE IF EXISTS ledger, ledger_schema_version")
        ledger = PostgresLedger(url)
        await ledger.open()
        await ledger.write_ledger(RECORDS)
        yield ledger
        await ledger.close()
        return
    url = {"memory": "memory://", "sqlite": f"sqlite:///{tmp_path / 'q.db'}"}.get(request.param)
    store = open_store(url or request.getfixturevalue("clean_redis"))
    await store.open()
    await store.write_ledger(RECORDS)
    yield StoreLedger(store)
    await store.close()


async def test_top_end_users_on_every_ledger(reads: Any) -> None:
    since = 1_790_000_000.0
    # ann and cyd tie on cost and on tokens (cyd's counted where none were reported): by name; a refused request
    # counts as a request, never as tokens; rows without an end user, of another team or older are left out
    assert await reads.top_end_users("t", since, 10, "cost") == [ANN, CYD, BEN]
    assert await reads.top_end_users("t", since, 2, "tokens") == [BEN, ANN]
    assert await reads.top_end_users("t", since, 0) == []
    assert await reads.top_end_users("nobody", since) == []
    assert [s.end_user for s in await reads.top_end_users("t", since - 10_000)] == ["dee", "ann", "cyd", "ben"]

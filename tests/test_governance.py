"""Governance acceptance (issue 3) over real gateway processes, a real mock provider, real SQLite files and
real redis-servers: budgets under concurrency (one process, two workers, three replicas on one Redis),
reserve-then-settle, client disconnects, SIGKILLed replicas and lease reaping, restarts, context and output
caps, rate limits, Redis outages (closed and open), self-service usage and the admin API.

Every worst case here is computable: identical messages, a fixed ``max_tokens``, and the mock's prompt usage
counted with the gateway's own tokenizer, so ``worst = counted input + max_tokens``; when the mock answers
``max_tokens`` output tokens, actual usage equals the worst case to the token.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import json
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx
import openai
import pytest
import redis

from proxy.count import Counter
from proxy.pricing import price_of
from proxy.settings import load, parse
from proxy.store import open_store
from proxy.store.base import LedgerRecord
from proxy.usage import Usage
from tests.gateway import ROOT, Proc, base_config, mock_requests, start_gateway, start_mock
from tests.redis_server import RedisProcess, start_redis

pytestmark = pytest.mark.slow

MODEL = "gpt-4o-mini"
MSGS: list[dict[str, Any]] = [{"role": "user", "content": "Count the governance tokens, please."}]
CAP = 20  # max_tokens of every budget request; the mock answers exactly CAP tokens
ADMIN = {"authorization": "Bearer admin-secret"}
_COUNTER = Counter()
_T = TypeVar("_T")


def n_input(messages: list[Any] = MSGS, model: str = MODEL) -> int:
    """The gateway's pre-count, computed exactly as the pipeline does (config gives no encoding)."""
    return _COUNTER.chat(messages, None, model=model, encoding=None).tokens


N_IN = n_input()
WORST = N_IN + CAP  # tokens held per request; == actual usage when the mock answers CAP tokens
K = 20  # requests that fit the burst budget
BURST_LIMIT = K * WORST + WORST - 1  # one token short of K + 1
GO_DURATION = re.compile(r"^(\d+h)?(\d+m)?(\d+(\.\d+)?s|\d+ms)$")


def auth(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def chat(max_tokens: int | None = CAP, messages: list[Any] = MSGS, model: str = MODEL, **mock: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": messages}
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    body["mock"] = {"output_tokens": CAP, **mock}
    return body


def post(gw: Proc, key: str, body: dict[str, Any], timeout: float = 30.0) -> httpx.Response:
    return httpx.post(gw.url + "/v1/chat/completions", json=body, headers=auth(key), timeout=timeout)


def budgets(gw: Proc, team: str) -> dict[str, Any]:
    r = httpx.get(f"{gw.url}/admin/teams/{team}/budgets", headers=ADMIN, timeout=10)
    assert r.status_code == 200, r.text
    return dict(r.json())


def day(gw: Proc, team: str) -> dict[str, Any]:
    (row,) = [s for s in budgets(gw, team)["status"] if s["window"] == "day" and s["scope"] == "team"]
    return dict(row)


def wait_until(check: Callable[[], _T | None], timeout: float = 10.0, every: float = 0.05) -> _T:
    """Poll until ``check()`` returns a truthy value (which is returned); fail with the last value."""
    deadline = time.monotonic() + timeout
    last: _T | None = None
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.HTTPError):
            last = check()
            if last:
                return last
        time.sleep(every)
    raise AssertionError(f"condition not met within {timeout}s; last value: {last!r}")


def settled(gw: Proc, team: str, used: int) -> dict[str, Any]:
    """The team's day budget once nothing is held and ``used`` is committed."""
    return wait_until(lambda: (row := day(gw, team))["reserved"] == 0 and row["used"] == used and row, 10)


async def _ledger(url: str, team: str) -> list[LedgerRecord]:
    store = open_store(url)
    await store.open()
    try:
        return await store.ledger(0.0, team, limit=10_000)
    finally:
        await store.close()


def ledger(url: str, team: str) -> list[LedgerRecord]:
    """Every ledger row of a team, read straight from the store the gateways write to."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:  # works from sync and async tests alike
        return pool.submit(asyncio.run, _ledger(url, team)).result()


def ledger_rows(url: str, team: str, n: int, outcome: str | None = None) -> list[LedgerRecord]:
    def rows() -> list[LedgerRecord]:
        got = [r for r in ledger(url, team) if outcome is None or r.outcome == outcome]
        return got if len(got) >= n else []

    got = wait_until(rows, 10, 0.1)
    assert len(got) == n, got
    return got


def worst_usd(tokens_in: int, cap: int, model: str = MODEL) -> int:
    return PRICE[model].worst_case(tokens_in, cap)


def cost(tokens_in: int, tokens_out: int, model: str = MODEL) -> int:
    return PRICE[model].cost(Usage(tokens_in, 0, tokens_out, 0))


def clear_mock(mock: Proc) -> None:
    httpx.delete(mock.url + "/_mock/requests", timeout=5)


def in_parallel(*starts: Callable[[], _T]) -> list[_T]:
    with concurrent.futures.ThreadPoolExecutor(len(starts)) as pool:
        return [f.result() for f in [pool.submit(s) for s in starts]]


def redis_db(url: str, db: int) -> str:
    """The same server, another database: tests sharing the session Redis never see each other's keys."""
    url = url.rsplit("/", 1)[0] + f"/{db}"
    client = redis.Redis.from_url(url)
    try:
        client.flushdb()
    finally:
        client.close()
    return url


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"  # an absolute path gives sqlite:////...


# ---- shared processes --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("governance")


@pytest.fixture(scope="module")
def mock(tmp: Path) -> Iterator[Proc]:
    proc = start_mock(tmp)
    yield proc
    proc.terminate()


PRICE = {  # the builtin price table's rates, as every gateway here uses them
    name: price_of(m)
    for name, m in parse(
        {"providers": {"mock": {"base_url": "http://127.0.0.1:9/v1"}}, "models": {MODEL: {"provider": "mock"}}},
        env={},
    ).models.items()
}


def team_cfg(**teams: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    return teams, [{"team": t, "name": f"k-{t}", "key": f"sk-{t}"} for t in teams]


def day_budget(tokens: int, **extra: Any) -> dict[str, Any]:
    return {"budgets": [{"window": "day", "tokens": tokens, **extra}]}


RELEASE_CAP = 1000  # max_tokens of the release test: far above the 5 tokens the mock answers
RELEASE_OUT = 5
RELEASE_N = 10


def release_limit() -> int:
    worst, actual = N_IN + RELEASE_CAP, N_IN + RELEASE_OUT
    return worst + (RELEASE_N - 1) * actual + actual - 1


# A conversation whose latest turn fits a 'trim' cap only once the oldest turn and a tool exchange go.
TOOL_CALL = {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": '{"q": "x"}'}}
CONVERSATION: list[dict[str, Any]] = [
    {"role": "system", "content": "You are a careful assistant."},
    {"role": "user", "content": "First question about history " * 20},
    {"role": "assistant", "content": None, "tool_calls": [TOOL_CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": "tool output " * 30},
    {"role": "assistant", "content": "Here is what I found."},
    {"role": "user", "content": "Summarise it in one line."},
]
TRIM_KEPT = [CONVERSATION[0], CONVERSATION[4], CONVERSATION[5]]
TRIM_CAP = n_input(TRIM_KEPT)
REJECT_CAP = 10


@dataclass
class Main:
    gw: Proc
    mock: Proc
    store: str
    config: Path


@pytest.fixture(scope="module")
def main(tmp: Path, mock: Proc) -> Iterator[Main]:
    """One gateway on one SQLite file, with a team per scenario."""
    teams, keys = team_cfg(
        burst=day_budget(BURST_LIMIT),
        rej=day_budget(1),
        release=day_budget(release_limit()),
        dc=day_budget(10**6),
        rpm={"rate_limits": {"rpm": 3}},
        conc={"rate_limits": {"concurrent": 2}},
        ctxr={"max_input_tokens": REJECT_CAP, "on_context_overflow": "reject"},
        ctxt={"max_input_tokens": TRIM_CAP, "on_context_overflow": "trim"},
        outc={"max_output_tokens": 50},
        dg=day_budget(4 * (n_input(model="gpt-4o") + CAP), warn_at=0.5, downgrade_to=MODEL),
        t1=day_budget(100_000),
        t2={"models": [MODEL], **day_budget(55_555)},
        rt={},
    )
    store = sqlite_url(tmp / "main.db")
    cfg = base_config(mock.url, store, teams=teams, keys=keys)
    gw = start_gateway(tmp, cfg, name="main.yaml")
    yield Main(gw, mock, store, tmp / "main.yaml")
    gw.terminate()


# ---- 1. budgets under 200 concurrent requests -----------------------------------------------------------------


async def burst(urls: list[str], key: str, n: int = 200, delay: float = 3.0) -> list[httpx.Response]:
    """``n`` identical requests at once, round-robin over ``urls``; the mock holds each admitted one ``delay``."""
    limits = httpx.Limits(max_connections=n + 10, max_keepalive_connections=n + 10)
    body = chat(delay_s=delay)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:
        return list(
            await asyncio.gather(
                *(
                    client.post(urls[i % len(urls)] + "/v1/chat/completions", json=body, headers=auth(key))
                    for i in range(n)
                )
            )
        )


async def check_burst(gws: list[Proc], store: str) -> None:
    """Exactly K of 200 concurrent requests admitted, the rest 429 insufficient_quota; nothing overshoots."""
    results = await burst([g.url for g in gws], "sk-burst")
    ok = [r for r in results if r.status_code == 200]
    denied = [r for r in results if r.status_code != 200]
    assert len(ok) == K, sorted(r.status_code for r in results)
    for r in denied:
        assert r.status_code == 429, r.text
        assert r.json()["error"]["code"] == "insufficient_quota"
        assert r.json()["error"]["type"] == "insufficient_quota"
        assert r.headers["x-should-retry"] == "false"
    for r in ok:
        assert r.json()["usage"]["prompt_tokens"] == N_IN
        assert r.json()["usage"]["completion_tokens"] == CAP
    for g in gws:  # every replica reads the same counters
        row = await asyncio.to_thread(settled, g, "burst", K * WORST)
        assert row["used"] <= row["limit"] == BURST_LIMIT
    rows = await asyncio.to_thread(ledger_rows, store, "burst", 200)
    assert sorted(r.outcome for r in rows) == ["budget_exceeded"] * (200 - K) + ["ok"] * K
    for rec in rows:
        if rec.outcome == "ok":
            assert (rec.counted_input, rec.input_tokens, rec.output_tokens) == (N_IN, N_IN, CAP)
            assert rec.cost_micro_usd == cost(N_IN, CAP)
        else:
            assert (rec.status, rec.cost_micro_usd) == (429, 0)
    assert sum(rec.charged for rec in rows) == K
    async with httpx.AsyncClient(timeout=10) as client:
        usage = (await client.get(gws[0].url + "/admin/usage", params={"team": "burst"}, headers=ADMIN)).json()
    (report,) = usage["teams"][0]["usage"]
    assert (report["requests"], report["input_tokens"], report["output_tokens"]) == (200, K * N_IN, K * CAP)
    assert report["cost_micro_usd"] == K * cost(N_IN, CAP)
    # they all overlapped: every request arrived before the first admitted one finished
    first_done = min(rec.ts + (rec.latency_ms or 0) / 1000 for rec in rows if rec.outcome == "ok")
    assert max(rec.ts for rec in rows) < first_done


async def test_200_concurrent_requests_one_gateway_sqlite(main: Main) -> None:
    await check_burst([main.gw], main.store)


def test_usage_report_counts_only_forwarded_tokens(main: Main) -> None:
    for _ in range(2):
        r = post(main.gw, "sk-rej", chat())
        assert r.json()["error"]["code"] == "insufficient_quota"
    rows = ledger_rows(main.store, "rej", 2, "budget_exceeded")
    assert [(x.cost_micro_usd, x.charged, x.counted_input) for x in rows] == [(0, False, N_IN)] * 2
    r = httpx.get(main.gw.url + "/admin/usage", params={"team": "rej"}, headers=ADMIN, timeout=10)
    (row,) = r.json()["teams"][0]["usage"]
    assert (row["requests"], row["cost_micro_usd"]) == (2, 0)
    assert (row["input_tokens"], row["output_tokens"]) == (0, 0)  # nothing was sent upstream


async def test_200_concurrent_requests_two_workers_sqlite(tmp: Path, mock: Proc) -> None:
    teams, keys = team_cfg(burst=day_budget(BURST_LIMIT))
    store = sqlite_url(tmp / "workers.db")
    cfg = base_config(mock.url, store, teams=teams, keys=keys)
    gw = await asyncio.to_thread(start_gateway, tmp, cfg, workers=2, name="workers.yaml")
    try:
        await check_burst([gw], store)
    finally:
        await asyncio.to_thread(gw.terminate)


async def test_200_concurrent_requests_three_replicas_on_one_redis(tmp: Path, mock: Proc, redis_url: str) -> None:
    """Also: a key revoked on one replica stops working on the others within the 5 s auth cache."""
    teams, keys = team_cfg(burst=day_budget(BURST_LIMIT), rk={})
    store = redis_db(redis_url, 1)
    cfg = base_config(mock.url, store, teams=teams, keys=keys)
    gws = await asyncio.to_thread(
        in_parallel, *(lambda i=i: start_gateway(tmp, cfg, name=f"replica{i}.yaml") for i in range(3))
    )
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            made = await client.post(gws[0].url + "/admin/keys", headers=ADMIN, json={"team": "rk"})
            key, sha = made.json()["key"], made.json()["sha256"]
            for g in gws:  # every replica looks the runtime key up in Redis and caches it
                r = await client.post(g.url + "/v1/chat/completions", json=chat(), headers=auth(key))
                assert r.status_code == 200, r.text
            cached_at = time.monotonic()

            await check_burst(gws, store)

            revoked = await client.delete(f"{gws[0].url}/admin/keys/{sha}", headers=ADMIN)
            assert revoked.json() == {"sha256": sha, "revoked": True}
            for g in gws:
                while True:
                    r = await client.post(g.url + "/v1/chat/completions", json=chat(), headers=auth(key))
                    if r.status_code == 401:
                        break
                    assert r.status_code == 200
                    assert time.monotonic() - cached_at < 5.5, "a revoked key outlived the auth cache"
                    await asyncio.sleep(0.1)
                assert r.json()["error"]["code"] == "invalid_api_key"
    finally:
        await asyncio.to_thread(in_parallel, *(g.terminate for g in gws))


LEVELS_TEAM = {  # the end user binds at K; the tag and the model within the team hold every request too
    "end_user_budgets": [{"window": "day", "tokens": BURST_LIMIT}],
    "tags": {"allowed": ["checkout"], "budgets": {"checkout": [{"window": "day", "tokens": BURST_LIMIT + WORST}]}},
    "model_limits": {MODEL: {"budgets": [{"window": "day", "tokens": BURST_LIMIT + 2 * WORST}]}},
}
# one team per level, each bound by that level alone; their bursts run one after another on the same
# processes, the org's last: its counter holds every team's, so it is sized to fit K more after the others
LEVEL_TEAMS: dict[str, tuple[dict[str, Any], str]] = {
    "levels": (LEVELS_TEAM, "The budget of end user 'u-123' in team 'levels'"),
    "lv-tag": (
        {"tags": {"budgets": {"checkout": [{"window": "day", "tokens": BURST_LIMIT}]}}},
        "The budget of tag 'checkout' in team 'lv-tag'",
    ),
    "lv-model": (
        {"model_limits": {MODEL: {"budgets": [{"window": "hour", "tokens": BURST_LIMIT}]}}},
        f"The budget of model '{MODEL}' in team 'lv-model'",
    ),
    "lv-session": (
        {"session_budgets": [{"tokens": BURST_LIMIT}]},
        "The budget of session 'run-1' in team 'lv-session'",
    ),
    "lv-org": ({}, "The organisation's budget"),
}
ORG = {"budgets": [{"window": "month", "tokens": (len(LEVEL_TEAMS) - 1) * K * WORST + BURST_LIMIT}]}


def level_config(mock: Proc, store: str) -> dict[str, Any]:
    teams, keys = team_cfg(**{team: cfg for team, (cfg, _) in LEVEL_TEAMS.items()})
    return base_config(mock.url, store, teams=teams, keys=keys, org=ORG)


async def check_level_bursts(gws: list[Proc], store: str) -> None:
    """For each level (an end user, with a tag and a model holding too; a tag; a model; a session; the org):
    exactly K of 200 concurrent requests are admitted across every process, the refusals name the level and
    the entity, and the ledger agrees."""
    limits = httpx.Limits(max_connections=210, max_keepalive_connections=210)
    body = {**chat(delay_s=3.0), "user": "u-123"}
    for team, (_, words) in LEVEL_TEAMS.items():
        headers = {**auth(f"sk-{team}"), "x-quotagate-tags": "checkout", "x-quotagate-session": "run-1"}
        # a client per burst: a connection idle since the last one may be closing (keep-alive timeout) just
        # as it is reused, and a plain httpx client does not retry that
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            results = await asyncio.gather(
                *(
                    client.post(gws[i % len(gws)].url + "/v1/chat/completions", json=body, headers=headers)
                    for i in range(200)
                )
            )
            ok = [r for r in results if r.status_code == 200]
            assert len(ok) == K, (team, sorted(r.status_code for r in results))
            for r in results:
                if r.status_code != 200:
                    assert r.status_code == 429 and r.json()["error"]["code"] == "insufficient_quota", r.text
                    assert words in r.json()["error"]["message"], (team, r.text)
            rows = await asyncio.to_thread(ledger_rows, store, team, 200)
            assert sorted(rec.outcome for rec in rows) == ["budget_exceeded"] * (200 - K) + ["ok"] * K
            assert {(rec.end_user, rec.tags) for rec in rows} == {("u-123", "checkout")}


async def test_levels_exact_across_two_workers_on_sqlite(tmp: Path, mock: Proc) -> None:
    store = sqlite_url(tmp / "levels.db")
    gw = await asyncio.to_thread(start_gateway, tmp, level_config(mock, store), workers=2, name="levels-workers.yaml")
    try:
        await check_level_bursts([gw], store)
    finally:
        await asyncio.to_thread(gw.terminate)


async def test_levels_exact_across_three_replicas_on_one_redis(tmp: Path, mock: Proc, redis_url: str) -> None:
    store = redis_db(redis_url, 5)
    cfg = level_config(mock, store)
    gws = await asyncio.to_thread(
        in_parallel, *(lambda i=i: start_gateway(tmp, cfg, name=f"levels{i}.yaml") for i in range(3))
    )
    try:
        await check_level_bursts(gws, store)
    finally:
        await asyncio.to_thread(in_parallel, *(g.terminate for g in gws))


# ---- 2. actual usage far below the reservation -----------------------------------------------------------


def test_released_budget_admits_more_requests(main: Main) -> None:
    """Worst case N_IN + 1000, actual N_IN + 5: request i (from 0) fits while i * actual + worst <= limit."""
    worst, actual, limit = N_IN + RELEASE_CAP, N_IN + RELEASE_OUT, release_limit()
    expected = (limit - worst) // actual + 1
    assert expected == RELEASE_N and limit // worst == 1  # without release only one would ever fit
    statuses = []
    for _ in range(RELEASE_N + 3):
        r = post(main.gw, "sk-release", chat(RELEASE_CAP, output_tokens=RELEASE_OUT))
        statuses.append(r.status_code)
        if r.status_code != 200:
            assert r.json()["error"]["code"] == "insufficient_quota"
            break
        assert r.json()["usage"]["completion_tokens"] == RELEASE_OUT
    assert statuses == [200] * RELEASE_N + [429]
    row = settled(main.gw, "release", RELEASE_N * actual)
    assert row["remaining"] == limit - RELEASE_N * actual < worst


# ---- 3. client disconnect mid-stream ----------------------------------------------------------------------


def test_client_disconnect_mid_stream_is_charged_for_what_was_generated(main: Main) -> None:
    full = 200
    body = chat(full, output_tokens=full, tpot_s=0.02)
    body["stream"] = True
    seen = 0
    with (
        httpx.Client(timeout=30) as client,
        client.stream("POST", main.gw.url + "/v1/chat/completions", json=body, headers=auth("sk-dc")) as r,
    ):
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                seen += 1
                if seen == 10:
                    break  # leaving the block closes the connection mid-stream
    (rec,) = ledger_rows(main.store, "dc", 1)
    assert rec.outcome == "client_cancelled"
    assert rec.status == 200
    assert rec.counted_output is not None and seen <= rec.counted_output < full
    assert rec.input_tokens is None  # the usage chunk never came: quotagate's own counts are charged
    assert rec.counted_input == N_IN
    assert rec.cost_micro_usd == cost(N_IN, rec.counted_output) > 0
    settled(main.gw, "dc", N_IN + rec.counted_output)


# ---- 7. context and output caps through the official SDK -------------------------------------------------


def sdk(gw: Proc, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key, max_retries=0, timeout=30)


def test_context_cap_reject(main: Main) -> None:
    clear_mock(main.mock)
    with pytest.raises(openai.BadRequestError) as e:
        sdk(main.gw, "sk-ctxr").chat.completions.create(model=MODEL, messages=MSGS)  # type: ignore[arg-type]
    err = e.value
    assert err.status_code == 400
    assert err.code == "context_length_exceeded"
    assert err.param == "messages"
    assert f"at most {REJECT_CAP} input tokens" in err.message
    assert f"resulted in {N_IN} tokens" in err.message
    assert mock_requests(main.mock) == []  # nothing was forwarded
    (rec,) = ledger_rows(main.store, "ctxr", 1)
    assert (rec.outcome, rec.status, rec.cost_micro_usd) == ("context_rejected", 400, 0)


def test_context_cap_trim(main: Main) -> None:
    clear_mock(main.mock)
    original = n_input(CONVERSATION)
    assert n_input(CONVERSATION[:1] + CONVERSATION[2:]) > TRIM_CAP  # dropping the first turn is not enough
    raw = sdk(main.gw, "sk-ctxt").chat.completions.with_raw_response.create(
        model=MODEL,
        messages=CONVERSATION,  # type: ignore[arg-type]
        max_tokens=5,
        extra_body={"mock": {"output_tokens": 5}},
    )
    trimmed = int(raw.headers["x-quotagate-trimmed-tokens"])
    assert trimmed == original - TRIM_CAP > 0
    completion = raw.parse()
    assert completion.usage is not None and completion.usage.prompt_tokens == TRIM_CAP
    (sent,) = mock_requests(main.mock)
    got = sent["body"]["messages"]
    assert got == TRIM_KEPT  # system, then the newest turns; the tool call left with its result
    assert got[0]["role"] == "system" and got[-1] == CONVERSATION[-1]
    calls = {c["id"] for m in got for c in m.get("tool_calls") or ()}
    assert all(m["tool_call_id"] in calls for m in got if m["role"] == "tool")
    (rec,) = ledger_rows(main.store, "ctxt", 1)
    assert (rec.outcome, rec.trimmed_tokens, rec.counted_input, rec.input_tokens) == (
        "ok",
        trimmed,
        TRIM_CAP,
        TRIM_CAP,
    )


def test_output_cap_clamps_and_injects(main: Main) -> None:
    client = sdk(main.gw, "sk-outc")
    clear_mock(main.mock)
    client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=500)  # type: ignore[arg-type]
    client.chat.completions.create(model=MODEL, messages=MSGS)  # type: ignore[arg-type]
    client.chat.completions.create(model=MODEL, messages=MSGS, max_completion_tokens=900)  # type: ignore[arg-type]
    client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=7)  # type: ignore[arg-type]
    bodies = [r["body"] for r in mock_requests(main.mock)]
    assert [(b.get("max_tokens"), b.get("max_completion_tokens")) for b in bodies] == [
        (50, None),  # clamped
        (None, 50),  # injected (the preferred field)
        (None, 50),  # clamped
        (7, None),  # under the cap: untouched
    ]


# ---- 8. rate limits ----------------------------------------------------------------------------------------


def away_from_minute_edge(margin: float = 4.0) -> None:
    into = time.time() % 60
    if into > 60 - margin:
        time.sleep(60 - into + 0.05)


def test_rpm_limit(main: Main) -> None:
    away_from_minute_edge()
    client = sdk(main.gw, "sk-rpm")
    remaining = []
    for _ in range(3):
        raw = client.chat.completions.with_raw_response.create(model=MODEL, messages=MSGS, max_tokens=2)  # type: ignore[arg-type]
        assert raw.headers["x-ratelimit-limit-requests"] == "3"
        assert GO_DURATION.match(raw.headers["x-ratelimit-reset-requests"])
        remaining.append(raw.headers.get("x-ratelimit-remaining-requests"))
    assert remaining == ["2", "1", "0"]
    with pytest.raises(openai.RateLimitError) as e:
        client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=2)  # type: ignore[arg-type]
    err = e.value
    assert err.code == "rate_limit_exceeded"
    assert err.type == "requests"
    assert "Limit 3, Used 3, Requested 1" in err.message
    h = err.response.headers
    assert 1 <= int(h["retry-after"]) <= 60
    assert 0 <= int(h["retry-after-ms"]) <= 60_000
    assert h["x-ratelimit-limit-requests"] == "3"
    assert h["x-ratelimit-remaining-requests"] == "0"
    reset = h["x-ratelimit-reset-requests"]
    assert GO_DURATION.match(reset), reset
    assert "x-should-retry" not in h


async def test_concurrency_limit(main: Main) -> None:
    limits = httpx.Limits(max_connections=10)
    async with httpx.AsyncClient(timeout=30, limits=limits) as client:
        url = main.gw.url + "/v1/chat/completions"
        slow = chat(2, delay_s=1.0)
        rs = await asyncio.gather(*(client.post(url, json=slow, headers=auth("sk-conc")) for _ in range(3)))
        codes = sorted(r.status_code for r in rs)
        assert codes == [200, 200, 429]
        (denied,) = [r for r in rs if r.status_code == 429]
        assert denied.json()["error"]["code"] == "rate_limit_exceeded"
        assert "Too many concurrent requests" in denied.json()["error"]["message"]
        assert denied.headers["retry-after"] == "1"

        async def free() -> bool:
            r = await client.post(url, json=chat(2), headers=auth("sk-conc"))
            return r.status_code == 200

        # both slots come back once the admitted requests settle: two at once fit again
        for _ in range(100):
            again = await asyncio.gather(*(client.post(url, json=chat(2), headers=auth("sk-conc")) for _ in range(2)))
            if all(r.status_code == 200 for r in again):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("concurrency slots were not released")
        assert await free()


# ---- 10. self-service usage, admin API, runtime keys, downgrade -----------------------------------------


def test_self_service_usage_shows_only_the_callers_team(main: Main) -> None:
    for _ in range(2):
        assert post(main.gw, "sk-t1", chat(model="gpt-4o")).status_code == 200
    for _ in range(3):
        assert post(main.gw, "sk-t2", chat()).status_code == 200
    ledger_rows(main.store, "t1", 2)
    ledger_rows(main.store, "t2", 3)
    mine = httpx.get(main.gw.url + "/v1/usage", headers=auth("sk-t1"), timeout=10)
    assert mine.status_code == 200
    doc = mine.json()
    assert doc["team"] == "t1"
    n4o = n_input(model="gpt-4o")
    assert [(u["model"], u["requests"], u["input_tokens"], u["output_tokens"]) for u in doc["usage"]] == [
        ("gpt-4o", 2, 2 * n4o, 2 * CAP)
    ]
    assert [(b["scope"], b["window"], b["limit"], b["used"]) for b in doc["budgets"]] == [
        ("team", "day", 100_000, 2 * (n4o + CAP))
    ]
    assert "t2" not in mine.text and "55555" not in mine.text
    theirs = httpx.get(main.gw.url + "/v1/usage", headers=auth("sk-t2"), timeout=10).json()
    assert theirs["team"] == "t2"
    assert [(u["model"], u["requests"]) for u in theirs["usage"]] == [(MODEL, 3)]
    assert httpx.get(main.gw.url + "/v1/usage", timeout=10).status_code == 401
    assert httpx.get(main.gw.url + "/v1/usage", headers=auth("sk-nope"), timeout=10).status_code == 401


def test_admin_api_needs_the_admin_key(main: Main) -> None:
    for headers in ({}, {"authorization": "Bearer wrong"}, auth("sk-t1"), {"authorization": "Basic YWRtaW4tc2VjcmV0"}):
        for method, path in (
            ("GET", "/admin/usage"),
            ("GET", "/admin/teams/t1/budgets"),
            ("PUT", "/admin/teams/t1/budgets"),
            ("GET", "/admin/keys"),
            ("POST", "/admin/keys"),
            ("DELETE", "/admin/keys/" + "0" * 64),
        ):
            body = {"PUT": [], "POST": {"team": "t1"}}.get(method)
            r = httpx.request(method, main.gw.url + path, headers=headers, json=body, timeout=10)
            assert r.status_code == 401, (method, path, headers, r.text)
            assert r.json()["error"]["type"] == "invalid_request_error"
    ok = httpx.get(main.gw.url + "/admin/usage", headers=ADMIN, timeout=10)
    assert ok.status_code == 200
    assert {t["team"] for t in ok.json()["teams"]} == set(load(main.config).teams)
    assert httpx.get(main.gw.url + "/admin/teams/nope/budgets", headers=ADMIN).json()["error"]["code"] == (
        "team_not_found"
    )


def test_admin_api_off_without_admin_key(tmp: Path, mock: Proc) -> None:
    cfg = base_config(mock.url, "memory://", admin_key=None)
    gw = start_gateway(tmp, cfg, name="noadmin.yaml")
    try:
        for headers in ({}, ADMIN):
            r = httpx.get(gw.url + "/admin/usage", headers=headers)
            assert r.status_code == 404
            assert r.json()["error"]["code"] == "admin_disabled"
        assert post(gw, "sk-t1", chat()).status_code == 200  # the gateway itself works
    finally:
        gw.terminate()


def test_runtime_key_create_use_revoke(main: Main) -> None:
    r = httpx.post(main.gw.url + "/admin/keys", headers=ADMIN, json={"team": "rt", "name": "runtime"})
    assert r.status_code == 201, r.text
    key, sha = r.json()["key"], r.json()["sha256"]
    assert r.json()["team"] == "rt" and len(sha) == 64
    assert post(main.gw, key, chat()).status_code == 200
    listed = httpx.get(main.gw.url + "/admin/keys", params={"team": "rt"}, headers=ADMIN).json()["keys"]
    assert {"sha256": sha, "team": "rt", "name": "runtime", "source": "store", "revoked": False} in listed
    unknown = httpx.post(main.gw.url + "/admin/keys", headers=ADMIN, json={"team": "nope"})
    assert unknown.status_code == 404

    assert httpx.delete(f"{main.gw.url}/admin/keys/{sha}", headers=ADMIN).json() == {"sha256": sha, "revoked": True}
    t = time.monotonic()

    def refused() -> httpx.Response | None:
        r = post(main.gw, key, chat())
        return r if r.status_code == 401 else None

    denied = wait_until(refused, 6.5)
    assert denied is not None
    assert time.monotonic() - t < 6.5  # within the auth cache's 5 s
    assert denied.json()["error"]["code"] == "invalid_api_key"
    listed = httpx.get(main.gw.url + "/admin/keys", params={"team": "rt"}, headers=ADMIN).json()["keys"]
    assert {"sha256": sha, "team": "rt", "name": "runtime", "source": "store", "revoked": True} in listed
    assert httpx.delete(f"{main.gw.url}/admin/keys/{'f' * 64}", headers=ADMIN).status_code == 404


def test_downgrade_past_warn_at(main: Main) -> None:
    worst = n_input(model="gpt-4o") + CAP
    for _ in range(2):  # 2 * worst == warn_at (0.5) of the 4 * worst budget
        r = post(main.gw, "sk-dg", chat(model="gpt-4o"))
        assert r.status_code == 200
        assert "x-quotagate-downgraded-from" not in r.headers
        assert r.json()["model"] == "gpt-4o"
    settled(main.gw, "dg", 2 * worst)
    time.sleep(1.1)  # the used fraction is cached for a second per team
    clear_mock(main.mock)
    r = post(main.gw, "sk-dg", chat(model="gpt-4o"))
    assert r.status_code == 200
    assert r.headers["x-quotagate-downgraded-from"] == "gpt-4o"
    assert r.json()["model"] == MODEL
    (sent,) = mock_requests(main.mock)
    assert sent["body"]["model"] == MODEL
    rows = ledger_rows(main.store, "dg", 3)
    assert sorted(x.model for x in rows) == ["gpt-4o", "gpt-4o", MODEL]


# ---- 4. SIGKILL with streams in flight, 5. state across restarts -----------------------------------------


@pytest.fixture(params=["sqlite", "redis"])
def durable(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return sqlite_url(tmp_path / "durable.db")
    return redis_db(request.getfixturevalue("redis_url"), 2)


def usage_cli(config: Path, team: str) -> list[list[str]]:
    out = subprocess.run(
        [sys.executable, "-m", "proxy", "usage", "--config", str(config), "--team", team],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    ).stdout
    return [line.split() for line in out.splitlines()]


def streams_in_flight(gw: Proc, n: int, body: dict[str, Any]) -> Callable[[], list[str]]:
    """Start ``n`` streams, return once each has its 200 headers; the callable joins them (how each ended)."""
    pool = concurrent.futures.ThreadPoolExecutor(n)
    started = [concurrent.futures.Future[None]() for _ in range(n)]

    def run(ready: concurrent.futures.Future[None]) -> str:
        try:
            with (
                httpx.Client(timeout=30) as client,
                client.stream("POST", gw.url + "/v1/chat/completions", json=body, headers=auth("sk-t1")) as r,
            ):
                assert r.status_code == 200
                ready.set_result(None)
                for _ in r.iter_lines():
                    pass
            return "finished"
        except httpx.HTTPError as e:
            return type(e).__name__

    done = [pool.submit(run, s) for s in started]
    for s in started:
        s.result(timeout=10)

    def join() -> list[str]:
        try:
            return [d.result(timeout=10) for d in done]
        finally:
            pool.shutdown()

    return join


def test_restart_keeps_state_and_sigkill_is_reaped(durable: str, tmp_path: Path, mock: Proc) -> None:
    """A replica serves, gets a runtime override, then is SIGKILLed with streams in flight. The next one on
    the same store (5) keeps the usage and the override, and (4) charges the dead streams in full once their
    leases (2 s) expire, with a ledger row each, leaving nothing pinned."""
    teams, keys = team_cfg(t1=day_budget(10**6))
    cfg = base_config(mock.url, durable, teams=teams, keys=keys, lease_seconds=2)
    override = [{"window": "day", "tokens": 777_777}, {"window": "month", "usd": "3.5", "warn_at": 0.9}]
    n, cap = 3, 100
    worst = N_IN + cap

    first = start_gateway(tmp_path, cfg, name="first.yaml")
    try:
        for _ in range(2):
            assert post(first, "sk-t1", chat()).status_code == 200
        put = httpx.put(first.url + "/admin/teams/t1/budgets", headers=ADMIN, json=override, timeout=10)
        assert put.status_code == 200, put.text
        bad = httpx.put(first.url + "/admin/teams/t1/budgets", headers=ADMIN, json=[{"window": "day"}], timeout=10)
        assert bad.status_code == 400
        assert bad.json()["error"]["param"] == "budgets"
        settled(first, "t1", 2 * WORST)
        ledger_rows(durable, "t1", 2, "ok")

        body = chat(cap, output_tokens=cap, tpot_s=0.1)  # 10 s streams
        body["stream"] = True
        join = streams_in_flight(first, n, body)
        assert day(first, "t1")["reserved"] == n * worst
    finally:
        first.kill()
    t_kill = time.monotonic()
    assert "finished" not in join()

    second = start_gateway(tmp_path, cfg, name="second.yaml")
    try:
        doc = budgets(second, "t1")
        assert doc["budgets"] == override
        assert [s["limit"] for s in doc["status"]] == [777_777, 3_500_000]
        row = settled(second, "t1", 2 * WORST + n * worst)  # nothing pinned once the leases expire
        assert time.monotonic() - t_kill < 2 + 8
        assert row["limit"] == 777_777
        # the month USD budget exists since the override: it holds exactly the reaped streams' worst cost
        (month,) = [s for s in budgets(second, "t1")["status"] if s["window"] == "month"]
        assert (month["used"], month["reserved"]) == (n * worst_usd(N_IN, cap), 0)
        reaped = ledger_rows(durable, "t1", n, "lease_expired")
        assert len({r.request_id for r in reaped}) == n
        for r in reaped:
            assert r.cost_micro_usd == worst_usd(N_IN, cap) > 0
            assert (r.counted_input, r.team, r.model, r.stream, r.status) == (N_IN, "t1", MODEL, True, 0)
        assert post(second, "sk-t1", chat()).status_code == 200
        settled(second, "t1", 3 * WORST + n * worst)
    finally:
        assert second.terminate() in (0, -15)  # graceful (uvicorn re-raises SIGTERM once it has shut down)

    table = usage_cli(tmp_path / "second.yaml", "t1")
    assert table[0] == [
        "team", "model", "requests", "ok", "refused", "failed", "input", "cached", "output", "reasoning", "cost_usd"
    ]  # fmt: skip
    total_cost = 3 * cost(N_IN, CAP) + n * worst_usd(N_IN, cap)
    assert table[1:] == [
        # a reaped lease is charged its full worst case, and the report shows it so: its output cap too
        ["t1", MODEL, str(3 + n), "3", "0", str(n), str((3 + n) * N_IN), "0", str(3 * CAP + n * cap), "0",
         f"{total_cost / 1e6:.6f}"]
    ]  # fmt: skip


# ---- 9. Redis stopped during load ---------------------------------------------------------------------------


@pytest.fixture
def outage_redis() -> Iterator[RedisProcess]:
    # append-only with fsync on every write: what was committed before the outage survives the restart
    server = start_redis(extra_args=["--appendonly", "yes", "--appendfsync", "always"])
    yield server
    server.close()


def outage_gateway(tmp_path: Path, mock: Proc, server: RedisProcess, mode: str, limit: int) -> Proc:
    teams, keys = team_cfg(t1=day_budget(limit))
    cfg = base_config(mock.url, server.url, teams=teams, keys=keys, on_store_error=mode)
    return start_gateway(tmp_path, cfg, name=f"{mode}.yaml")


def test_redis_outage_closed_answers_503_and_never_overshoots(
    outage_redis: RedisProcess, tmp_path: Path, mock: Proc
) -> None:
    limit = 5 * WORST + WORST - 1
    gw = outage_gateway(tmp_path, mock, outage_redis, "closed", limit)
    try:
        for _ in range(2):
            assert post(gw, "sk-t1", chat()).status_code == 200
        settled(gw, "t1", 2 * WORST)
        outage_redis.stop()
        clear_mock(mock)
        for _ in range(3):
            t = time.monotonic()
            r = post(gw, "sk-t1", chat())
            assert time.monotonic() - t < 3  # fails fast
            assert r.status_code == 503
            assert r.json()["error"]["code"] == "store_unavailable"
        assert mock_requests(mock) == []  # nothing was forwarded
        outage_redis.start()
        codes = [post(gw, "sk-t1", chat()).status_code for _ in range(5)]
        assert codes == [200, 200, 200, 429, 429]  # 2 before + 3 after == 5 fit; never a sixth
        row = settled(gw, "t1", 5 * WORST)
        assert row["used"] <= limit
        rows = ledger_rows(outage_redis.url, "t1", 3, "store_unavailable")
        assert all(r.status == 503 and r.cost_micro_usd == 0 for r in rows)
    finally:
        gw.terminate()


def test_redis_outage_open_serves_and_reconciles(outage_redis: RedisProcess, tmp_path: Path, mock: Proc) -> None:
    gw = outage_gateway(tmp_path, mock, outage_redis, "open", 10**6)
    try:
        assert post(gw, "sk-t1", chat()).status_code == 200
        settled(gw, "t1", WORST)
        outage_redis.stop()
        served = 0
        for _ in range(4):
            t = time.monotonic()
            r = post(gw, "sk-t1", chat(output_tokens=CAP))
            assert time.monotonic() - t < 3
            assert r.status_code == 200, r.text
            served += 1
        status = httpx.get(f"{gw.url}/admin/teams/t1/budgets", headers=ADMIN, timeout=10)
        assert status.status_code == 503  # the admin API cannot read counters meanwhile
        outage_redis.start()
        # the counters now include every request served meanwhile, on top of what survived the restart
        settled(gw, "t1", WORST + served * WORST)
        rows = ledger_rows(outage_redis.url, "t1", 1 + served, "ok")
        assert all(r.input_tokens == N_IN and r.output_tokens == CAP for r in rows)
    finally:
        gw.terminate()


def test_redis_outage_open_serves_teams_with_a_downgrade_budget(
    outage_redis: RedisProcess, tmp_path: Path, mock: Proc
) -> None:
    teams, keys = team_cfg(t1=day_budget(10**6, warn_at=0.5, downgrade_to=MODEL))
    cfg = base_config(mock.url, outage_redis.url, teams=teams, keys=keys, on_store_error="open")
    gw = start_gateway(tmp_path, cfg, name="open-downgrade.yaml")
    try:
        assert post(gw, "sk-t1", chat(model="gpt-4o")).status_code == 200
        outage_redis.stop()
        time.sleep(1.1)  # past the one-second cache of the used fraction
        r = post(gw, "sk-t1", chat(model="gpt-4o"))
        assert r.status_code == 200, r.text
    finally:
        gw.kill()  # a graceful stop would wait for the absent store to flush the ledger

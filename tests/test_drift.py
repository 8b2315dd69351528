"""Counters that cannot drift (issue 13): after a mixed load (served, streamed, embedded, refused, failed,
failed over, a stream cut, a lease reaped in full) the reconcile finds every budget counter the ledger
accounts for (org, team, key, model within a team) equal to the ledger's sum for its window, on SQLite and
on Redis with a PostgreSQL ledger; a counter changed behind quotagate's back shows as exactly that much
drift (gauges, log); a counter with requests in flight is not compared until it is at rest."""

from __future__ import annotations

import asyncio
import copy
import logging
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis.asyncio as aioredis
from aiohttp import web

from proxy.drift import Drift, Reconciler
from proxy.drift_targets import targets
from proxy.settings import ConfigError, CounterCheckSettings, parse
from proxy.store.base import LedgerRecord
from tests.inprocess import KEYS, Clock, Harness, arrived, config, json_reply, running, sse_frames
from tests.pg_server import pg_server, postgres_url
from tests.test_inprocess_ledger import by_marker, chat, usage_for

__all__ = ["pg_server", "postgres_url"]  # fixtures, imported for pytest

ORG = {"budgets": [{"window": "day", "tokens": 50_000_000}, {"window": "month", "usd": 1000}]}
CHECKS = {"reconcile_seconds": 0, "seed_check_seconds": 0}  # the tests drive the passes
LEASE = 1.0  # seconds: the reaper charges a hung request this soon


def teams() -> dict[str, Any]:
    """tests/inprocess.py's teams, search with a model budget too."""
    out: dict[str, Any] = copy.deepcopy(config("http://x/v1", "memory://", "http://y/v1")["teams"])
    out["search"]["model_limits"] = {"gpt-4o-mini": {"budgets": [{"window": "day", "tokens": 9_000_000}]}}
    return out


@pytest.fixture
def pg_url(postgres_url: str) -> str:
    with psycopg.connect(postgres_url, autocommit=True) as con:
        con.execute("DROP TABLE IF EXISTS ledger, ledger_schema_version")
    return postgres_url


@pytest.fixture(params=["sqlite", "redis+postgresql"])
def backend(request: pytest.FixtureRequest) -> Iterator[tuple[str, dict[str, Any]]]:
    """(store, extra top-level config): SQLite (its own ledger), or Redis with the PostgreSQL ledger."""
    if request.param == "sqlite":
        yield "sqlite", {}
    else:
        yield request.getfixturevalue("clean_redis"), {"ledger": request.getfixturevalue("pg_url")}


class WallClock(Clock):
    """The wall clock: a ledger row's ``ts`` is the arrival's wall time (proxy/admit.py), so the counters'
    windows must follow the same clock for the two to be compared."""

    def __call__(self) -> float:
        return time.time()


@asynccontextmanager
async def gateway(tmp: Path, store: str, **top: Any) -> AsyncIterator[Harness]:
    top = {"lease_seconds": LEASE, "org": ORG, "teams": teams(), "counters": CHECKS, **top}
    async with running(tmp, store, clock=WallClock(), **top) as h:
        yield h


def answers(hang: asyncio.Event) -> Any:
    """by_marker, plus ``cut N`` (a stream broken off after its first chunk) and ``hang`` (until ``hang``)."""

    async def reply(request: web.Request, body: Any) -> web.StreamResponse:
        marker = body["messages"][-1]["content"] if body and "messages" in body else ""
        if marker == "hang":
            await hang.wait()
            return await json_reply({"error": {"message": "late", "type": "server_error"}}, 500)(request, body)
        if marker.startswith("cut"):
            resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(sse_frames([{"id": "c", "object": "chat.completion.chunk", "choices": []}], done=False))
            assert request.transport is not None
            request.transport.abort()
            return resp
        return await by_marker(request, body)

    return reply


async def mixed_load(gw: Harness) -> list[httpx.Response]:
    """Every outcome, on every level the ledger accounts for; then a lease left to the reaper."""
    hang = asyncio.Event()
    gw.provider.on("/v1/chat/completions", answers(hang))
    embedding = {"object": "list", "data": [], "model": "text-embedding-3-small", "usage": {"prompt_tokens": 6}}
    gw.provider.on("/v1/embeddings", json_reply(embedding))
    asks: list[tuple[str, dict[str, Any], str]] = (
        [("/v1/chat/completions", chat(f"ok {n}"), KEYS["search-app"]) for n in range(6)]
        + [("/v1/chat/completions", chat(f"ok {n}", model="gpt-4o"), KEYS["search-app"]) for n in range(2)]
        + [("/v1/chat/completions", chat(f"stream {n}", stream=True), KEYS["search-batch"]) for n in range(6, 9)]
        + [("/v1/embeddings", {"model": "text-embedding-3-small", "input": "x y"}, KEYS["search-app"])] * 2
        + [("/v1/chat/completions", chat("ok 0"), "sk-wrong-wrong-wrong")]
        + [("/v1/chat/completions", chat("fail"), KEYS["search-app"])] * 2
        + [("/v1/chat/completions", chat("cut 1", stream=True), KEYS["search-app"])]
        + [("/v1/chat/completions", chat("lorem ipsum dolor sit amet " * 800), KEYS["search-app"])]
        + [("/v1/chat/completions", chat("ok 3", max_tokens=6000), KEYS["research"])]  # over its day budget
        + [("/v1/chat/completions", chat("ok 4"), KEYS["research"])]
        + [("/v1/chat/completions", chat("ok 5", model="offline"), KEYS["search-app"])]
        + [("/v1/chat/completions", chat("ok 6", model="resilient"), KEYS["search-batch"])]
        + [("/v1/chat/completions", chat("ok 7"), KEYS["interns"])]
    )
    out: list[httpx.Response] = list(await asyncio.gather(*(gw.post(p, b, key=k) for p, b, k in asks)))
    await gw.settled()
    # a request whose process "dies": its lease expires and the reaper charges it in full
    sent = len(gw.provider.calls)
    hung = asyncio.create_task(gw.post("/v1/chat/completions", chat("hang", max_tokens=500), key=KEYS["search-batch"]))
    await arrived(gw.provider, sent + 1)
    await asyncio.sleep(LEASE + 0.1)
    assert await gw.gw.reaper.reap() == 1
    hang.set()
    out.append(await hung)  # its settle finds no lease; its row is the reaper's (the same request id)
    await gw.settled()
    return out


async def rows_of(gw: Harness) -> list[LedgerRecord]:
    await gw.settled()
    return await gw.gw.sink.ledger(0.0, limit=100_000)


def reconciler(gw: Harness) -> Reconciler:
    assert gw.gw.reconciler is not None
    return gw.gw.reconciler


async def at_rest(gw: Harness) -> list[Drift]:
    """Two passes: the second compares every counter the first saw at rest."""
    await reconciler(gw).check()
    return await reconciler(gw).check()


def by_target(drifts: list[Drift]) -> dict[tuple[str, str, str, str, str], Drift]:
    return {(d.target.scope, d.target.team, d.target.entity, d.target.window, d.target.unit): d for d in drifts}


async def test_drift_is_exactly_zero_after_a_mixed_load(tmp_path: Path, backend: tuple[str, dict[str, Any]]) -> None:
    store, extra = backend
    async with gateway(tmp_path, store, **extra) as gw:
        answers = await mixed_load(gw)
        statuses = sorted(a.status_code for a in answers)
        assert statuses.count(200) >= 14 and {400, 401, 429, 500, 502} <= set(statuses)
        rows = await rows_of(gw)
        assert len({r.request_id for r in rows}) == len(rows)
        outcomes = {r.outcome for r in rows}
        assert {"ok", "lease_expired", "budget_exceeded", "upstream_error", "context_rejected"} <= outcomes

        # what each row says it charged the token counters
        for r in rows:
            if r.outcome == "lease_expired":
                assert r.charged_tokens > 500  # the full reservation: the input count + max_tokens
            elif r.outcome == "ok":
                assert r.input_tokens is not None and r.output_tokens is not None
                assert r.charged_tokens == r.input_tokens + r.output_tokens > 0  # the provider's usage
            elif not r.charged:
                assert (r.charged_tokens, r.cost_micro_usd) == (0, 0)

        drifts = by_target(await at_rest(gw))
        expected_targets = targets(gw.gw.settings, gw.gw.budgets, gw.clock())
        assert len(drifts) == len(expected_targets) == 9  # org 2, search 2 + key 1 + model 1, research 2, interns 1
        assert {k[0] for k in drifts} == {"org", "team", "key", "model"}
        assert all(d.drift == 0 for d in drifts.values()), [d for d in drifts.values() if d.drift]
        # not vacuous: the counters hold what the rows add up to, and that is not nothing
        served = [r for r in rows if r.team == "search"]
        assert drifts[("team", "search", "", "day", "tokens")].used == sum(r.charged_tokens for r in served) > 0
        assert drifts[("team", "search", "", "month", "usd")].used == sum(r.cost_micro_usd for r in served) > 0
        batch = sum(r.charged_tokens for r in served if r.key_name == "search-batch")
        assert drifts[("key", "search", "search-batch", "day", "tokens")].used == batch > 500
        mini = sum(r.charged_tokens for r in served if r.model == "gpt-4o-mini")
        assert (
            0
            < drifts[("model", "search", "gpt-4o-mini", "day", "tokens")].used
            == mini
            < drifts[("team", "search", "", "day", "tokens")].used
        )  # gpt-4o's requests are the team's, not the model's
        assert drifts[("org", "", "", "day", "tokens")].used == sum(r.charged_tokens for r in rows)

        body, _ = gw.gw.metrics.render()
        text = body.decode()
        assert 'quotagate_budget_drift_tokens{scope="team",team="search",window="day"} 0.0' in text
        assert 'quotagate_budget_drift_usd{scope="org",team="",window="month"} 0.0' in text
        assert 'quotagate_drift_checks_total{result="ok"} 2.0' in text


async def test_a_counter_changed_behind_quotagates_back_shows_as_drift(
    tmp_path: Path, clean_redis: str, pg_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async with gateway(tmp_path, clean_redis, ledger=pg_url) as gw:
        await mixed_load(gw)
        before = by_target(await at_rest(gw))
        assert all(d.drift == 0 for d in before.values())
        team_day = before[("team", "search", "", "day", "tokens")].target
        org_month = before[("org", "", "", "month", "usd")].target
        r = aioredis.Redis.from_url(clean_redis)
        try:
            await r.hincrby(f"qg:c:{team_day.key}", "used", 123)
            await r.hincrby(f"qg:c:{org_month.key}", "used", -2_500_000)
        finally:
            await r.aclose()

        caplog.set_level(logging.WARNING, logger="quotagate.drift")
        first = by_target(await reconciler(gw).check())
        assert ("team", "search", "", "day", "tokens") not in first  # changed since the last pass: not at rest
        after = by_target(await reconciler(gw).check())

        assert after[("team", "search", "", "day", "tokens")].drift == 123
        assert after[("org", "", "", "month", "usd")].drift == -2_500_000
        assert [d for k, d in after.items() if d.drift and k[:2] not in (("team", "search"), ("org", ""))] == []
        text = gw.gw.metrics.render()[0].decode()
        assert 'quotagate_budget_drift_tokens{scope="team",team="search",window="day"} 123.0' in text
        assert 'quotagate_budget_drift_usd{scope="org",team="",window="month"} -2.5' in text
        assert 'quotagate_drift_checks_total{result="drift"} 1.0' in text
        warned = [m for m in caplog.messages if m.startswith("counter drift:")]
        assert any("team budget search (day, tokens)" in m and "(drift +123)" in m for m in warned), warned
        assert any("org budget org (month, usd)" in m and "(drift -2500000)" in m for m in warned), warned


async def test_a_counter_with_requests_in_flight_waits_until_it_is_at_rest(tmp_path: Path) -> None:
    async with gateway(tmp_path, "sqlite") as gw:
        gate = asyncio.Event()

        async def gated(request: web.Request, body: Any) -> web.StreamResponse:
            await gate.wait()
            return await by_marker(request, body)

        gw.provider.on("/v1/chat/completions", gated)
        first = asyncio.create_task(gw.post("/v1/chat/completions", chat("ok 1"), key=KEYS["research"]))
        await arrived(gw.provider, 1)
        key = ("team", "research", "", "day", "tokens")
        assert key not in by_target(await at_rest(gw))  # held: not compared
        assert key not in by_target(await reconciler(gw).check())  # however often it is checked
        gate.set()
        assert (await first).status_code == 200
        await gw.settled()
        assert key not in by_target(await reconciler(gw).check())  # just settled: not at rest yet
        drift = by_target(await reconciler(gw).check())[key]
        assert (drift.used, drift.expected, drift.drift) == (sum(usage_for(1)), sum(usage_for(1)), 0)


def test_the_counters_settings_are_validated_once() -> None:
    raw = config("http://x/v1", "memory://", "http://y/v1")
    assert parse(raw, env={}).counters == CounterCheckSettings(reconcile_seconds=60, seed_check_seconds=5)
    assert parse({**raw, "counters": {"reconcile_seconds": 0}}, env={}).counters.reconcile_seconds == 0  # off
    for bad in ({"reconcile_seconds": -1}, {"seed_check_seconds": "often"}, {"reconcile": 5}):
        with pytest.raises(ConfigError) as err:
            parse({**raw, "counters": bad}, env={})
        assert f"counters.{next(iter(bad))}" in str(err.value), str(err.value)

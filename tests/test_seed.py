"""Seeding after a store loss (issue 13): a Redis with usage is emptied (FLUSHALL); three replicas find the
seed markers gone and seed at once, from the PostgreSQL ledger: each counter equals the ledger's sum
exactly (not three times it), exactly one replica wrote each hash tag, a second round and a replay of the
script write nothing, and the budgets refuse at the right point afterwards. A counter already past the
ledger (charged since the loss) is kept: seeding never lowers or adds."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import redis.asyncio as aioredis

from proxy.budgets import BudgetsInForce
from proxy.drift_targets import targets
from proxy.seed import Seeder
from proxy.store.pg_ledger import PostgresLedger
from proxy.store.redis import RedisStore
from proxy.store.redis_seed import marker_key, seed
from tests.inprocess import KEYS, Harness
from tests.pg_server import pg_server, postgres_url
from tests.test_drift import at_rest, by_target, gateway, mixed_load, pg_url
from tests.test_inprocess_ledger import by_marker, chat, usage_for
from tests.test_inprocess_limits import quota_error

__all__ = ["pg_server", "pg_url", "postgres_url"]  # fixtures, imported for pytest


async def flushall(url: str) -> None:
    r = aioredis.Redis.from_url(url)
    try:
        await r.flushall()
    finally:
        await r.aclose()


def day_key(team: str) -> str:
    return f"{{{team}}}:t:b:day:tokens:{time.strftime('%Y-%m-%d', time.gmtime())}"


async def counters(gw: Harness) -> dict[str, int]:
    found = targets(gw.gw.settings, gw.gw.budgets, gw.clock())
    values = await gw.gw.store.counters([t.key for t in found])
    return {k: v.used for k, v in values.items()}


async def test_three_replicas_seed_once_from_the_ledger_after_flushall(
    tmp_path: Path, clean_redis: str, pg_url: str
) -> None:
    async with gateway(tmp_path, clean_redis, ledger=pg_url) as gw:
        await mixed_load(gw)
        for n in (1, 2):  # research's day budget (5000 tokens): 13 + 3n used each
            assert (await gw.post("/v1/chat/completions", chat(f"ok {n}"), key=KEYS["research"])).status_code == 200
        await gw.settled()
        assert all(d.drift == 0 for d in await at_rest(gw))
        before = await counters(gw)
        assert sum(before.values()) > 0 and all(v > 0 for k, v in before.items() if "research" in k)

        await flushall(clean_redis)
        assert set((await counters(gw)).values()) == {0}  # the loss: every counter reads zero

        replicas = [RedisStore(clean_redis, clock=gw.clock) for _ in range(3)]
        ledgers = [PostgresLedger(pg_url) for _ in range(3)]
        for s, led in zip(replicas, ledgers, strict=True):
            await s.open()
            await led.open()
        try:
            seeders = [
                Seeder(gw.gw.settings, s, led, BudgetsInForce(gw.gw.settings, s, clock=gw.clock), clock=gw.clock)
                for s, led in zip(replicas, ledgers, strict=True)
            ]
            results = await asyncio.gather(*(s.check() for s in seeders))

            tags = {"{qg-org}", "{search}", "{research}", "{interns}"}
            for tag in tags:  # exactly one replica wrote each hash tag; the others found its marker
                outcomes = [r[tag] for r in results]
                assert sum(o is not None for o in outcomes) == 1, (tag, outcomes)
            assert await counters(gw) == before  # the ledger's sums, exactly: not three times them

            assert [await s.check() for s in seeders] == [{}, {}, {}]  # seeded: nothing more to do
            # a replay of the script (a retry after a lost reply) never adds, even with other values
            doubled = {k: 2 * v for k, v in before.items() if k.startswith("{research}")}
            assert await seed(replicas[0], "{research}", doubled, {}, "replay") is None
            assert await counters(gw) == before
            r = aioredis.Redis.from_url(clean_redis)
            try:
                assert {await r.exists(marker_key(t)) for t in tags} == {1}
            finally:
                await r.aclose()
        finally:
            for s, led in zip(replicas, ledgers, strict=True):
                await led.close()
                await s.close()

        # the budgets hold what the ledger says: research has 5000 - used left, whatever the loss
        used = before[day_key("research")]
        assert (
            used
            == sum(r.charged_tokens for r in await gw.gw.sink.ledger(0.0, "research"))
            == 25 + sum(sum(usage_for(n)) for n in (1, 2))
        )
        too_big = await gw.post("/v1/chat/completions", chat("ok 3", max_tokens=5000 - used), key=KEYS["research"])
        assert f"used {used} tokens, held by requests in flight 0 tokens" in quota_error(too_big)["message"]
        fits = await gw.post("/v1/chat/completions", chat("ok 3", max_tokens=5000 - used - 20), key=KEYS["research"])
        assert fits.status_code == 200, fits.text
        await gw.settled()
        assert all(d.drift == 0 for d in await at_rest(gw))


async def test_a_counter_charged_since_the_loss_is_kept(tmp_path: Path, clean_redis: str, pg_url: str) -> None:
    async with gateway(tmp_path, clean_redis, ledger=pg_url) as gw:
        gw.provider.on("/v1/chat/completions", by_marker)
        assert (await gw.post("/v1/chat/completions", chat("ok 1"), key=KEYS["research"])).status_code == 200
        await gw.settled()
        key = day_key("research")
        assert (await counters(gw))[key] == sum(usage_for(1))
        await flushall(clean_redis)
        # admitted between the loss and the seed: on the emptied counter, and in the ledger (flushed)
        assert (await gw.post("/v1/chat/completions", chat("ok 2"), key=KEYS["research"])).status_code == 200
        await gw.settled()
        assert (await counters(gw))[key] == sum(usage_for(2))
        assert gw.gw.seeder is not None
        assert (await gw.gw.seeder.check())["{research}"] == 2  # its day tokens and month usd
        # max(counter, ledger): the ledger has both rows; the request since the loss is counted once
        assert (await counters(gw))[key] == sum(usage_for(1)) + sum(usage_for(2))
        assert by_target(await at_rest(gw))[("team", "research", "", "day", "tokens")].drift == 0


async def test_the_gateway_seeds_and_reconciles_in_the_background(
    tmp_path: Path, clean_redis: str, pg_url: str
) -> None:
    checks = {"reconcile_seconds": 0.2, "seed_check_seconds": 0.1}
    async with gateway(tmp_path, clean_redis, ledger=pg_url, counters=checks) as gw:
        gw.provider.on("/v1/chat/completions", by_marker)
        for n in (1, 2, 3):
            assert (await gw.post("/v1/chat/completions", chat(f"ok {n}"), key=KEYS["research"])).status_code == 200
        await gw.settled()
        before = await counters(gw)
        assert before[day_key("research")] == sum(sum(usage_for(n)) for n in (1, 2, 3))

        await flushall(clean_redis)
        for _ in range(100):  # the seed check finds the markers gone and sets the counters from the ledger
            if await counters(gw) == before:
                break
            await asyncio.sleep(0.05)
        assert await counters(gw) == before

        series = 'quotagate_budget_drift_tokens{scope="team",team="research",window="day"} 0.0'
        for _ in range(100):  # two reconcile passes at rest: the gauge reads 0
            if series in gw.gw.metrics.render()[0].decode():
                break
            await asyncio.sleep(0.05)
        text = gw.gw.metrics.render()[0].decode()
        assert series in text
        assert 'quotagate_store_seeds_total{result="seeded"}' in text
        assert 'quotagate_store_seeds_total{result="seeded"} 0.0' not in text

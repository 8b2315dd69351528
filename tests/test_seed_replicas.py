"""Seeding across real replicas (issue 13): three ``quotagate serve`` processes on one Redis with a PostgreSQL
ledger serve a load; the Redis database is emptied (FLUSHDB) under them; their background checks find the
seed markers gone, exactly one of them seeds each hash tag, and the team's budget counter equals the
ledger's sum (not three times it); the budget then admits exactly what is left, and every replica's drift
gauge reads 0 at rest."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
import redis

from tests.gateway import Proc, base_config, start_gateway, start_mock
from tests.pg_server import pg_server, postgres_url
from tests.test_drift import pg_url
from tests.test_governance import ADMIN, WORST, auth, chat, in_parallel, redis_db

__all__ = ["pg_server", "pg_url", "postgres_url"]  # fixtures, imported for pytest

pytestmark = pytest.mark.slow

FIRST = 12  # requests before the loss
LEFT = 5  # requests the budget admits after it
LIMIT = (FIRST + LEFT) * WORST + WORST - 1  # one token short of one more


@pytest.fixture
def mock(tmp_path: Path) -> Iterator[Proc]:
    proc = start_mock(tmp_path)
    yield proc
    proc.terminate()


def used(gw: Proc) -> int:
    r = httpx.get(f"{gw.url}/admin/teams/t1/budgets", headers=ADMIN, timeout=10)
    assert r.status_code == 200, r.text
    (day,) = [b for b in r.json()["status"] if b["window"] == "day"]
    return int(day["used"])


def metric(gw: Proc, name: str, labels: str) -> float | None:
    text = httpx.get(gw.url + "/metrics", timeout=10).text
    m = re.search(rf"^{re.escape(name)}{{{re.escape(labels)}}} (\S+)$", text, re.M)
    return float(m.group(1)) if m else None


def ledger_tokens(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as con:
        row = con.execute("SELECT COALESCE(SUM(charged_tokens), 0), COUNT(*) FROM ledger WHERE team = 't1'").fetchone()
    assert row is not None
    return int(row[0])


async def ask(client: httpx.AsyncClient, gw: Proc) -> httpx.Response:
    return await client.post(gw.url + "/v1/chat/completions", json=chat(), headers=auth("sk-t1"))


def wait_for(check: Any, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


async def test_three_replicas_seed_once_after_the_store_is_emptied(
    tmp_path: Path, mock: Proc, redis_url: str, pg_url: str
) -> None:
    store = redis_db(redis_url, 7)
    cfg = base_config(
        mock.url,
        store,
        ledger=pg_url,
        counters={"reconcile_seconds": 0.5, "seed_check_seconds": 0.3},
        teams={"t1": {"budgets": [{"window": "day", "tokens": LIMIT}]}},
        keys=[{"team": "t1", "name": "k1", "key": "sk-t1"}],
    )
    gws = await asyncio.to_thread(
        in_parallel, *(lambda i=i: start_gateway(tmp_path, cfg, name=f"seed{i}.yaml") for i in range(3))
    )
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            first = await asyncio.gather(
                *(
                    client.post(gws[i % 3].url + "/v1/chat/completions", json=chat(), headers=auth("sk-t1"))
                    for i in range(FIRST)
                )
            )
        assert [r.status_code for r in first] == [200] * FIRST
        await asyncio.to_thread(wait_for, lambda: ledger_tokens(pg_url) == FIRST * WORST)
        assert used(gws[0]) == FIRST * WORST

        r = redis.Redis.from_url(store)
        try:
            r.flushdb()  # the loss, under three running replicas
            await asyncio.to_thread(wait_for, lambda: used(gws[2]) == FIRST * WORST)
            assert r.exists("qg:{t1}:seeded") == 1
        finally:
            r.close()
        await asyncio.sleep(1.0)  # every replica has checked again since: nothing is added
        assert [used(g) for g in gws] == [FIRST * WORST] * 3

        seeded = [metric(g, "quotagate_store_seeds_total", 'result="seeded"') or 0.0 for g in gws]
        assert sum(seeded) == 2.0  # the first start's seed of an empty Redis, then the one after the loss

        async with httpx.AsyncClient(timeout=30) as client:
            after = await asyncio.gather(
                *(
                    client.post(gws[i % 3].url + "/v1/chat/completions", json=chat(), headers=auth("sk-t1"))
                    for i in range(LEFT + 3)
                )
            )
        codes = sorted(r.status_code for r in after)
        assert codes == [200] * LEFT + [429] * 3, codes  # exactly what the ledger says is left

        labels = 'scope="team",team="t1",window="day"'
        await asyncio.to_thread(
            wait_for, lambda: all(metric(g, "quotagate_budget_drift_tokens", labels) == 0.0 for g in gws)
        )
        assert used(gws[0]) == ledger_tokens(pg_url) == (FIRST + LEFT) * WORST
    finally:
        await asyncio.to_thread(in_parallel, *(g.terminate for g in gws))

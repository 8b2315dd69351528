"""Observed reservations across processes (issue 13): what one replica served teaches another. Two gateway
processes share one Redis; replica A serves a team in ``reserve: observed`` mode with short answers; once its
output histogram is flushed to the store (about every second) and replica B has re-read it (about every
10 s), B holds counted input + the observed quantile instead of counted input + the cap, as its
``x-quotagate-reserved-tokens`` says; settlement still charges what was used."""

from __future__ import annotations

import asyncio
import concurrent.futures
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.count import Counter
from proxy.observed import EDGES, bucket
from tests.gateway import Proc, base_config, start_gateway, start_mock
from tests.test_governance import redis_db

pytestmark = pytest.mark.slow

MODEL = "gpt-4o-mini"
MSGS = [{"role": "user", "content": "Answer briefly, please."}]
CAP = 2000
OUT = 12  # what the mock answers
N_IN = Counter().chat(MSGS, None, model=MODEL, encoding=None).tokens
MIN_SAMPLES = 20
TEAM = {
    "reserve": "observed",
    "observed_min_samples": MIN_SAMPLES,
    "budgets": [{"window": "day", "tokens": 10_000_000}],
    "rate_limits": {"tpm": 5_000_000},
}


def body() -> dict[str, Any]:
    return {"model": MODEL, "messages": MSGS, "max_tokens": CAP, "mock": {"output_tokens": OUT}}


async def test_one_replicas_answers_size_the_other_replicas_holds(tmp_path: Path, redis_url: str) -> None:
    mock = start_mock(tmp_path)
    store = redis_db(redis_url, 7)
    cfg = base_config(mock.url, store, teams={"obs": TEAM}, keys=[{"team": "obs", "name": "k", "key": "sk-obs"}])
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        gws: list[Proc] = list(pool.map(lambda i: start_gateway(tmp_path, cfg, name=f"obs{i}.yaml"), range(2)))
    a, b = gws
    headers = {"authorization": "Bearer sk-obs"}
    try:
        async with httpx.AsyncClient(timeout=30) as client:

            async def held(gw: Proc) -> int:
                r = await client.post(gw.url + "/v1/chat/completions", json=body(), headers=headers)
                assert r.status_code == 200, r.text
                assert r.json()["usage"]["completion_tokens"] == OUT
                return int(r.headers["x-quotagate-reserved-tokens"])

            assert await held(b) == N_IN + CAP  # cold: nothing observed yet, the worst case is held
            assert {await held(a) for _ in range(30)} == {N_IN + CAP}  # A learns while holding the worst case
            q = EDGES[bucket(OUT)]  # the upper edge of the bucket 12 falls in: never below what was seen
            deadline = time.monotonic() + 24  # A flushes within ~1 s, B re-reads within ~10 s
            seen = N_IN + CAP
            polls = 0
            while seen != N_IN + q and time.monotonic() < deadline:
                await asyncio.sleep(3)  # B serves at most 9 requests in all: below the 20 samples it needs,
                seen = await held(b)  # so what sizes its holds can only be what A served
                polls += 1
            assert 1 + polls < MIN_SAMPLES
            assert seen == N_IN + q, (seen, N_IN, q)
            assert OUT <= q < CAP
    finally:
        for g in gws:
            g.terminate()
        mock.terminate()

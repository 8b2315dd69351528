"""Acceptance (issue 13, notifications): three gateway replica processes on one Redis, a team budget with
``notify_at: [0.5, 0.8, 1.0]`` and two webhooks (JSON and Slack) on a real HTTP receiver in this test. Requests
through all three replicas at once pass every threshold; each threshold arrives exactly once per webhook, and
``quotagate_budget_threshold_crossed_total`` summed over the replicas is exactly 3.

The next window is tested with an injected clock in tests/test_notifications.py (the gateway processes run
on the real clock).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.count import Counter
from tests.gateway import Proc, base_config, start_gateway, start_mock
from tests.test_governance import redis_db
from tests.webhook_receiver import Receiver

pytestmark = pytest.mark.slow

MODEL = "gpt-4o-mini"
MSGS = [{"role": "user", "content": "Tell the budget owners, please."}]
CAP = 20
WORST = Counter().chat(MSGS, None, model=MODEL, encoding=None).tokens + CAP  # held and, here, used per request
LIMIT = 10 * WORST
CROSSED = re.compile(r"^quotagate_budget_threshold_crossed_total\{([^}]*)\} ([0-9.e+]+)$", re.M)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()


def start_all(tmp: Path, cfg: dict[str, Any], n: int) -> list[Proc]:
    with concurrent.futures.ThreadPoolExecutor(n) as pool:
        futures = [pool.submit(start_gateway, tmp, cfg, name=f"notify{i}.yaml") for i in range(n)]
        return [f.result() for f in futures]


def crossed(metrics_text: str) -> dict[str, float]:
    """threshold -> value of the team ``nt``'s series in one replica's /metrics."""
    out: dict[str, float] = {}
    for labels, v in CROSSED.findall(metrics_text):
        pairs = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        if pairs["team"] == "nt":
            assert (pairs["scope"], pairs["window"], pairs["unit"]) == ("team", "day", "tokens")
            out[pairs["threshold"]] = out.get(pairs["threshold"], 0.0) + float(v)
    return out


@pytest.mark.parametrize("sweep", [0, 1], ids=["answers-only", "answers-and-sweeps"])
async def test_each_threshold_fires_exactly_once_per_webhook_with_three_replicas(
    tmp_path: Path, redis_url: str, receiver: Receiver, sweep: int
) -> None:
    """Without the sweep, the reserve answers alone (admitted, then refused at 100%) show every crossing;
    with it, every replica's sweep races the answers for each claim too."""
    mock = await asyncio.to_thread(start_mock, tmp_path)
    cfg = base_config(
        mock.url,
        redis_db(redis_url, 3),
        teams={"nt": {"budgets": [{"window": "day", "tokens": LIMIT, "notify_at": [0.5, 0.8, 1.0]}]}},
        keys=[{"team": "nt", "name": "k-nt", "key": "sk-nt"}],
        notifications={
            "webhooks": [
                {"url": receiver.url("json"), "name": "owners", "headers": {"authorization": "Bearer hook-token"}},
                {"url": receiver.url("slack"), "format": "slack", "name": "slack"},
            ],
            "sweep_seconds": sweep,
            "backoff_s": 0.1,
        },
    )
    gws = await asyncio.to_thread(start_all, tmp_path, cfg, 3)
    try:
        body = {"model": MODEL, "messages": MSGS, "max_tokens": CAP, "mock": {"output_tokens": CAP}}
        headers = {"authorization": "Bearer sk-nt"}
        statuses: list[int] = []
        async with httpx.AsyncClient(timeout=30) as client:
            for _ in range(12):  # rounds of 3 at once (one per replica): past 50%, 80%, then refused at 100%
                answers = await asyncio.gather(
                    *(client.post(g.url + "/v1/chat/completions", json=body, headers=headers) for g in gws)
                )
                statuses += [r.status_code for r in answers]
                if len(receiver.bodies("json")) == 3 and len(receiver.bodies("slack")) == 3:
                    break
                await asyncio.sleep(0.1)
            assert statuses.count(200) == 10, statuses  # the budget admitted exactly what it holds
            assert set(statuses) == {200, 429}
            events = await receiver.wait_for(3, "json")
            slack = await receiver.wait_for(3, "slack")
            await asyncio.sleep(2.5)  # two more sweeps of every replica, and any late duplicate
            texts = [(await client.get(g.url + "/metrics")).text for g in gws]
    finally:
        await asyncio.to_thread(lambda: [g.terminate() for g in gws] and None)
        await asyncio.to_thread(mock.terminate)

    assert sorted(e["threshold"] for e in receiver.bodies("json")) == [0.5, 0.8, 1.0]
    assert len(receiver.bodies("slack")) == 3 and len(receiver.posts) == 6  # none retried, none twice
    for e in events:
        assert (e["event"], e["team"], e["scope"], e["window"], e["unit"], e["limit"]) == (
            "budget.threshold_crossed",
            "nt",
            "team",
            "day",
            "tokens",
            LIMIT,
        )
        assert e["used"] >= e["threshold"] * LIMIT
        assert "sk-nt" not in str(e) and "sk-upstream-secret" not in str(e)
    assert {p.headers["authorization"] for p in receiver.posts if p.path == "json"} == {"Bearer hook-token"}
    assert sorted(int(m) for s in slack for m in re.findall(r"reached (\d+)%", s["text"])) == [50, 80, 100]
    assert all("The team budget of team 'nt'" in s["text"] for s in slack)
    per_replica = [crossed(t) for t in texts]
    summed = {th: sum(r.get(th, 0.0) for r in per_replica) for th in ("0.5", "0.8", "1")}
    assert summed == {"0.5": 1.0, "0.8": 1.0, "1": 1.0}, per_replica

"""What every process of a fleet must agree on (issue 8, points 3-5), over real gateway processes: two uvicorn
workers on one SQLite file, and three replicas sharing one real redis-server.

* A runtime budget override (``PUT /admin/teams/{team}/budgets``) made on one process is enforced by every
  process within 2 s.
* A burst against a budget with ``warn_at``/``downgrade_to`` is served on the cheaper model from the first
  request past the threshold, and nothing is refused while the cheaper model fits: back to back (each
  request after the previous one answered) and all at once.
* ``quotagate_budget_used`` on a real scrape equals what ``/v1/usage`` reports right after a request.

The team config is a real team's: a day token budget, a month dollar budget (the one with the downgrade),
TPM, RPM and concurrency limits, and a key with its own budget.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from proxy.pricing import price_of
from proxy.settings import parse
from proxy.usage import Usage
from tests.gateway import Proc, base_config, start_gateway, start_mock
from tests.test_governance import (
    ADMIN,
    CAP,
    MODEL,
    auth,
    chat,
    in_parallel,
    ledger_rows,
    n_input,
    redis_db,
    sqlite_url,
    wait_until,
)

pytestmark = pytest.mark.slow

BIG = "gpt-4o"
PRICE = {  # the builtin price table's rates, as the gateways here use them
    name: price_of(m)
    for name, m in parse(
        {
            "providers": {"p": {"base_url": "http://127.0.0.1:9/v1"}},
            "models": {MODEL: {"provider": "p"}, BIG: {"provider": "p"}},
        },
        env={},
    ).models.items()
}


def cost(tokens_in: int, tokens_out: int, model: str = MODEL) -> int:
    return PRICE[model].cost(Usage(tokens_in, 0, tokens_out, 0))


C_BIG = cost(n_input(model=BIG), CAP, model=BIG)  # micro-USD of one request on gpt-4o (worst case == actual)
C_SMALL = cost(n_input(), CAP)  # the same request on gpt-4o-mini
# Three gpt-4o requests and eight gpt-4o-mini ones fit, four gpt-4o do not; past warn_at 0.5 after two gpt-4o
DG_LIMIT = 3 * C_BIG + 8 * C_SMALL + C_SMALL // 2
assert C_BIG < DG_LIMIT / 2 <= 2 * C_BIG < 4 * C_BIG > DG_LIMIT
assert 8 * C_SMALL < DG_LIMIT - 3 * C_BIG  # every downgraded request of the bursts below fits


def real_team(**over: Any) -> dict[str, Any]:
    team: dict[str, Any] = {
        "budgets": [
            {"window": "day", "tokens": 10_000_000},
            {"window": "month", "usd": str(Decimal(DG_LIMIT) / 10**6), "warn_at": 0.5, "downgrade_to": MODEL},
        ],
        "rate_limits": {"tpm": 1_000_000, "rpm": 10_000, "concurrent": 64},
        "max_output_tokens": 4096,
    }
    team.update(over)
    return team


def fleet_config(mock: Proc, store: str) -> dict[str, Any]:
    teams = {name: real_team() for name in ("ovr", "dgseq", "dgburst", "gauge")}
    keys = [{"team": t, "name": f"k-{t}", "key": f"sk-{t}", "budgets": [{"window": "day", "usd": 50}]} for t in teams]
    return base_config(mock.url, store, teams=teams, keys=keys)  # overrides_refresh_seconds: the default (0.5 s)


@dataclass
class Fleet:
    name: str
    gws: list[Proc]
    store: str

    @property
    def urls(self) -> list[str]:
        return [g.url for g in self.gws]


@pytest.fixture(scope="module")
def tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fleet")


@pytest.fixture(scope="module")
def mock(tmp: Path) -> Iterator[Proc]:
    proc = start_mock(tmp)
    yield proc
    proc.terminate()


@pytest.fixture(scope="module", params=["workers2-sqlite", "replicas3-redis"])
def fleet(request: pytest.FixtureRequest, tmp: Path, mock: Proc, redis_url: str) -> Iterator[Fleet]:
    if request.param == "workers2-sqlite":
        store = sqlite_url(tmp / "fleet.db")
        gws = [start_gateway(tmp, fleet_config(mock, store), workers=2, name="workers2.yaml")]
    else:
        store = redis_db(redis_url, 3)
        cfg = fleet_config(mock, store)
        gws = in_parallel(*(lambda i=i: start_gateway(tmp, cfg, name=f"fleet{i}.yaml") for i in range(3)))
    yield Fleet(request.param, gws, store)
    in_parallel(*(g.terminate for g in gws))


async def _post_all(urls: list[str], key: str, body: dict[str, Any], n: int) -> list[httpx.Response]:
    """``n`` requests at once, round-robin over ``urls``, each on its own connection (so on any worker)."""

    async def one(url: str) -> httpx.Response:
        async with httpx.AsyncClient(timeout=30) as client:
            return await client.post(url + "/v1/chat/completions", json=body, headers=auth(key))

    return list(await asyncio.gather(*(one(urls[i % len(urls)]) for i in range(n))))


def post_all(urls: list[str], key: str, body: dict[str, Any], n: int) -> list[httpx.Response]:
    return asyncio.run(_post_all(urls, key, body, n))


# ---- 3. runtime overrides reach every worker and replica -------------------------------------------------


def test_budget_override_reaches_every_process_within_2s(fleet: Fleet) -> None:
    # every process has built its limits (and would have cached the old budgets)
    warm = post_all(fleet.urls, "sk-ovr", chat(), 24)
    assert [r.status_code for r in warm] == [200] * 24, [r.text for r in warm if r.status_code != 200]

    put = httpx.put(
        fleet.urls[-1] + "/admin/teams/ovr/budgets",
        headers=ADMIN,
        json=[{"window": "day", "tokens": 1}],
        timeout=10,
    )
    assert put.status_code == 200, put.text
    t0 = time.monotonic()
    while True:  # bursts of 24 on fresh connections until every process refuses
        got = post_all(fleet.urls, "sk-ovr", chat(), 24)
        elapsed = time.monotonic() - t0
        if all(r.status_code == 429 for r in got):
            break
        assert {r.status_code for r in got} <= {200, 429}
        assert elapsed < 2.0, f"{sum(r.status_code == 200 for r in got)} of 24 still served {elapsed:.2f}s after"
        time.sleep(0.05)
    assert elapsed < 2.0
    for r in got:
        err = r.json()["error"]
        assert err["code"] == "insufficient_quota"
        assert "day" in err["message"] and "1 tokens" in err["message"], err["message"]
    # and every process keeps refusing (no process flips back to the config's budgets)
    again = post_all(fleet.urls, "sk-ovr", chat(), 24)
    assert {r.status_code for r in again} == {429}
    status = httpx.get(fleet.urls[0] + "/admin/teams/ovr/budgets", headers=ADMIN, timeout=10).json()
    assert status["budgets"] == [{"window": "day", "tokens": 1}]


# ---- 4. downgrade under bursts -------------------------------------------------------------------------


def _served(r: httpx.Response) -> str:
    assert r.status_code == 200, r.text
    model = str(r.json()["model"])
    assert (r.headers.get("x-quotagate-downgraded-from") == BIG) == (model == MODEL)
    return model


def test_back_to_back_requests_downgrade_from_the_first_past_warn_at(fleet: Fleet) -> None:
    served = []
    for i in range(8):  # each one after the previous answered, round-robin over the fleet's processes
        r = httpx.post(
            fleet.urls[i % len(fleet.urls)] + "/v1/chat/completions",
            json=chat(model=BIG),
            headers=auth("sk-dgseq"),
            timeout=30,
        )
        served.append(_served(r))
    # gpt-4o while the month budget's used share is below 0.5 (0, then C_BIG), gpt-4o-mini from 2 * C_BIG on
    assert served == [BIG, BIG] + [MODEL] * 6
    rows = ledger_rows(fleet.store, "dgseq", 8)
    assert sorted(r.model for r in rows) == sorted(served)
    assert sum(r.cost_micro_usd for r in rows) == 2 * C_BIG + 6 * C_SMALL


def test_concurrent_burst_is_downgraded_not_refused_while_the_cheaper_model_fits(fleet: Fleet) -> None:
    got = post_all(fleet.urls, "sk-dgburst", chat(model=BIG, delay_s=0.5), 8)
    served = [_served(r) for r in got]  # asserts every one is a 200
    # at most three gpt-4o worst cases fit the budget at once; the others ran on gpt-4o-mini
    assert served.count(BIG) <= 3
    assert served.count(MODEL) >= 5
    rows = ledger_rows(fleet.store, "dgburst", 8)
    assert sum(r.cost_micro_usd for r in rows) <= DG_LIMIT
    assert all(r.outcome == "ok" for r in rows)


# ---- 5. budget gauges true at scrape time ------------------------------------------------------------------


def _scrape(url: str) -> dict[tuple[str, str, str], float]:
    body = httpx.get(url + "/metrics", timeout=10).text
    return {
        (s.labels["team"], s.labels["window"], s.labels["unit"]): s.value
        for family in text_string_to_metric_families(body)
        for s in family.samples
        if s.name == "quotagate_budget_used"
    }


def test_budget_gauges_equal_v1_usage_right_after_each_request(fleet: Fleet) -> None:
    for i in range(4):
        url = fleet.urls[i % len(fleet.urls)]
        r = httpx.post(url + "/v1/chat/completions", json=chat(), headers=auth("sk-gauge"), timeout=30)
        assert r.status_code == 200, r.text

        def settled(url: str = url) -> list[dict[str, Any]]:
            rows = httpx.get(url + "/v1/usage", headers=auth("sk-gauge"), timeout=10).json()["budgets"]
            return list(rows) if all(b["reserved"] == 0 for b in rows) else []

        budgets = wait_until(settled, 5, 0.01)
        for scrape_url in fleet.urls:  # whichever process (and worker) answers the scrape
            for _ in range(3):
                gauges = _scrape(scrape_url)
                for b in budgets:
                    expect = b["used"] / 10**6 if b["unit"] == "usd" else b["used"]
                    got = gauges[("gauge", b["window"], b["unit"])]
                    assert got == pytest.approx(expect, abs=1e-9), (b, got)
        tokens = next(b for b in budgets if b["unit"] == "tokens")
        assert tokens["used"] == (i + 1) * (n_input() + CAP)

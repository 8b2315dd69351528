"""The admin API refuses a budget override with two budgets on one window and unit, as the config does."""

from __future__ import annotations

import httpx

from proxy.app import create_app
from proxy.settings import parse

ADMIN = {"authorization": "Bearer admin-secret"}


async def test_put_budgets_refuses_a_duplicate_window_and_unit() -> None:
    settings = parse(
        {
            "store": "memory://",
            "admin_key": "admin-secret",
            "providers": {"mock": {"base_url": "http://127.0.0.1:9/v1", "api_key": "sk-up"}},
            "models": {"gpt-4o-mini": {"provider": "mock"}},
            "teams": {"search": {}},
        },
        env={},
    )
    transport = httpx.ASGITransport(app=create_app(settings))
    async with httpx.AsyncClient(transport=transport, base_url="http://quotagate") as client:
        url = "/admin/teams/search/budgets"
        twice = [{"window": "day", "tokens": 100}, {"window": "hour", "tokens": 10}, {"window": "day", "tokens": 5}]
        r = await client.put(url, json=twice, headers=ADMIN)
        assert r.status_code == 400, r.text
        error = r.json()["error"]
        assert error["param"] == "budgets"
        assert error["message"] == (
            "budgets.2: duplicate budget (window day, unit tokens) — budgets.0 already sets it; "
            "give one budget per window and unit"
        )
        assert (await client.get(url, headers=ADMIN)).json()["budgets"] == []  # nothing was stored

        r = await client.put(url, json=[{"window": "day", "tokens": 100}, {"window": "day", "usd": 1}], headers=ADMIN)
        assert r.status_code == 200, r.text
        assert [b["window"] for b in r.json()["budgets"]] == ["day", "day"]

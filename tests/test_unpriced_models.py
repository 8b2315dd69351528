"""A model with no price (issue 13, part 4): a config error by default (every request priced), or, with
``unpriced_models: refuse``, served at a cost of 0 to requests no budget governs and refused (400
``model_not_priced``, never forwarded) to those a budget governs: a team's, a key's, the org's, or a level
of the team's (its end users, tags, models, sessions)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from proxy.settings import ConfigError, parse
from tests.inprocess import KEYS, chat_answer, config, json_reply, running

LOCAL = {"provider": "openai", "upstream_model": "llama-3.1-8b"}  # self-hosted, and nobody priced it
FREE_KEY = "sk-free-team-0005"


def models() -> dict[str, Any]:
    return {**config("", "", "")["models"], "local": LOCAL}


def teams() -> dict[str, Any]:
    return {
        **config("", "", "")["teams"],
        "free": {},  # no budget anywhere
        "per-user": {"end_user_budgets": [{"window": "day", "tokens": 100_000}]},  # budgets only its end users
    }


def keys() -> list[dict[str, Any]]:
    return [
        *config("", "", "")["keys"],
        {"team": "free", "name": "free", "key": FREE_KEY},
        {"team": "per-user", "name": "per-user", "key": "sk-per-user-0006"},
    ]


def test_an_unpriced_model_is_a_config_error_by_default() -> None:
    raw = {**config("http://127.0.0.1:9/v1", "memory://", "http://127.0.0.1:9/v1"), "models": models()}
    with pytest.raises(ConfigError) as e:
        parse(raw, env={})
    assert "models.local.price" in str(e.value) and "unpriced_models: refuse" in str(e.value)


async def test_refuse_serves_unbudgeted_requests_and_refuses_budgeted_ones(tmp_path: Path) -> None:
    async with running(tmp_path, "sqlite", models=models(), teams=teams(), keys=keys(), unpriced_models="refuse") as gw:
        gw.provider.on("/v1/chat/completions", json_reply(chat_answer("ok", 9, 2, model="llama-3.1-8b")))
        body = {"model": "local", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}
        refused = []
        for key in (KEYS["search-app"], KEYS["search-batch"], "sk-per-user-0006"):  # team, key, end-user budgets
            r = await gw.post("/v1/chat/completions", body, key=key)
            refused.append(r.status_code)
            err = r.json()["error"]
            assert err["code"] == "model_not_priced" and err["param"] == "model"
            assert err["type"] == "invalid_request_error" and "models.local.price" in err["message"]
        assert refused == [400, 400, 400]
        assert gw.provider.bodies("/v1/chat/completions") == []  # never forwarded
        r = await gw.post("/v1/chat/completions", body, key=FREE_KEY)
        assert r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == "ok"
        # a priced model is unaffected on a budgeted team
        priced = await gw.post("/v1/chat/completions", {**body, "model": "gpt-4o-mini"}, key=KEYS["search-app"])
        assert priced.status_code == 200
        rows = await gw.new_rows()
    by_outcome = [(row.team, row.outcome, row.cost_micro_usd, row.price_version) for row in rows]
    assert by_outcome[:3] == [
        ("search", "invalid_request", 0, None),
        ("search", "invalid_request", 0, None),
        ("per-user", "invalid_request", 0, None),
    ]
    assert by_outcome[3] == ("free", "ok", 0, "unpriced")  # served, and the ledger says it had no price
    assert by_outcome[4][:2] == ("search", "ok") and by_outcome[4][2] > 0

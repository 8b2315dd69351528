"""Authentication in process (tests/inprocess.py): a missing, wrong or revoked key gets OpenAI's 401 on every
governed route and on the self-service reads, nothing reaches the provider, and each refused governed
request still has its one ledger row; ``api-key`` (Azure style) is accepted as ``Authorization`` is."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest

from tests.inprocess import KEYS, Harness, chat_answer, json_reply, running

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
ROUTES = {
    "/v1/chat/completions": CHAT,
    "/v1/responses": {"model": "gpt-4o-mini", "input": "hi"},
    "/v1/embeddings": {"model": "text-embedding-3-small", "input": "hi"},
    "/v1/completions": {"model": "instruct", "prompt": "hi"},
}
# OpenAI's wording, which clients match on (the rest names the headers quotagate reads and who issues keys)
MISSING = (
    "You didn't provide an API key. You need to provide your API key in an Authorization header using "
    "Bearer auth (i.e. Authorization: Bearer YOUR_KEY)"
)


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running(tmp_path) as h:
        h.provider.on("/v1/chat/completions", json_reply(chat_answer("hello", 8, 1)))
        yield h


def assert_401(r: httpx.Response, message: str, code: str | None) -> None:
    """OpenAI's 401: its envelope, ``message`` (or, for a missing key, the message it starts with)."""
    assert r.status_code == 401, r.text
    assert r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    if message == MISSING:
        assert error["message"].startswith(MISSING) and "quotagate keys create" in error["message"]
        message = error["message"]
    assert r.json() == {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}


def wrong_key_message(masked: str) -> str:
    return (
        f"Incorrect API key provided: {masked}. This is a quotagate gateway: use a key issued by your quotagate "
        "admin (quotagate keys create), not a provider's key."
    )


async def test_missing_key_on_every_governed_route(gw: Harness) -> None:
    for path, body in ROUTES.items():
        assert_401(await gw.post(path, body, key=None), MISSING, None)
    # a scheme other than Bearer, or an empty token, is no key at all
    for value in ("Basic dXNlcjpwdw==", "Bearer ", "Bearer"):
        assert_401(
            await gw.post("/v1/chat/completions", CHAT, key=None, headers={"authorization": value}), MISSING, None
        )
    assert gw.provider.calls == []
    rows = await gw.ledger()
    assert len(rows) == len(ROUTES) + 3
    assert {(r.team, r.key_name, r.status, r.outcome, r.charged, r.cost_micro_usd) for r in rows} == {
        ("", "", 401, "unauthorized", False, 0)
    }
    assert [r.endpoint for r in rows[: len(ROUTES)]] == ["chat", "responses", "embeddings", "completions"]


async def test_wrong_key_is_masked_in_the_answer(gw: Harness) -> None:
    r = await gw.post("/v1/chat/completions", CHAT, key="sk-proj-1234567890abcdef")
    assert_401(r, wrong_key_message("sk-***def"), "invalid_api_key")
    assert "1234567890" not in r.text
    assert_401(await gw.post("/v1/chat/completions", CHAT, key="short"), wrong_key_message("***"), "invalid_api_key")
    # a provider's own key is not a quotagate key either
    upstream = await gw.post("/v1/embeddings", ROUTES["/v1/embeddings"], key="sk-upstream-secret")
    assert upstream.status_code == 401 and upstream.json()["error"]["code"] == "invalid_api_key"
    assert gw.provider.calls == []
    assert [(r.outcome, r.status) for r in await gw.ledger()] == [("unauthorized", 401)] * 3


async def test_self_service_reads_need_a_key(gw: Harness) -> None:
    for path in ("/v1/models", "/v1/usage"):
        assert_401(await gw.client.get(path), MISSING, None)
        bad = await gw.client.get(path, headers={"authorization": "Bearer sk-nope-nope-nope"})
        assert_401(bad, wrong_key_message("sk-***ope"), "invalid_api_key")
        ok = await gw.client.get(path, headers={"authorization": f"Bearer {KEYS['research']}"})
        assert ok.status_code == 200, ok.text
    usage = (await gw.client.get("/v1/usage", headers={"authorization": f"Bearer {KEYS['research']}"})).json()
    assert usage["team"] == "research"


async def test_azure_style_api_key_header(gw: Harness) -> None:
    r = await gw.post("/v1/chat/completions", CHAT, key=None, headers={"api-key": KEYS["interns"]})
    assert r.status_code == 200, r.text
    (call,) = gw.provider.calls
    assert "api-key" not in call.headers  # the client's credentials never go upstream
    assert call.headers["authorization"] == "Bearer sk-upstream-secret"
    (row,) = await gw.ledger()
    assert (row.team, row.key_name, row.outcome) == ("interns", "interns", "ok")


async def test_runtime_key_works_until_revoked(gw: Harness) -> None:
    created = await gw.admin("POST", "/admin/keys", {"team": "research", "name": "notebook"})
    assert created.status_code == 201, created.text
    key, digest = created.json()["key"], created.json()["sha256"]
    assert key.startswith("qg-")

    before = await gw.post("/v1/chat/completions", CHAT, key=key)
    assert before.status_code == 200, before.text
    revoked = await gw.admin("DELETE", f"/admin/keys/{digest}")
    assert revoked.status_code == 200 and revoked.json() == {"sha256": digest, "revoked": True}

    after = await gw.post("/v1/chat/completions", CHAT, key=key)  # at once: the key ring's cache is dropped
    assert_401(after, wrong_key_message(f"{key[:3]}***{key[-3:]}"), "invalid_api_key")
    assert len(gw.provider.calls) == 1
    rows = await gw.ledger()
    assert [(r.team, r.key_name, r.status, r.outcome) for r in rows] == [
        ("research", "notebook", 200, "ok"),
        ("", "", 401, "unauthorized"),
    ]

"""What the provider gets wrong, in process (tests/inprocess.py): its 4xx and 5xx answered with their status
and its error in OpenAI's envelope (an OpenAI error unchanged, other servers' shapes normalised), its headers
relayed; a provider nobody answers at is a 502, one that does not answer in time a 504; a stream that breaks
or stalls ends with an error event. Nothing is charged for what the provider refused, the reservation is
released, and each request has its one ledger row."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.inprocess import (
    KEYS,
    Harness,
    chat_chunk,
    hang,
    json_reply,
    raw_reply,
    running,
    sse_reply,
)

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 50}
STREAM = {**CHAT, "stream": True}


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running(tmp_path) as h:
        yield h


async def nothing_held(gw: Harness, team: str = "search") -> None:
    """The team's budgets hold nothing and were charged nothing: the reservation was released."""
    status = (await gw.admin("GET", f"/admin/teams/{team}/budgets")).json()["status"]
    assert status and all((b["used"], b["reserved"]) == (0, 0) for b in status), status


def error_event(text: str) -> dict[str, Any]:
    """The last ``data:`` payload of a stream: quotagate's error inside the started stream."""
    last = [line for line in text.splitlines() if line.startswith("data: ")][-1]
    event: dict[str, Any] = orjson.loads(last[len("data: ") :])
    return event


async def test_provider_4xx_is_answered_unchanged_and_not_charged(gw: Harness) -> None:
    error = {
        "error": {
            "message": "Invalid value for 'messages[0].role': 'robot' is not one of ['system', 'user', 'assistant'].",
            "type": "invalid_request_error",
            "param": "messages[0].role",
            "code": "invalid_value",
        }
    }
    gw.provider.on("/v1/chat/completions", json_reply(error, 400, headers={"x-request-id": "req_provider_1"}))

    r = await gw.post("/v1/chat/completions", CHAT)

    assert r.status_code == 400 and r.json() == error
    assert r.headers["x-request-id"] == "req_provider_1"  # the provider's own id, relayed
    assert r.headers["x-quotagate-provider"] == "openai" and r.headers["x-quotagate-request-id"].startswith("qg-")
    (row,) = await gw.ledger()
    assert (row.status, row.outcome, row.charged, row.cost_micro_usd) == (400, "upstream_error", False, 0)
    assert row.error == error["error"]["message"]
    await nothing_held(gw)


async def test_provider_429_keeps_its_retry_headers(gw: Harness) -> None:
    error = {
        "error": {
            "message": "Rate limit reached for gpt-4o-mini in organization org-x on tokens per min (TPM).",
            "type": "tokens",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    headers = {"retry-after": "7", "x-ratelimit-remaining-tokens": "0", "x-ratelimit-limit-tokens": "200000"}
    gw.provider.on("/v1/chat/completions", json_reply(error, 429, headers=headers))
    r = await gw.post("/v1/chat/completions", CHAT, key=KEYS["interns"])  # a team without rate limits of its own
    assert r.status_code == 429 and r.json() == error
    assert (r.headers["retry-after"], r.headers["x-ratelimit-remaining-tokens"]) == ("7", "0")
    assert r.headers["x-ratelimit-limit-tokens"] == "200000"
    (row,) = await gw.ledger()
    assert (row.status, row.outcome, row.charged) == (429, "upstream_error", False)
    await nothing_held(gw, "interns")


@pytest.mark.parametrize(
    ("status", "reply", "expected"),
    [
        pytest.param(  # vLLM: the HTTP status in `code`, which OpenAI keeps for a string
            400,
            json_reply({"error": {"message": "max_tokens too large", "type": "BadRequestError", "code": 400}}, 400),
            {"message": "max_tokens too large", "type": "BadRequestError", "param": None, "code": None},
            id="vllm-int-code",
        ),
        pytest.param(  # SGLang: a flat object
            400,
            json_reply({"object": "error", "message": "bad input", "type": "BadRequestError", "code": 400}, 400),
            {"message": "bad input", "type": "BadRequestError", "param": None, "code": None},
            id="sglang-flat",
        ),
        pytest.param(
            500,
            json_reply({"error": {"message": "The server had an error", "type": "server_error"}}, 500),
            {"message": "The server had an error", "type": "server_error", "param": None, "code": None},
            id="openai-500",
        ),
        pytest.param(  # a load balancer's page
            503,
            raw_reply("<html><body>503 Service Temporarily Unavailable</body></html>", 503, "text/html"),
            {
                "message": "<html><body>503 Service Temporarily Unavailable</body></html>",
                "type": "server_error",
                "param": None,
                "code": None,
            },
            id="html-503",
        ),
    ],
)
async def test_other_error_shapes_are_normalised_to_openais(
    gw: Harness, status: int, reply: Any, expected: dict[str, Any]
) -> None:
    gw.provider.on("/v1/chat/completions", reply)
    r = await gw.post("/v1/chat/completions", CHAT)
    assert r.status_code == status
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {"error": expected}
    (row,) = await gw.ledger()
    assert (row.status, row.outcome, row.charged) == (status, "upstream_error", False)
    await nothing_held(gw)


async def test_connect_error_is_a_502(gw: Harness) -> None:
    r = await gw.post("/v1/chat/completions", {**CHAT, "model": "offline"})  # its provider's port is closed
    assert r.status_code == 502, r.text
    error = r.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("server_error", "upstream_unreachable", None)
    assert error["message"].startswith("Could not reach the upstream provider: ")
    assert r.headers["x-quotagate-provider"] == "down"
    (row,) = await gw.ledger()
    assert (row.model, row.provider, row.status, row.outcome, row.charged) == (
        "offline",
        "down",
        502,
        "upstream_error",
        False,
    )
    await nothing_held(gw)


async def test_no_answer_in_time_is_a_504(tmp_path: Path) -> None:
    async with running(tmp_path, upstream_timeout_s=0.3) as gw:
        gw.provider.on("/v1/chat/completions", hang(gw.provider))
        r = await gw.post("/v1/chat/completions", CHAT)
        assert r.status_code == 504, r.text
        assert r.json() == {
            "error": {
                "message": "The upstream provider did not answer in time.",
                "type": "server_error",
                "param": None,
                "code": "upstream_timeout",
            }
        }
        (row,) = await gw.ledger()
        assert (row.status, row.outcome, row.charged, row.cost_micro_usd) == (504, "upstream_error", False, 0)
        assert row.latency_ms is not None and row.latency_ms >= 300
        await nothing_held(gw)


async def test_a_broken_stream_ends_with_an_error_event_and_is_charged_what_was_relayed(gw: Harness) -> None:
    gw.provider.on("/v1/chat/completions", sse_reply(lambda _: [chat_chunk("Once "), chat_chunk("upon")], cut=True))
    r = await gw.post("/v1/chat/completions", STREAM)
    assert r.status_code == 200  # the stream had started
    assert "Once " in r.text and "[DONE]" not in r.text
    error = error_event(r.text)["error"]
    assert (error["type"], error["code"]) == ("server_error", "upstream_unreachable")
    assert error["message"].startswith("The upstream stream broke: ")
    (row,) = await gw.ledger()
    assert (row.status, row.outcome, row.stream) == (200, "upstream_error", True)
    assert row.charged and row.counted_output == 2  # "Once upon", counted: the provider bills what it sent
    assert row.cost_micro_usd > 0


async def test_a_stalled_stream_times_out_inside_the_stream(tmp_path: Path) -> None:
    async with running(tmp_path, upstream_timeout_s=0.3) as gw:
        gw.provider.on("/v1/chat/completions", hang(gw.provider, after_headers=True))
        r = await gw.post("/v1/chat/completions", STREAM)
        assert r.status_code == 200 and "Hel" in r.text
        error = error_event(r.text)["error"]
        assert (error["code"], error["message"]) == (
            "upstream_timeout",
            "The upstream provider stopped sending in time.",
        )
        (row,) = await gw.ledger()
        assert (row.outcome, row.charged, row.counted_output) == ("upstream_error", True, 1)


async def test_a_responses_stream_names_its_error_event(gw: Harness) -> None:
    started = [
        {"type": "response.created", "response": {"id": "resp_1", "object": "response", "status": "in_progress"}}
    ]
    gw.provider.on("/v1/responses", sse_reply(lambda _: started, cut=True))
    r = await gw.post("/v1/responses", {"model": "gpt-4o-mini", "input": "hi", "stream": True, "store": False})
    assert r.status_code == 200
    assert "event: error\ndata: " in r.text
    assert error_event(r.text)["error"]["code"] == "upstream_unreachable"
    (row,) = await gw.ledger()
    assert (row.endpoint, row.outcome) == ("responses", "upstream_error")

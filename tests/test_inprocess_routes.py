"""The governed routes in process (tests/inprocess.py): chat (whole and streamed), responses, embeddings and
completions relayed as the provider answered, with quotagate's headers, the provider's usage metered into
exactly one ledger row each, on the SQLite store and the memory store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.inprocess import (
    KEYS,
    UPSTREAM_KEY,
    Harness,
    chat_answer,
    chat_chunk,
    chat_stream,
    json_reply,
    running,
    sse_reply,
)

HELLO = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Say hello."}]


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running(tmp_path) as h:
        yield h


@pytest.fixture(params=["sqlite", "memory"])
async def each_store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Harness]:
    async with running(tmp_path, request.param) as h:
        yield h


def events(text: str) -> list[Any]:
    """The ``data:`` payloads of an SSE body, ``[DONE]`` kept as the string."""
    out: list[Any] = []
    for block in text.split("\n\n"):
        for line in block.splitlines():
            if line.startswith("data: "):
                payload = line[len("data: ") :]
                out.append(payload if payload == "[DONE]" else orjson.loads(payload))
    return out


async def test_chat_completion_is_relayed_metered_and_recorded_once(each_store: Harness) -> None:
    gw = each_store
    answer = chat_answer("Hello!", prompt=21, completion=5)
    gw.provider.on("/v1/chat/completions", json_reply(answer, headers={"openai-processing-ms": "42"}))

    r = await gw.post("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO, "max_tokens": 100})

    assert r.status_code == 200, r.text
    assert r.json() == answer  # the provider's body, as it came
    assert r.headers["openai-processing-ms"] == "42"  # the provider's headers are relayed
    assert r.headers["x-quotagate-provider"] == "openai"
    rid = r.headers["x-quotagate-request-id"]
    assert rid.startswith("qg-") and r.headers["x-request-id"] == rid

    (call,) = gw.provider.calls
    assert call.path == "/v1/chat/completions"
    assert call.headers["authorization"] == f"Bearer {UPSTREAM_KEY}"  # the client's key is never forwarded
    assert call.headers["x-request-id"] == rid
    assert call.body == {"model": "gpt-4o-mini", "messages": HELLO, "max_tokens": 100}  # under the team's cap

    (row,) = await gw.ledger()
    assert (row.request_id, row.team, row.key_name, row.model, row.provider) == (
        rid,
        "search",
        "search-app",
        "gpt-4o-mini",
        "openai",
    )
    assert (row.endpoint, row.stream, row.status, row.outcome, row.charged) == ("chat", False, 200, "ok", True)
    assert (row.input_tokens, row.cached_input_tokens, row.output_tokens) == (21, 0, 5)
    assert row.cost_micro_usd == 7  # 21 x 0.15 + 5 x 0.60 = 6.15 micro-USD, rounded up
    assert row.system_fingerprint == "fp_a1"
    assert row.counted_input is not None and 15 <= row.counted_input <= 30  # quotagate's own pre-count

    # OpenAI's rate-limit headers for the team's per-minute limits: one request held, its worst case reserved
    assert r.headers["x-ratelimit-limit-requests"] == "600"
    assert r.headers["x-ratelimit-remaining-requests"] == "599"
    assert r.headers["x-ratelimit-limit-tokens"] == "100000"
    assert r.headers["x-ratelimit-remaining-tokens"] == str(100_000 - row.counted_input - 100)
    assert r.headers["x-ratelimit-reset-requests"] == "30s"  # the fixed clock is 30 s into its minute

    # settled at what the provider reported: the team's day budget holds 26 tokens, the month 7 micro-USD
    usage = (await gw.client.get("/v1/usage", headers={"authorization": f"Bearer {KEYS['search-app']}"})).json()
    by_window = {(b["window"], b["unit"]): b for b in usage["budgets"]}
    assert by_window["day", "tokens"]["used"] == 26 and by_window["day", "tokens"]["reserved"] == 0
    month = by_window["month", "usd"]
    assert (month["used"], month["used_usd"], month["limit_usd"]) == (7, 0.000007, 100)  # micro-USD, and USD


async def test_team_output_cap_is_injected_or_clamped(gw: Harness) -> None:
    gw.provider.on("/v1/chat/completions", json_reply(chat_answer("ok", 10, 1)))
    assert (await gw.post("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO})).status_code == 200
    big = {"model": "gpt-4o-mini", "messages": HELLO, "max_tokens": 50_000}
    assert (await gw.post("/v1/chat/completions", big)).status_code == 200
    injected, clamped = gw.provider.bodies("/v1/chat/completions")
    assert injected["max_completion_tokens"] == 2000 and "max_tokens" not in injected
    assert clamped["max_tokens"] == 2000 and "max_completion_tokens" not in clamped
    assert len(await gw.ledger()) == 2


async def test_stream_with_include_usage_relays_the_usage_chunk(gw: Harness) -> None:
    gw.provider.on("/v1/chat/completions", sse_reply(chat_stream(["Hel", "lo", "!"], prompt=21, completion=3)))
    body = {"model": "gpt-4o-mini", "messages": HELLO, "stream": True, "stream_options": {"include_usage": True}}

    r = await gw.post("/v1/chat/completions", body)

    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["x-provider-stream"] == "1" and r.headers["x-quotagate-provider"] == "openai"
    got = events(r.text)
    assert got[-1] == "[DONE]"
    assert "".join(e["choices"][0]["delta"]["content"] for e in got[:3]) == "Hello!"
    assert got[3]["choices"] == [] and got[3]["usage"]["completion_tokens"] == 3
    assert gw.provider.bodies("/v1/chat/completions")[0]["stream_options"] == {"include_usage": True}

    (row,) = await gw.ledger()
    assert row.request_id == r.headers["x-quotagate-request-id"]
    assert (row.stream, row.status, row.outcome, row.input_tokens, row.output_tokens) == (True, 200, "ok", 21, 3)
    assert row.cost_micro_usd == 5  # 21 x 0.15 + 3 x 0.60 = 4.95, rounded up
    assert row.ttft_ms is not None and row.ttft_ms >= 0
    assert row.system_fingerprint == "fp_s1"


async def test_stream_without_include_usage_is_metered_and_the_usage_chunk_dropped(each_store: Harness) -> None:
    gw = each_store
    gw.provider.on("/v1/chat/completions", sse_reply(chat_stream(["Hi", " there"], prompt=30, completion=2)))
    r = await gw.post("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO, "stream": True})

    assert r.status_code == 200, r.text
    got = events(r.text)
    assert got[-1] == "[DONE]" and len(got) == 3  # two content chunks, [DONE]: no usage chunk for the client
    assert all(e["choices"] and "usage" not in e for e in got[:-1])
    sent = gw.provider.bodies("/v1/chat/completions")[0]
    assert sent["stream_options"] == {"include_usage": True}  # quotagate asked, to meter the stream
    (row,) = await gw.ledger()
    assert (row.input_tokens, row.output_tokens, row.cost_micro_usd) == (30, 2, 6)  # 4.5 + 1.2


async def test_stream_without_any_usage_is_charged_from_quotagates_counts(gw: Harness) -> None:
    silent = sse_reply(lambda _: [chat_chunk(w) for w in ("one ", "two ", "three")])  # ignores include_usage
    gw.provider.on("/v1/chat/completions", silent)
    r = await gw.post("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": HELLO, "stream": True})
    assert r.status_code == 200 and events(r.text)[-1] == "[DONE]"
    (row,) = await gw.ledger()
    assert row.input_tokens is None and row.output_tokens is None  # the provider said nothing
    assert row.counted_input is not None and row.counted_output == 3  # "one two three"
    expected = -(-(row.counted_input * 150_000 + 3 * 600_000) // 1_000_000)  # pico-USD, rounded up to micro
    assert row.cost_micro_usd == expected and row.charged


async def test_responses_whole_and_streamed(gw: Harness) -> None:
    usage = {
        "input_tokens": 40,
        "input_tokens_details": {"cached_tokens": 32},
        "output_tokens": 12,
        "output_tokens_details": {"reasoning_tokens": 4},
        "total_tokens": 52,
    }
    response = {
        "id": "resp_abc",
        "object": "response",
        "status": "completed",
        "model": "gpt-4o-2024-08-06",
        "output": [{"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "Paris."}]}],
        "usage": usage,
    }
    streamed: list[dict[str, Any]] = [
        {"type": "response.created", "response": {**response, "status": "in_progress", "usage": None}},
        {"type": "response.output_text.delta", "delta": "Paris."},
        {"type": "response.completed", "response": response},
    ]
    gw.provider.on("/v1/responses", json_reply(response), sse_reply(lambda _: streamed, done=False))
    body = {"model": "gpt-4o", "input": "Capital of France?", "instructions": "One word.", "store": False}

    whole = await gw.post("/v1/responses", body)
    stream = await gw.post("/v1/responses", {**body, "stream": True})

    assert whole.status_code == 200 and whole.json() == response
    assert stream.status_code == 200 and [e["type"] for e in events(stream.text)] == [e["type"] for e in streamed]
    sent = gw.provider.bodies("/v1/responses")
    assert sent[0]["max_output_tokens"] == 2000  # the team's cap, in the Responses API's own field
    assert "stream_options" not in sent[1]  # the Responses stream reports usage unasked
    rows = await gw.ledger()
    assert [(r.endpoint, r.stream) for r in rows] == [("responses", False), ("responses", True)]
    for row in rows:
        assert (row.input_tokens, row.cached_input_tokens, row.output_tokens, row.reasoning_tokens) == (40, 32, 12, 4)
        assert row.cost_micro_usd == 180  # 8 x 2.50 + 32 cached x 1.25 + 12 x 10.00


async def test_embeddings(gw: Harness) -> None:
    answer = {
        "object": "list",
        "data": [{"object": "embedding", "index": i, "embedding": [0.1, -0.2, 0.3]} for i in range(2)],
        "model": "text-embedding-3-small",
        "usage": {"prompt_tokens": 9, "total_tokens": 9},
    }
    gw.provider.on("/v1/embeddings", json_reply(answer))
    r = await gw.post("/v1/embeddings", {"model": "text-embedding-3-small", "input": ["first text", "second text"]})
    assert r.status_code == 200 and r.json() == answer
    assert gw.provider.bodies("/v1/embeddings") == [
        {"model": "text-embedding-3-small", "input": ["first text", "second text"]}  # nothing to cap
    ]
    (row,) = await gw.ledger()
    assert (row.endpoint, row.input_tokens, row.output_tokens, row.cost_micro_usd) == ("embeddings", 9, 0, 1)
    assert row.counted_input == 4  # two texts of two tokens, counted exactly before sending


async def test_completions_with_an_upstream_model_name(gw: Harness) -> None:
    answer = {
        "id": "cmpl-1",
        "object": "text_completion",
        "model": "gpt-3.5-turbo-instruct",
        "choices": [{"index": 0, "text": " blue.", "finish_reason": "stop", "logprobs": None}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 3, "total_tokens": 8},
    }
    gw.provider.on("/v1/completions", json_reply(answer))
    r = await gw.post("/v1/completions", {"model": "instruct", "prompt": "The sky is", "max_tokens": 8})
    assert r.status_code == 200 and r.json() == answer
    (sent,) = gw.provider.bodies("/v1/completions")
    assert sent == {"model": "gpt-3.5-turbo-instruct", "prompt": "The sky is", "max_tokens": 8}
    (row,) = await gw.ledger()
    assert (row.model, row.upstream_model, row.endpoint) == ("instruct", "gpt-3.5-turbo-instruct", "completions")
    assert (row.input_tokens, row.output_tokens, row.cost_micro_usd) == (5, 3, 14)  # 7.5 + 6.0 -> 13.5


async def test_models_and_refusals_of_model_access(gw: Harness) -> None:
    interns = {"authorization": f"Bearer {KEYS['interns']}"}
    listed = (await gw.client.get("/v1/models", headers=interns)).json()
    assert listed["object"] == "list"
    assert [m["id"] for m in listed["data"]] == ["gpt-4o-mini", "text-embedding-3-small"]

    denied = await gw.post("/v1/chat/completions", {"model": "gpt-4o", "messages": HELLO}, key=KEYS["interns"])
    unknown = await gw.post("/v1/chat/completions", {"model": "gpt-9", "messages": HELLO})
    wrong_mode = await gw.post("/v1/embeddings", {"model": "instruct", "input": "x"})
    for r, status, code in ((denied, 404, "model_not_found"), (unknown, 404, "model_not_found")):
        assert r.status_code == status and r.json()["error"]["code"] == code, r.text
    assert denied.json()["error"]["message"].startswith("The model `gpt-4o` does not exist")
    assert wrong_mode.status_code == 400
    assert wrong_mode.json() == {
        "error": {
            "message": "The model `instruct` is a completion model and is not served on /v1/embeddings; use it on "
            "/v1/completions (quotagate: models.instruct.mode).",
            "type": "invalid_request_error",
            "param": "model",
            "code": "model_not_supported",
        }
    }
    assert gw.provider.calls == []
    rows = await gw.ledger()
    assert [(r.team, r.model, r.status, r.outcome, r.charged) for r in rows] == [
        ("interns", "gpt-4o", 404, "invalid_request", False),
        ("search", "gpt-9", 404, "invalid_request", False),
        ("search", "instruct", 400, "invalid_request", False),
    ]


async def test_plain_routes(each_store: Harness) -> None:
    gw = each_store
    assert (await gw.client.get("/healthz")).json() == {"status": "ok"}
    ready = (await gw.client.get("/readyz")).json()
    assert ready == {"status": "ready", "store": gw.store_url.split(":")[0]}
    metrics = await gw.client.get("/metrics")
    assert metrics.status_code == 200 and "quotagate" in metrics.text
    missing = await gw.client.get("/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.json() == {
        "error": {
            "message": "Invalid URL (GET /v1/nothing-here)",
            "type": "invalid_request_error",
            "param": None,
            "code": "unknown_url",
        }
    }
    wrong_method = await gw.client.get("/v1/embeddings")
    assert wrong_method.status_code == 405 and wrong_method.json()["error"]["code"] == "method_not_allowed"
    assert await gw.ledger() == []  # nothing governed was asked

"""The mock upstream, driven over real sockets by the official openai SDK (sync and async) and raw HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import struct
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import httpx
import openai
import pytest
from openai.types import Completion, CreateEmbeddingResponse
from openai.types.chat import (
    ChatCompletion,
    ChatCompletionChunk,
    ChatCompletionMessageParam,
    ChatCompletionToolUnionParam,
)
from openai.types.responses import Response

from proxy.count import Counter
from proxy.encodings import get_encoding
from proxy.mock import MockConfig, MockServer, output_pieces, output_text, start

MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name three colours of the rainbow, please.", "name": "alice"},
]
WEATHER: ChatCompletionToolUnionParam = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
            },
            "required": ["city"],
        },
    },
}
CLOCK: ChatCompletionToolUnionParam = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}


class ThreadedMock:
    """The mock on its own event loop in a thread, so sync and async clients can share it."""

    def __init__(self, config: MockConfig) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: MockServer = asyncio.run_coroutine_threadsafe(start(config=config), self.loop).result(5)
        self.url = self.server.url
        self.root = self.url.removesuffix("/v1")

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.server.close(), self.loop).result(5)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@pytest.fixture(scope="module")
def mock() -> Iterator[ThreadedMock]:
    server = ThreadedMock(MockConfig())
    yield server
    server.close()


@pytest.fixture
def client(mock: ThreadedMock) -> Iterator[openai.OpenAI]:
    with openai.OpenAI(base_url=mock.url, api_key="sk-client", max_retries=0) as c:
        yield c


@pytest.fixture
async def aclient(mock: ThreadedMock) -> AsyncIterator[openai.AsyncOpenAI]:
    async with openai.AsyncOpenAI(base_url=mock.url, api_key="sk-client", max_retries=0) as c:
        yield c


def raw_post(mock: ThreadedMock, path: str, body: dict[str, Any], **headers: str) -> httpx.Response:
    return httpx.post(f"{mock.url}{path}", json=body, headers=headers, timeout=5)


def sse_data(raw: str) -> list[str]:
    return [line[len("data: ") :] for line in raw.split("\n") if line.startswith("data: ")]


def chat_prompt_tokens(model: str, messages: list[Any], tools: list[Any] | None = None) -> int:
    encoding = "o200k_base" if model.startswith("gpt-4o") else "cl100k_base"
    return Counter().chat(messages, tools, model=model, encoding=encoding).tokens


# ---------------------------------------------------------------- deterministic text


@pytest.mark.parametrize("encoding", ["cl100k_base", "o200k_base"])
def test_output_text_is_exactly_n_tokens(encoding: str) -> None:
    enc = get_encoding(encoding)
    for n in (0, 1, 2, 27, 28, 29, 150):
        assert len(output_pieces(n)) == n
        assert len(enc.encode(output_text(n))) == n
        assert all(len(enc.encode(piece)) == 1 for piece in output_pieces(n))
    assert output_text(3) == "Lorem ipsum dolor"


# ---------------------------------------------------------------- chat completions


def test_chat_non_stream_sync(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, seed=7)
    assert r.model == "gpt-4o-mini" and r.id.startswith("chatcmpl-") and r.created > 0
    assert r.system_fingerprint == "fp_mock7"
    choice = r.choices[0]
    assert choice.message.content == output_text(16) and choice.finish_reason == "stop"
    assert r.usage is not None
    assert r.usage.prompt_tokens == chat_prompt_tokens("gpt-4o-mini", MESSAGES)
    assert r.usage.completion_tokens == 16
    assert r.usage.total_tokens == r.usage.prompt_tokens + 16
    assert r.usage.prompt_tokens_details and r.usage.prompt_tokens_details.cached_tokens == 0
    assert r.usage.completion_tokens_details and r.usage.completion_tokens_details.reasoning_tokens == 0


def test_chat_shapes_validate_strictly(mock: ThreadedMock) -> None:
    raw = raw_post(mock, "/chat/completions", {"model": "gpt-4", "messages": MESSAGES})
    parsed = ChatCompletion.model_validate(raw.json())  # real validation, not the SDK's lenient construct
    assert parsed.usage and parsed.usage.prompt_tokens == chat_prompt_tokens("gpt-4", MESSAGES)
    assert parsed.system_fingerprint == "fp_mock"
    raw = raw_post(
        mock,
        "/chat/completions",
        {"model": "gpt-4o", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}},
    )
    for data in sse_data(raw.text)[:-1]:
        ChatCompletionChunk.model_validate(json.loads(data))


def test_chat_caps_and_overrides(client: openai.OpenAI, mock: ThreadedMock) -> None:
    r = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, max_tokens=5)
    assert r.choices[0].message.content == output_text(5) and r.choices[0].finish_reason == "length"
    r = client.chat.completions.create(
        model="o3-mini",
        messages=MESSAGES,
        max_completion_tokens=40,
        extra_body={"mock": {"output_tokens": 30}},
    )
    assert r.choices[0].message.content == output_text(30) and r.choices[0].finish_reason == "stop"
    assert r.usage and r.usage.completion_tokens == 30
    r = client.chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,
        max_completion_tokens=4,
        extra_headers={"x-mock-output-tokens": "30"},
    )
    assert r.choices[0].message.content == output_text(4) and r.choices[0].finish_reason == "length"


async def test_chat_stream_with_usage_async(aclient: openai.AsyncOpenAI) -> None:
    stream = await aclient.chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"mock": {"output_tokens": 6}},
    )
    chunks = [c async for c in stream]
    assert chunks[0].choices[0].delta.role == "assistant"
    content = [c.choices[0].delta.content for c in chunks[1:-2]]
    assert content == list(output_pieces(6))
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert all(c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.prompt_tokens == chat_prompt_tokens("gpt-4o", MESSAGES)
    assert last.usage.completion_tokens == 6 and last.usage.total_tokens == last.usage.prompt_tokens + 6


def test_chat_stream_raw_usage_null_and_done(mock: ThreadedMock) -> None:
    body = {
        "model": "gpt-4o",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    raw = raw_post(mock, "/chat/completions", body)
    assert raw.headers["content-type"].startswith("text/event-stream")
    data = sse_data(raw.text)
    assert data[-1] == "[DONE]"
    objs = [json.loads(d) for d in data[:-1]]
    assert all("usage" in o and o["usage"] is None for o in objs[:-1])
    assert objs[-1]["choices"] == [] and objs[-1]["usage"]["completion_tokens"] == 16


def test_chat_stream_without_include_usage_has_no_usage(client: openai.OpenAI, mock: ThreadedMock) -> None:
    stream = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, stream=True)
    chunks = list(stream)
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == output_text(16)
    assert all(c.usage is None and c.choices for c in chunks)
    raw = raw_post(mock, "/chat/completions", {"model": "gpt-4o", "messages": MESSAGES, "stream": True})
    assert "usage" not in raw.text and raw.text.endswith("data: [DONE]\n\n")


def test_stream_options_without_stream_is_400(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,
            stream_options={"include_usage": True},
        )
    assert info.value.param == "stream_options" and info.value.type == "invalid_request_error"


def test_chat_tools_non_stream(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, tools=[WEATHER, CLOCK])
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    call = calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "lorem", "unit": "celsius", "days": 1}
    assert r.usage is not None
    assert r.usage.completion_tokens == len(get_encoding("o200k_base").encode(call.function.arguments))
    assert r.usage.prompt_tokens == chat_prompt_tokens("gpt-4o", MESSAGES, [WEATHER, CLOCK])

    named = client.chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,
        tools=[WEATHER, CLOCK],
        tool_choice={"type": "function", "function": {"name": "get_time"}},
    )
    named_calls = named.choices[0].message.tool_calls
    assert named_calls is not None and named_calls[0].type == "function"
    assert named_calls[0].function.name == "get_time"
    assert named_calls[0].function.arguments == "{}"

    none = client.chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,
        tools=[WEATHER],
        tool_choice="none",
    )
    assert none.choices[0].message.content == output_text(16) and none.choices[0].message.tool_calls is None


async def test_chat_tools_stream_async(aclient: openai.AsyncOpenAI) -> None:
    stream = await aclient.chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,
        tools=[WEATHER],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = [c async for c in stream]
    head = chunks[0].choices[0].delta.tool_calls
    assert head and head[0].function and head[0].function.name == "get_weather" and head[0].id
    args = "".join(
        (c.choices[0].delta.tool_calls[0].function.arguments or "")  # type: ignore[union-attr]
        for c in chunks
        if c.choices and c.choices[0].delta.tool_calls
    )
    assert json.loads(args)["city"] == "lorem"
    assert chunks[-2].choices[0].finish_reason == "tool_calls"
    assert chunks[-1].usage and chunks[-1].usage.completion_tokens == len(get_encoding("o200k_base").encode(args))


# ---------------------------------------------------------------- completions, embeddings, models


def test_completions_non_stream_and_stream(client: openai.OpenAI, mock: ThreadedMock) -> None:
    prompt = "Say something in Latin."
    expected = Counter().completion(prompt, model="gpt-3.5-turbo-instruct", encoding="cl100k_base").tokens
    r = client.completions.create(model="gpt-3.5-turbo-instruct", prompt=prompt, max_tokens=7)
    assert r.choices[0].text == output_text(7) and r.choices[0].finish_reason == "length"
    assert r.usage and r.usage.prompt_tokens == expected and r.usage.completion_tokens == 7
    Completion.model_validate(raw_post(mock, "/completions", {"model": "m", "prompt": [1, 2, 3]}).json())

    stream = client.completions.create(
        model="gpt-3.5-turbo-instruct", prompt=prompt, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert [c.choices[0].text for c in chunks[:-2]] == list(output_pieces(16))
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].choices == [] and chunks[-1].usage and chunks[-1].usage.prompt_tokens == expected


async def test_embeddings_async(aclient: openai.AsyncOpenAI, mock: ThreadedMock) -> None:
    r = await aclient.embeddings.create(model="text-embedding-3-small", input=["alpha", "beta", "alpha"])
    vectors = [d.embedding for d in r.data]
    assert [d.index for d in r.data] == [0, 1, 2] and all(len(v) == 8 for v in vectors)
    assert vectors[0] == vectors[2] and vectors[0] != vectors[1]
    assert abs(sum(x * x for x in vectors[0]) - 1.0) < 1e-5
    expected = Counter().embeddings(["alpha", "beta", "alpha"], model="m", encoding="cl100k_base").tokens
    assert r.usage.prompt_tokens == expected == r.usage.total_tokens

    wide = await aclient.embeddings.create(model="text-embedding-3-small", input="alpha", dimensions=64)
    assert len(wide.data[0].embedding) == 64

    floats = raw_post(mock, "/embeddings", {"model": "text-embedding-3-small", "input": "alpha"}).json()
    CreateEmbeddingResponse.model_validate(floats)
    b64 = raw_post(
        mock,
        "/embeddings",
        {"model": "text-embedding-3-small", "input": "alpha", "encoding_format": "base64"},
    ).json()
    decoded = list(struct.unpack("<8f", base64.b64decode(b64["data"][0]["embedding"])))
    assert decoded == floats["data"][0]["embedding"] == vectors[0]


def test_models(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert "gpt-4o-mini" in ids and "text-embedding-3-small" in ids
    assert client.models.retrieve("anything-1").id == "anything-1"


# ---------------------------------------------------------------- responses


def test_responses_non_stream(client: openai.OpenAI, mock: ThreadedMock) -> None:
    r = client.responses.create(model="gpt-4o", input="Tell me a story.", instructions="Be brief.")
    assert r.output_text == output_text(16) and r.status == "completed"
    expected = Counter().responses("Tell me a story.", "Be brief.", None, model="gpt-4o", encoding="o200k_base")
    assert r.usage is not None
    assert r.usage.input_tokens == expected.tokens and r.usage.output_tokens == 16
    assert r.usage.total_tokens == expected.tokens + 16
    assert r.usage.input_tokens_details.cached_tokens == 0
    assert r.usage.output_tokens_details.reasoning_tokens == 0
    raw = raw_post(mock, "/responses", {"model": "gpt-4o", "input": [{"role": "user", "content": "hi"}]})
    Response.model_validate(raw.json())

    capped = client.responses.create(model="gpt-4o", input="x", max_output_tokens=3)
    assert capped.output_text == output_text(3) and capped.status == "incomplete"
    assert capped.incomplete_details and capped.incomplete_details.reason == "max_output_tokens"


async def test_responses_stream_async(aclient: openai.AsyncOpenAI, mock: ThreadedMock) -> None:
    stream = await aclient.responses.create(
        model="gpt-4o", input="hi", stream=True, extra_body={"mock": {"output_tokens": 3}}
    )
    events = [e async for e in stream]
    assert [e.type for e in events] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * 3,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    deltas = [e.delta for e in events if e.type == "response.output_text.delta"]
    assert deltas == list(output_pieces(3))
    done = events[-1]
    assert done.type == "response.completed"
    assert done.response.output_text == output_text(3)
    assert done.response.usage and done.response.usage.output_tokens == 3

    raw = raw_post(mock, "/responses", {"model": "gpt-4o", "input": "hi", "stream": True}).text
    assert "[DONE]" not in raw
    blocks = [b for b in raw.split("\n\n") if b]
    for block in blocks:
        event_line, data_line = block.split("\n")
        assert event_line.removeprefix("event: ") == json.loads(data_line.removeprefix("data: "))["type"]


# ---------------------------------------------------------------- faults


@pytest.mark.parametrize(
    ("shape", "check"),
    [
        (
            "openai",
            lambda b: b["error"]["type"] == "requests" and b["error"]["code"] == "rate_limit_exceeded",
        ),
        (
            "vllm",
            lambda b: b["error"]["code"] == 429 and set(b["error"]) == {"message", "type", "param", "code"},
        ),
        ("sglang", lambda b: b["object"] == "error" and b["code"] == 429 and "message" in b),
        ("anthropic", lambda b: b["type"] == "error" and b["error"]["type"] == "rate_limit_error"),
    ],
)
def test_status_error_shapes(mock: ThreadedMock, shape: str, check: Any) -> None:
    body = {"model": "gpt-4o", "messages": MESSAGES, "mock": {"status": 429, "error_shape": shape}}
    raw = raw_post(mock, "/chat/completions", body)
    assert raw.status_code == 429 and raw.headers["content-type"].startswith("application/json")
    assert check(raw.json())


def test_status_text_shape_and_headers(mock: ThreadedMock, client: openai.OpenAI) -> None:
    raw = raw_post(
        mock,
        "/embeddings",
        {"model": "m", "input": "x"},
        **{"x-mock-status": "503", "x-mock-error-shape": "text"},
    )
    assert raw.status_code == 503 and raw.headers["content-type"].startswith("text/plain")
    assert "503" in raw.text
    with pytest.raises(openai.InternalServerError):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, extra_body={"mock": {"status": 500}})
    with pytest.raises(openai.RateLimitError) as info:
        client.responses.create(model="gpt-4o", input="x", extra_headers={"x-mock-status": "429"})
    assert info.value.code == "rate_limit_exceeded"
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="gpt-4o", messages=MESSAGES, extra_body={"mock": {"nope": 1}})


def test_cut_after_breaks_the_stream(client: openai.OpenAI) -> None:
    got: list[str] = []
    with pytest.raises(openai.APIConnectionError):
        stream = client.chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,
            stream=True,
            stream_options={"include_usage": True},
            extra_body={"mock": {"cut_after": 3}},
        )
        for c in stream:
            assert c.usage is None
            got.append(c.choices[0].delta.content or "")
    assert "".join(got) == output_text(3)


async def test_cut_after_raw_is_incomplete_not_clean_eof(mock: ThreadedMock) -> None:
    body = {"model": "gpt-4o", "input": "hi", "stream": True, "mock": {"cut_after": 2, "tpot_s": 0.001}}
    received = b""
    async with aiohttp.ClientSession() as session, session.post(f"{mock.url}/responses", json=body) as resp:
        assert resp.status == 200
        with pytest.raises(aiohttp.ClientPayloadError):
            async for piece in resp.content.iter_any():
                received += piece
    assert received.count(b"response.output_text.delta\n") == 2
    assert b"response.completed" not in received


async def test_error_after_sends_in_band_error(aclient: openai.AsyncOpenAI, mock: ThreadedMock) -> None:
    got: list[str] = []
    with pytest.raises(openai.APIError) as info:
        stream = await aclient.chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,
            stream=True,
            extra_body={"mock": {"error_after": 2}},
        )
        async for c in stream:
            got.append(c.choices[0].delta.content or "")
    assert "".join(got) == output_text(2)
    assert "stream error" in info.value.message
    raw = raw_post(mock, "/completions", {"model": "m", "prompt": "p", "stream": True, "mock": {"error_after": 1}})
    data = sse_data(raw.text)
    assert json.loads(data[-1])["error"]["type"] == "server_error" and "[DONE]" not in data

    stream2 = await aclient.responses.create(
        model="gpt-4o", input="hi", stream=True, extra_body={"mock": {"error_after": 1}}
    )
    events = [e async for e in stream2]
    assert [e.type for e in events][-2:] == ["response.output_text.delta", "error"]


def test_delay_s(client: openai.OpenAI) -> None:
    t0 = time.perf_counter()
    client.chat.completions.create(model="gpt-4o", messages=MESSAGES, extra_body={"mock": {"delay_s": 0.2}})
    assert time.perf_counter() - t0 >= 0.2
    with pytest.raises(openai.APITimeoutError):
        client.chat.completions.create(
            model="gpt-4o",
            messages=MESSAGES,
            timeout=0.1,
            extra_headers={"x-mock-delay-s": "0.5"},
        )


def test_no_usage_and_usage_details(client: openai.OpenAI, mock: ThreadedMock) -> None:
    r = client.chat.completions.create(model="gpt-4o", messages=MESSAGES, extra_body={"mock": {"no_usage": True}})
    assert r.usage is None
    raw = raw_post(
        mock,
        "/chat/completions",
        {"model": "gpt-4o", "messages": MESSAGES, "stream": True, "stream_options": {"include_usage": True}},
        **{"x-mock-no-usage": "true"},
    )
    assert "usage" not in raw.text and raw.text.endswith("data: [DONE]\n\n")
    assert client.responses.create(model="gpt-4o", input="x", extra_body={"mock": {"no_usage": True}}).usage is None

    r = client.chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,
        extra_body={"mock": {"cached_tokens": 5, "reasoning_tokens": 10, "output_tokens": 4}},
    )
    assert r.choices[0].message.content == output_text(4)
    assert r.usage and r.usage.completion_tokens == 14
    assert r.usage.prompt_tokens_details and r.usage.prompt_tokens_details.cached_tokens == 5
    assert r.usage.completion_tokens_details and r.usage.completion_tokens_details.reasoning_tokens == 10
    resp = client.responses.create(model="gpt-4o", input="x", extra_body={"mock": {"reasoning_tokens": 2}})
    assert resp.usage and resp.usage.output_tokens == 18 and resp.usage.output_tokens_details.reasoning_tokens == 2


# ---------------------------------------------------------------- recording, auth, latency


def test_requests_are_recorded(client: openai.OpenAI, mock: ThreadedMock) -> None:
    httpx.delete(f"{mock.root}/_mock/requests")
    client.chat.completions.create(
        model="gpt-4o",
        messages=MESSAGES,
        extra_body={"mock": {"output_tokens": 1}},
        extra_headers={"X-Custom": "yes"},
    )
    recorded = httpx.get(f"{mock.root}/_mock/requests").json()
    assert len(recorded) == 1
    entry = recorded[0]
    assert entry["method"] == "POST" and entry["path"] == "/v1/chat/completions"
    assert entry["headers"]["authorization"] == "Bearer sk-client" and entry["headers"]["x-custom"] == "yes"
    assert entry["body"]["messages"] == MESSAGES and entry["body"]["mock"] == {"output_tokens": 1}
    assert httpx.delete(f"{mock.root}/_mock/requests").json() == {"deleted": 1}
    assert httpx.get(f"{mock.root}/_mock/requests").json() == []


async def test_recording_is_bounded() -> None:
    server = await start()
    try:
        async with aiohttp.ClientSession() as session:
            for i in range(105):
                async with session.post(f"{server.url}/models/x", json={"i": i}) as resp:
                    assert resp.status == 405
            async with session.get(f"{server.url.removesuffix('/v1')}/_mock/requests") as resp:
                recorded = await resp.json()
        assert len(recorded) == 100 and recorded[0]["body"] == {"i": 5} and recorded[-1]["body"] == {"i": 104}
    finally:
        await server.close()


async def test_api_key_enforced() -> None:
    server = await start(config=MockConfig(api_key="sk-provider"))
    try:
        async with openai.AsyncOpenAI(base_url=server.url, api_key="sk-wrong-key", max_retries=0) as bad:
            with pytest.raises(openai.AuthenticationError) as info:
                await bad.chat.completions.create(model="gpt-4o", messages=MESSAGES)
            assert info.value.code == "invalid_api_key" and "sk-provider" not in info.value.message
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{server.url}/embeddings", json={"model": "m", "input": "x"}) as resp:
                assert resp.status == 401
                assert (await resp.json())["error"]["code"] is None
            async with session.get(f"{server.url.removesuffix('/v1')}/_mock/requests") as resp:
                assert len(await resp.json()) == 2  # rejected requests are recorded too
        async with openai.AsyncOpenAI(base_url=server.url, api_key="sk-provider", max_retries=0) as good:
            r = await good.chat.completions.create(model="gpt-4o", messages=MESSAGES)
            assert r.choices[0].message.content == output_text(16)
    finally:
        await server.close()


async def test_latency_model() -> None:
    server = await start(config=MockConfig(base_ttft_s=0.05, ttft_per_1k_input_s=1.0, tpot_s=0.02))
    try:
        async with openai.AsyncOpenAI(base_url=server.url, api_key="k", max_retries=0) as c:
            long_messages: list[ChatCompletionMessageParam] = [
                {"role": "user", "content": "word " * 100}
            ]  # ~100 tokens -> +0.1 s
            t0 = time.perf_counter()
            stream = await c.chat.completions.create(
                model="gpt-4o",
                messages=long_messages,
                stream=True,
                extra_body={"mock": {"output_tokens": 5}},
            )
            arrivals = []
            async for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    arrivals.append(time.perf_counter() - t0)
            assert arrivals[0] >= 0.15
            assert arrivals[-1] - arrivals[0] >= 4 * 0.02 * 0.9
            t0 = time.perf_counter()
            await c.chat.completions.create(
                model="gpt-4o",
                messages=MESSAGES,
                extra_body={"mock": {"output_tokens": 5, "tpot_s": 0.04}},
            )
            assert time.perf_counter() - t0 >= 0.05 + 0.2
    finally:
        await server.close()


def test_cut_after_all_content_drops_finish_and_usage(mock: ThreadedMock) -> None:
    body = {
        "model": "gpt-4o",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
        "mock": {"cut_after": 99, "output_tokens": 4},
    }
    received = b""
    with (
        pytest.raises(httpx.RemoteProtocolError),
        httpx.stream("POST", f"{mock.url}/chat/completions", json=body) as r,
    ):
        for piece in r.iter_raw():
            received += piece
    contents = [json.loads(d)["choices"][0]["delta"].get("content") for d in sse_data(received.decode())]
    assert contents == ["", *output_pieces(4)]
    assert b'finish_reason":"stop' not in received and b"prompt_tokens" not in received


async def test_client_disconnect_mid_stream_is_quiet(caplog: pytest.LogCaptureFixture) -> None:
    server = await start()
    body = {
        "model": "gpt-4o",
        "messages": MESSAGES,
        "stream": True,
        "mock": {"output_tokens": 50, "tpot_s": 0.01},
    }
    try:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{server.url}/chat/completions", json=body) as resp:
                await resp.content.readline()
                resp.close()
            await asyncio.sleep(0.1)
            async with session.get(f"{server.url}/models") as resp:
                assert resp.status == 200
        assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    finally:
        await server.close()


def test_every_endpoint_sync_sdk(client: openai.OpenAI) -> None:
    emb = client.embeddings.create(model="text-embedding-3-small", input="alpha", dimensions=3)
    assert len(emb.data[0].embedding) == 3 and emb.usage.prompt_tokens == 1
    with client.responses.stream(model="gpt-4o", input="hi", extra_body={"mock": {"output_tokens": 2}}) as stream:
        deltas = [e.delta for e in stream if e.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert deltas == list(output_pieces(2)) and final.output_text == output_text(2)
    assert final.status == "completed" and final.usage and final.usage.output_tokens == 2
    # truncated by max_output_tokens: like OpenAI, the terminal event is response.incomplete (with usage)
    events = list(client.responses.create(model="gpt-4o", input="hi", max_output_tokens=2, stream=True))
    last = events[-1]
    assert last.type == "response.incomplete" and last.response.status == "incomplete"
    assert last.response.usage and last.response.usage.output_tokens == 2


async def test_every_endpoint_async_sdk(aclient: openai.AsyncOpenAI) -> None:
    stream = await aclient.completions.create(model="davinci-002", prompt="x", stream=True, max_tokens=3)
    assert [c.choices[0].text async for c in stream] == [*output_pieces(3), ""]
    r = await aclient.completions.create(model="davinci-002", prompt=["a", "b"], max_tokens=2)
    assert r.choices[0].text == output_text(2) and r.usage and r.usage.prompt_tokens == 2
    ids = [m.id async for m in aclient.models.list()]
    assert "gpt-4o" in ids
    resp = await aclient.responses.create(model="gpt-5-mini", input=[{"role": "user", "content": "hi"}])
    assert resp.output_text == output_text(16) and resp.model == "gpt-5-mini"

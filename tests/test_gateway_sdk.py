"""Acceptance through the official ``openai`` SDK (sync and async) over real sockets: every endpoint, usage
as the provider reported it, the usage chunk only when asked for, per-team model lists, and transparency
(credentials swapped, bodies and responses forwarded untouched apart from governed fields)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.gateway import Proc, base_config, mock_requests, start_gateway, start_mock

MESSAGES: list[Any] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Name three colours of the rainbow."},
]
WEATHER: Any = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather for a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city"],
        },
    },
}
# non-trivial usage from the mock: cached and reasoning tokens, a set output length
MOCK = {"mock": {"cached_tokens": 3, "reasoning_tokens": 2, "output_tokens": 6}}

# What the recording upstream answers, byte for byte: odd spacing and key order on purpose.
CANNED = (
    b'{ "object":"chat.completion", "id" : "chatcmpl-canned",  "created":1,"model":"gpt-4.1-mini",\n'
    b' "choices":[{"index":0,"message":{"role":"assistant","content":"caf\\u00e9 \xf0\x9f\x98\x80"},'
    b'"finish_reason":"stop","logprobs":null}],\n "usage":{"prompt_tokens":5,"completion_tokens":2,"total_tokens":7}}'
)

# ... and to streaming requests, an event stream with CRLF line ends (as sse-starlette servers send).
SSE_BODY = (
    b'data: {"id":"c","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hi"}}]}\r\n\r\n'
    b'data: {"id":"c","object":"chat.completion.chunk",'
    b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}\r\n\r\n'
)
SSE_USAGE = (
    b'data: {"id":"c","object":"chat.completion.chunk","choices":[],'
    b'"usage":{"prompt_tokens":5,"completion_tokens":1,"total_tokens":6}}\r\n\r\n'
)
SSE_DONE = b"data: [DONE]\r\n\r\n"


@dataclass
class Recorder:
    """A bare HTTP upstream that records the exact bytes it receives and answers CANNED."""

    server: ThreadingHTTPServer
    received: list[tuple[str, dict[str, str], bytes]] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"


def start_recorder() -> Recorder:
    holder: list[Recorder] = []

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("content-length", "0")))
            holder[0].received.append((self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            streaming = b'"stream":true' in body.replace(b" ", b"")
            answer = SSE_BODY + SSE_USAGE + SSE_DONE if streaming else CANNED
            self.send_response(200)
            self.send_header("content-type", "text/event-stream" if streaming else "application/json")
            self.send_header("x-upstream-marker", "kept")
            self.send_header("content-length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    rec = Recorder(server)
    holder.append(rec)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return rec


@dataclass
class Env:
    mock: Proc
    gw: Proc
    rec: Recorder


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp: Path = tmp_path_factory.mktemp("sdk")
    rec = start_recorder()
    mock = start_mock(tmp)
    cfg = base_config(mock.url, f"sqlite:///{tmp}/qg.db")
    cfg["providers"]["raw"] = {"base_url": rec.url + "/v1", "api_key": "sk-upstream-secret"}
    cfg["models"]["gpt-4.1-mini"] = {"provider": "raw"}
    try:
        gw = start_gateway(tmp, cfg)
    except BaseException:
        mock.kill()
        rec.server.shutdown()
        raise
    try:
        yield Env(mock, gw, rec)
    finally:
        gw.terminate()
        mock.terminate()
        rec.server.shutdown()
        rec.server.server_close()


def gw_client(env: Env, key: str = "sk-t1") -> openai.OpenAI:
    return openai.OpenAI(base_url=env.gw.url + "/v1", api_key=key, max_retries=0)


def direct_client(env: Env) -> openai.OpenAI:
    return openai.OpenAI(base_url=env.mock.url + "/v1", api_key="direct", max_retries=0)


def agw_client(env: Env, key: str = "sk-t1") -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=env.gw.url + "/v1", api_key=key, max_retries=0)


def adirect_client(env: Env) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=env.mock.url + "/v1", api_key="direct", max_retries=0)


def recorded(env: Env, tag: str) -> list[dict[str, Any]]:
    """Requests the mock received whose body carries ``user: tag``."""
    return [r for r in mock_requests(env.mock) if isinstance(r["body"], dict) and r["body"].get("user") == tag]


def usage_chunks(chunks: list[Any]) -> list[Any]:
    return [c for c in chunks if getattr(c, "usage", None) is not None]


def text_of(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


# ---- 1. the SDK against the gateway, sync ------------------------------------------------------------------
def test_chat_non_streaming_usage_equals_the_providers(env: Env) -> None:
    kw: Any = {"model": "gpt-4o-mini", "messages": MESSAGES, "extra_body": MOCK}
    via = gw_client(env).chat.completions.create(**kw)
    direct = direct_client(env).chat.completions.create(**kw)
    assert via.usage is not None and via.usage.completion_tokens == 6 + 2
    assert via.usage.prompt_tokens_details is not None and via.usage.prompt_tokens_details.cached_tokens == 3
    assert via.usage == direct.usage
    assert (
        via.choices[0].message.content == direct.choices[0].message.content == "Lorem ipsum dolor sit amet consectetur"
    )


def test_chat_stream_with_usage_gets_exactly_one_usage_chunk(env: Env) -> None:
    kw: Any = {
        "model": "gpt-4o-mini",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_usage": True},
        "extra_body": MOCK,
    }
    via = list(gw_client(env).chat.completions.create(**kw))
    direct = list(direct_client(env).chat.completions.create(**kw))
    got = usage_chunks(via)
    assert len(got) == 1 and got[0].choices == [] and via[-1] is got[0]
    assert got[0].usage == usage_chunks(direct)[0].usage
    assert got[0].usage.total_tokens == got[0].usage.prompt_tokens + 8
    assert text_of(via) == text_of(direct) == "Lorem ipsum dolor sit amet consectetur"


def test_chat_stream_without_usage_gets_no_usage_chunk(env: Env) -> None:
    kw: Any = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True, "extra_body": MOCK}
    via = list(gw_client(env).chat.completions.create(**kw))
    direct = list(direct_client(env).chat.completions.create(**kw))
    assert usage_chunks(via) == [] and usage_chunks(direct) == []
    assert [c.choices[0].delta.model_dump() for c in via] == [c.choices[0].delta.model_dump() for c in direct]
    assert via[-1].choices[0].finish_reason == "stop"


def sse_events(raw: bytes) -> list[Any]:
    out = []
    for event in raw.replace(b"\r\n", b"\n").split(b"\n\n"):
        data = b"\n".join(x[5:].strip() for x in event.split(b"\n") if x.startswith(b"data:"))
        if data:
            out.append(data if data == b"[DONE]" else json.loads(data))
    return out


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"messages": MESSAGES}),
        ("/v1/completions", {"prompt": "Say something"}),
    ],
    ids=["chat", "completions"],
)
def test_raw_sse_bytes_carry_the_usage_chunk_only_when_asked(env: Env, path: str, body: dict[str, Any]) -> None:
    auth = {"authorization": "Bearer sk-t1"}
    base = {"model": "gpt-4o-mini", "stream": True, **body, **MOCK}
    plain = httpx.post(env.gw.url + path, headers=auth, json=base)
    assert plain.status_code == 200 and plain.headers["content-type"].startswith("text/event-stream")
    events = sse_events(plain.content)
    assert events[-1] == b"[DONE]"
    objs = [e for e in events if isinstance(e, dict)]
    assert objs and not [e for e in objs if e.get("choices") == []]
    assert not [e for e in objs if e.get("usage")]
    assert b'"choices":[]' not in plain.content

    asked = httpx.post(env.gw.url + path, headers=auth, json={**base, "stream_options": {"include_usage": True}})
    objs = [e for e in sse_events(asked.content) if isinstance(e, dict)]
    with_usage = [e for e in objs if e.get("usage")]
    assert len(with_usage) == 1 and with_usage[0]["choices"] == []
    assert with_usage[0]["usage"]["completion_tokens"] == 8


def test_tools_come_back_as_tool_calls(env: Env) -> None:
    kw: Any = {"model": "gpt-4o", "messages": MESSAGES, "tools": [WEATHER], "tool_choice": "auto"}
    via = gw_client(env).chat.completions.create(**kw)
    direct = direct_client(env).chat.completions.create(**kw)
    calls = via.choices[0].message.tool_calls
    assert via.choices[0].finish_reason == "tool_calls" and calls
    assert calls[0].function.name == "get_weather"
    assert json.loads(calls[0].function.arguments) == {"city": "lorem", "days": 1}
    assert via.usage == direct.usage

    stream = list(gw_client(env).chat.completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    deltas = [tc for c in stream if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
    assert deltas[0].function is not None and deltas[0].function.name == "get_weather"
    args = "".join(d.function.arguments or "" for d in deltas if d.function)
    assert json.loads(args) == {"city": "lorem", "days": 1}
    assert usage_chunks(stream)[0].usage == direct.usage


def test_completions_stream_and_not(env: Env) -> None:
    kw: Any = {"model": "gpt-4o-mini", "prompt": ["Once upon", "a time"], "max_tokens": 4, "extra_body": MOCK}
    via = gw_client(env).completions.create(**kw)
    direct = direct_client(env).completions.create(**kw)
    assert via.usage == direct.usage and via.usage is not None and via.usage.completion_tokens == 4 + 2
    assert via.choices[0].text == direct.choices[0].text == "Lorem ipsum dolor sit"
    assert via.choices[0].finish_reason == "length"

    chunks = list(gw_client(env).completions.create(**kw, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == "Lorem ipsum dolor sit"
    assert usage_chunks(chunks) == []
    chunks = list(gw_client(env).completions.create(**kw, stream=True, stream_options={"include_usage": True}))
    assert [c.usage for c in usage_chunks(chunks)] == [direct.usage]


def test_embeddings(env: Env) -> None:
    kw: Any = {"model": "text-embedding-3-small", "input": ["hello world", "second input"], "dimensions": 4}
    via = gw_client(env).embeddings.create(**kw)
    direct = direct_client(env).embeddings.create(**kw)
    assert via.usage == direct.usage and via.usage.prompt_tokens > 0
    assert [d.embedding for d in via.data] == [d.embedding for d in direct.data]
    assert len(via.data) == 2 and len(via.data[0].embedding) == 4
    # base64 (the SDK's default wire format when not asked otherwise) decodes the same
    b64 = gw_client(env).embeddings.create(model="text-embedding-3-small", input="hello world", dimensions=4)
    assert b64.data[0].embedding == pytest.approx(via.data[0].embedding)


def test_responses_stream_and_not(env: Env) -> None:
    kw: Any = {"model": "gpt-4o-mini", "input": "Tell me a story", "instructions": "Be brief.", "extra_body": MOCK}
    via = gw_client(env).responses.create(**kw)
    direct = direct_client(env).responses.create(**kw)
    assert via.usage == direct.usage and via.usage is not None
    assert via.usage.output_tokens_details.reasoning_tokens == 2
    assert via.usage.input_tokens_details.cached_tokens == 3
    assert via.output_text == direct.output_text == "Lorem ipsum dolor sit amet consectetur"

    events = list(gw_client(env).responses.create(**kw, stream=True))
    assert events[-1].type == "response.completed"
    assert events[-1].response.usage == direct.usage
    text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert text == via.output_text


def test_models_lists_only_the_teams_models(env: Env) -> None:
    t1 = sorted(m.id for m in gw_client(env, "sk-t1").models.list())
    t2 = [m.id for m in gw_client(env, "sk-t2").models.list()]
    assert t1 == sorted(["gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "gpt-4.1-mini"])
    assert t2 == ["gpt-4o-mini"]
    with pytest.raises(openai.AuthenticationError):
        gw_client(env, "sk-nope").models.list()


# ---- 1. the same, async ------------------------------------------------------------------------------------
async def test_async_client_every_endpoint(env: Env) -> None:
    via, direct = agw_client(env), adirect_client(env)
    try:
        kw: Any = {"model": "gpt-4o-mini", "messages": MESSAGES, "extra_body": MOCK}
        a, b = await via.chat.completions.create(**kw), await direct.chat.completions.create(**kw)
        assert (
            a.usage == b.usage and a.usage is not None and a.choices[0].message.content == b.choices[0].message.content
        )

        s = await via.chat.completions.create(**kw, stream=True, stream_options={"include_usage": True})
        chunks = [c async for c in s]
        assert [c.usage for c in usage_chunks(chunks)] == [b.usage]
        s = await via.chat.completions.create(**kw, stream=True)
        chunks = [c async for c in s]
        assert usage_chunks(chunks) == [] and text_of(chunks) == b.choices[0].message.content

        tools = await via.chat.completions.create(model="gpt-4o", messages=MESSAGES, tools=[WEATHER])
        assert tools.choices[0].message.tool_calls and tools.choices[0].finish_reason == "tool_calls"

        ckw: Any = {"model": "gpt-4o-mini", "prompt": "Hi", "extra_body": MOCK}
        c1, c2 = await via.completions.create(**ckw), await direct.completions.create(**ckw)
        assert c1.usage == c2.usage and c1.choices[0].text == c2.choices[0].text
        cs = await via.completions.create(**ckw, stream=True, stream_options={"include_usage": True})
        assert [c.usage for c in usage_chunks([c async for c in cs])] == [c2.usage]

        ekw: Any = {"model": "text-embedding-3-small", "input": "vector me"}
        e1, e2 = await via.embeddings.create(**ekw), await direct.embeddings.create(**ekw)
        assert e1.usage == e2.usage and e1.data[0].embedding == pytest.approx(e2.data[0].embedding)

        rkw: Any = {"model": "gpt-4o-mini", "input": [{"role": "user", "content": "Hi"}], "extra_body": MOCK}
        r1, r2 = await via.responses.create(**rkw), await direct.responses.create(**rkw)
        assert r1.usage == r2.usage and r1.output_text == r2.output_text
        rs = await via.responses.create(**rkw, stream=True)
        events = [e async for e in rs]
        assert events[-1].type == "response.completed" and events[-1].response.usage == r2.usage

        models = await agw_client(env, "sk-t2").models.list()
        assert [m.id for m in models.data] == ["gpt-4o-mini"]
    finally:
        await via.close()
        await direct.close()


async def test_async_clients_concurrently(env: Env) -> None:
    import asyncio

    via = agw_client(env)
    try:
        kw: Any = {
            "model": "gpt-4o-mini",
            "messages": MESSAGES,
            "stream": True,
            "stream_options": {"include_usage": True},
        }

        async def one(n: int) -> Any:
            s = await via.chat.completions.create(**kw, extra_body={"mock": {"output_tokens": n}})
            chunks = [c async for c in s]
            return usage_chunks(chunks)[0].usage.completion_tokens, text_of(chunks)

        results = await asyncio.gather(*(one(n) for n in range(1, 9)))
        assert [r[0] for r in results] == list(range(1, 9))
        assert [len(r[1].split()) for r in results] == list(range(1, 9))
    finally:
        await via.close()


# ---- 3. transparency ---------------------------------------------------------------------------------------
def test_client_key_never_reaches_the_upstream_and_the_provider_key_does(env: Env) -> None:
    tag = "transparency-keys"
    client = openai.OpenAI(
        base_url=env.gw.url + "/v1", api_key="sk-t1", max_retries=0, organization="org-client", project="proj-client"
    )
    client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, user=tag, extra_headers={"x-trace": "t-1"})
    (req,) = recorded(env, tag)
    headers = req["headers"]
    assert headers["authorization"] == "Bearer sk-upstream-secret"
    assert "sk-t1" not in json.dumps(req)
    assert "openai-organization" not in headers and "openai-project" not in headers
    assert headers["x-trace"] == "t-1"  # other client headers pass through
    assert headers["x-request-id"].startswith("qg-")


def test_ungoverned_fields_arrive_identical(env: Env) -> None:
    tag = "transparency-extras"
    kw: Any = {
        "model": "gpt-4o-mini",
        "messages": [
            *MESSAGES,
            {"role": "assistant", "content": None, "refusal": None},
            {"role": "user", "content": "ü ✓"},
        ],
        "user": tag,
        "metadata": {"ticket": "T-1", "empty": ""},
        "logit_bias": {"1234": -100, "42": 5},
        "temperature": 0.3,
        "seed": 7,
        "n": 1,
        "extra_body": {"x_junk": {"nested": [1, "two", None, 3.25, {"deep": True}]}, "mock": {"output_tokens": 2}},
    }
    gw_client(env).chat.completions.create(**kw)
    direct_client(env).chat.completions.create(**kw)
    via, direct = recorded(env, tag)
    assert via["body"] == direct["body"]
    assert via["body"]["x_junk"] == {"nested": [1, "two", None, 3.25, {"deep": True}]}
    assert via["body"]["logit_bias"] == {"1234": -100, "42": 5}
    assert via["path"] == "/v1/chat/completions"


def test_streaming_forces_include_usage_upstream_and_changes_nothing_else(env: Env) -> None:
    tag = "transparency-stream"
    kw: Any = {"model": "gpt-4o-mini", "messages": MESSAGES, "user": tag, "stream": True, "metadata": {"a": "b"}}
    list(gw_client(env).chat.completions.create(**kw))
    list(gw_client(env).chat.completions.create(**kw, stream_options={"include_usage": False}))
    list(direct_client(env).chat.completions.create(**kw))
    forced, forced_false, direct = recorded(env, tag)
    assert "stream_options" not in direct["body"]
    assert forced["body"] == {**direct["body"], "stream_options": {"include_usage": True}}
    assert forced_false["body"] == {**direct["body"], "stream_options": {"include_usage": True}}


def test_exact_request_bytes_and_response_bytes_when_nothing_is_governed(env: Env) -> None:
    body = (
        b'{"messages":[{"content":"caf\\u00e9 \xe2\x9c\x93","role":"user"}],   "temperature" : 0.70,\n'
        b' "model":"gpt-4.1-mini", "x_junk":{"b":1,"a":[1e3, -0.0]}, "stream": false}'
    )
    resp = httpx.post(
        env.gw.url + "/v1/chat/completions",
        content=body,
        headers={"authorization": "Bearer sk-t1", "content-type": "application/json", "x-trace": "bytes"},
    )
    assert resp.status_code == 200
    assert resp.content == CANNED  # the provider's bytes, unchanged
    assert resp.headers["x-upstream-marker"] == "kept"
    path, headers, got = next(r for r in env.rec.received if r[1].get("x-trace") == "bytes")
    assert got == body  # the client's bytes, unchanged: spacing, key order, escapes, number spelling
    assert path == "/v1/chat/completions"
    assert headers["authorization"] == "Bearer sk-upstream-secret"
    # the SDK sees the provider's answer
    r = gw_client(env).chat.completions.create(model="gpt-4.1-mini", messages=MESSAGES)
    assert r.id == "chatcmpl-canned" and r.choices[0].message.content == "café 😀"


def test_patched_streaming_request_keeps_every_other_field(env: Env) -> None:
    body = {
        "model": "gpt-4.1-mini",
        "messages": MESSAGES,
        "stream": True,
        "stream_options": {"include_obfuscation": False},
        "x_junk": {"k": [1, 2]},
        "logit_bias": {"7": 1},
    }
    httpx.post(
        env.gw.url + "/v1/chat/completions", json=body, headers={"authorization": "Bearer sk-t1", "x-trace": "patched"}
    )
    _, _, got = next(r for r in env.rec.received if r[1].get("x-trace") == "patched")
    assert json.loads(got) == {**body, "stream_options": {"include_obfuscation": False, "include_usage": True}}


def test_crlf_event_streams_are_relayed_byte_for_byte(env: Env) -> None:
    auth = {"authorization": "Bearer sk-t1"}
    body = {"model": "gpt-4.1-mini", "messages": MESSAGES, "stream": True}
    asked = httpx.post(
        env.gw.url + "/v1/chat/completions", headers=auth, json={**body, "stream_options": {"include_usage": True}}
    )
    assert asked.content == SSE_BODY + SSE_USAGE + SSE_DONE  # once, unchanged
    plain = httpx.post(env.gw.url + "/v1/chat/completions", headers=auth, json=body)
    assert plain.content == SSE_BODY + SSE_DONE  # only the forced usage chunk is gone, CRLF kept
    chunks = list(gw_client(env).chat.completions.create(model="gpt-4.1-mini", messages=MESSAGES, stream=True))
    assert text_of(chunks) == "Hi" and usage_chunks(chunks) == []


def test_non_streaming_mock_responses_come_back_unchanged(env: Env) -> None:
    """Against the mock the ids and timestamps differ per call, so compare everything else."""
    auth = {"authorization": "Bearer sk-t1"}
    cases = [
        ("/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES, **MOCK}),
        ("/v1/completions", {"model": "gpt-4o-mini", "prompt": "x", **MOCK}),
        ("/v1/embeddings", {"model": "text-embedding-3-small", "input": "x"}),
        ("/v1/responses", {"model": "gpt-4o-mini", "input": "x", **MOCK}),
    ]
    for path, body in cases:
        via = httpx.post(env.gw.url + path, headers=auth, json=body)
        direct = httpx.post(env.mock.url + path, json=body)
        assert via.status_code == direct.status_code == 200
        assert via.headers["content-type"] == direct.headers["content-type"]
        a, b = via.json(), direct.json()
        for k in ("id", "created", "created_at"):
            a.pop(k, None), b.pop(k, None)
        for item in a.get("output", []) + b.get("output", []):
            item.pop("id", None)
        assert a == b, path
        assert len(via.content) == len(direct.content)  # same ids length, same formatting: nothing re-encoded

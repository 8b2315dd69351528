"""Malformed bodies never make quotagate answer 5xx, and every 4xx it sends is OpenAI-shaped.

A seeded hypothesis run drives the app in process (raw ASGI through ``httpx.ASGITransport``, the
lifespan run by hand) in front of the mock provider served on the same event loop, on every governed
endpoint, with bodies mutated from a valid one: wrong types for every governed field, odd message and
tool shapes, missing fields, huge integers, JSON that is not an object, bytes that are not JSON.

An exception escaping the app is what uvicorn turns into ``500 Internal Server Error``; the transport
re-raises it here, so it is caught and counted like a 5xx. Whatever the provider answers carries a mark,
so a provider's own 5xx (relayed, as it should be) is told apart from one quotagate makes. Failures are
collected over the whole run and reported together (the first few bodies with their answers), so one
run shows every broken path.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy import mock
from proxy.app import create_app
from proxy.settings import parse
from tests.inprocess import lifespan

CASES = 1500
ENDPOINTS: dict[str, dict[str, Any]] = {
    "/v1/chat/completions": {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
    "/v1/completions": {"model": "gpt-4o-mini", "prompt": "hi"},
    "/v1/embeddings": {"model": "text-embedding-3-small", "input": "hi"},
    "/v1/responses": {"model": "gpt-4o-mini", "input": "hi"},
}
KEYS = ("sk-plain", "sk-trim", "sk-reject")
PROVIDER_MARK = "x-test-provider"

Receive = Callable[[], Awaitable[dict[str, Any]]]


# ---- the app, in process --------------------------------------------------------------------------------
def config(upstream: str, store: str) -> dict[str, Any]:
    big = {"budgets": [{"window": "day", "tokens": 10**12}, {"window": "month", "usd": 10**6}]}
    return {
        "store": store,
        "ledger_flush_seconds": 0.05,
        "max_body_bytes": 256 * 1024,
        "providers": {"mock": {"base_url": upstream, "api_key": "sk-upstream"}},
        "models": {m: {"provider": "mock"} for m in ("gpt-4o-mini", "gpt-4o", "text-embedding-3-small")},
        "teams": {
            "plain": {**big, "rate_limits": {"tpm": 10**12, "rpm": 10**9, "concurrent": 1000}},
            "trim": {**big, "max_input_tokens": 60, "on_context_overflow": "trim", "max_output_tokens": 64},
            # a limit that admits anything, so that every reservation is written (huge caps included)
            "reject": {"max_input_tokens": 60, "on_context_overflow": "reject", "rate_limits": {"rpm": 10**9}},
        },
        "keys": [{"team": t, "name": t, "key": f"sk-{t}"} for t in ("plain", "trim", "reject")],
    }


@web.middleware
async def mark_provider(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> Any:
    """Mark every answer of the provider, its crashes included (a provider's 500 is relayed, not ours)."""
    try:
        resp = await handler(request)
    except web.HTTPException as e:
        e.headers[PROVIDER_MARK] = "1"
        raise
    except Exception as e:
        resp = web.Response(status=500, text=f"the provider crashed: {e!r}")
    resp.headers[PROVIDER_MARK] = "1"
    return resp


@dataclass
class Harness:
    loop: asyncio.AbstractEventLoop
    client: httpx.AsyncClient
    provider: web.Application
    gateway: Any
    failures: list[str] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    provider_5xx: list[str] = field(default_factory=list)

    def run(self, coro: Awaitable[Any]) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, 30))

    def post(self, path: str, content: bytes, key: str) -> httpx.Response:
        headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
        resp: httpx.Response = self.run(self.client.post(path, content=content, headers=headers))
        return resp


@pytest.fixture(scope="module")
def harness(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Harness]:
    loop = asyncio.new_event_loop()
    threshold = gc.get_threshold()  # the gateway's startup tunes the collector for a server process
    provider = mock.build_app(mock.MockConfig())
    provider.middlewares.insert(0, mark_provider)
    runner = web.AppRunner(provider, access_log=None)
    loop.run_until_complete(runner.setup())
    loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", 0).start())
    upstream = f"http://127.0.0.1:{runner.addresses[0][1]}/v1"
    db = tmp_path_factory.mktemp("malformed") / "qg.db"
    app = create_app(parse(config(upstream, f"sqlite:///{db}")))
    span = lifespan(app)
    loop.run_until_complete(span.__aenter__())
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://quotagate")
    try:
        yield Harness(loop, client, provider, app.gw)
    finally:
        loop.run_until_complete(client.aclose())
        loop.run_until_complete(span.__aexit__(None, None, None))
        loop.run_until_complete(runner.cleanup())
        loop.close()
        gc.unfreeze()
        gc.set_threshold(*threshold)


# ---- bodies ----------------------------------------------------------------------------------------------
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.sampled_from([0, -1, 1, 2**31, 2**63 - 1, 2**63, 2**64 - 1, 10**30])
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
    | st.sampled_from(["", "user", "system", "assistant", "tool", "function", "text", "image_url", "auto"])
)
json_values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)


def anything(*likely: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.one_of(*likely, json_values)


# data: URLs whose header claims PNG/GIF/WebP/JPEG and whose rest is noise: the size readers must not break
image_bytes = st.builds(
    lambda magic, rest: magic + rest,
    st.sampled_from([b"\x89PNG\r\n\x1a\n", b"GIF89a", b"RIFF\0\0\0\0WEBPVP8 ", b"RIFF\0\0\0\0WEBPVP8X", b"\xff\xd8"]),
    st.binary(max_size=40),
)
data_url = st.builds(lambda b: "data:image/png;base64," + base64.b64encode(b).decode(), image_bytes)
image_url = anything(
    st.fixed_dictionaries(
        {"url": anything(st.just("https://example.com/a.png"), data_url, st.just("data:image/png;base64,%%"))},
        optional={"detail": anything(st.sampled_from(["low", "high", "auto"]))},
    )
)
part = anything(
    st.fixed_dictionaries(
        {"type": anything(st.sampled_from(["text", "image_url", "input_text", "input_image", "input_audio", "file"]))},
        optional={"text": anything(st.text(max_size=20)), "image_url": image_url, "input_audio": json_values},
    )
)
content = anything(st.text(max_size=20), st.lists(part, max_size=3))
call = anything(
    st.fixed_dictionaries(
        {"id": anything(st.just("call_1")), "type": anything(st.just("function"))},
        optional={"function": anything(st.fixed_dictionaries({"name": json_values, "arguments": json_values}))},
    )
)
message = anything(
    st.fixed_dictionaries(
        {"role": anything(st.sampled_from(["user", "system", "developer", "assistant", "tool"]))},
        optional={
            "content": content,
            "name": json_values,
            "tool_calls": anything(st.lists(call, max_size=2)),
            "function_call": json_values,
            "tool_call_id": json_values,
        },
    )
)
messages = anything(st.lists(message, max_size=5))
schema = anything(
    st.fixed_dictionaries(
        {"type": anything(st.just("object"))},
        optional={
            "properties": anything(
                st.dictionaries(
                    st.text(max_size=6),
                    anything(st.fixed_dictionaries({"type": json_values}, optional={"enum": json_values})),
                    max_size=3,
                )
            )
        },
    )
)
function = st.fixed_dictionaries(
    {"name": anything(st.just("f"))}, optional={"description": json_values, "parameters": schema}
)
tool = anything(
    st.fixed_dictionaries({"type": anything(st.just("function")), "function": anything(function)}),
    st.fixed_dictionaries({"type": st.just("function"), "name": json_values}, optional={"parameters": schema}),
)
tools = anything(st.lists(tool, max_size=3))
item = anything(
    message,
    st.text(max_size=20),
    st.fixed_dictionaries(
        {"type": anything(st.sampled_from(["message", "function_call", "function_call_output", "reasoning"]))},
        optional={
            "role": json_values,
            "content": content,
            "name": json_values,
            "arguments": json_values,
            "input": json_values,
            "output": anything(content),
            "summary": anything(st.lists(part, max_size=2)),
        },
    ),
)
prompt_like = anything(st.text(max_size=20), st.lists(anything(st.text(max_size=8), st.lists(st.integers(0, 99)))))
cap = anything(st.integers(-5, 2**64), st.sampled_from([0, 16, 100, 2**63 - 1, 2**64 - 1]))
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "model": anything(st.sampled_from(["gpt-4o-mini", "gpt-4o", "text-embedding-3-small", "no-such-model", ""])),
    "messages": messages,
    "prompt": prompt_like,
    "input": anything(prompt_like, st.lists(item, max_size=4)),
    "instructions": anything(st.text(max_size=20)),
    "tools": tools,
    "tool_choice": json_values,
    "functions": json_values,
    "stream": anything(st.booleans()),
    "stream_options": anything(st.fixed_dictionaries({}, optional={"include_usage": anything(st.booleans())})),
    "max_tokens": cap,
    "max_completion_tokens": cap,
    "max_output_tokens": cap,
    "previous_response_id": anything(st.just("resp_123")),
    "conversation": anything(st.just("conv_123")),
    "seed": json_values,
    "n": json_values,
    "dimensions": json_values,
    "encoding_format": json_values,
}


@st.composite
def bodies(draw: st.DrawFn) -> tuple[str, bytes]:
    path = draw(st.sampled_from(sorted(ENDPOINTS)))
    kind = draw(st.sampled_from(["mutated"] * 8 + ["not-an-object", "not-json"]))
    if kind == "not-an-object":
        return path, json.dumps(draw(st.one_of(scalars, st.lists(json_values, max_size=3)))).encode()
    body = dict(ENDPOINTS[path])
    for name in draw(st.lists(st.sampled_from(sorted(FIELDS)), min_size=1, max_size=4)):
        if draw(st.integers(0, 5)) == 0:
            body.pop(name, None)
        else:
            body[name] = draw(FIELDS[name])
    raw = json.dumps(body).encode()
    if kind == "not-json":
        cut = draw(st.integers(0, len(raw)))
        raw = raw[:cut] + draw(st.sampled_from([b"", b"\xff", b",}", b"NaN"]))
    return path, raw


# ---- the property ----------------------------------------------------------------------------------------
def check(h: Harness, path: str, raw: bytes, key: str) -> None:
    try:
        resp = h.post(path, raw, key)
    except Exception as e:  # escaped the app: a 500 from uvicorn in production
        h.failures.append(f"{path} {raw[:300]!r}: raised {e.__class__.__name__}: {e}")
        return
    h.statuses[resp.status_code] = h.statuses.get(resp.status_code, 0) + 1
    if resp.status_code >= 500 and PROVIDER_MARK in resp.headers:
        h.provider_5xx.append(f"{path} {raw[:300]!r}: {resp.text[:200]}")
    elif resp.status_code >= 500:
        h.failures.append(f"{path} {raw[:300]!r}: {resp.status_code} {resp.text[:200]}")
    elif resp.status_code >= 400:
        try:
            err = resp.json()["error"]
            ok = (
                resp.headers["content-type"] == "application/json"
                and set(err) == {"message", "type", "param", "code"}
                and isinstance(err["message"], str)
                and err["message"] != ""
                and isinstance(err["type"], str)
                and all(err[k] is None or isinstance(err[k], str) for k in ("param", "code"))
            )
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            h.failures.append(f"{path} {raw[:300]!r}: {resp.status_code} not OpenAI-shaped: {resp.text[:200]}")


@settings(
    max_examples=CASES,
    derandomize=True,  # seeded: the same cases on every run
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case=bodies(), key=st.sampled_from(KEYS))
def test_malformed_bodies_never_get_a_5xx_from_quotagate(harness: Harness, case: tuple[str, bytes], key: str) -> None:
    path, raw = case
    check(harness, path, raw, key)


def test_no_failures_and_the_gateway_is_still_up(harness: Harness) -> None:
    """Runs after the fuzz test (same module fixture): every failure at once, then a valid request."""
    total = sum(harness.statuses.values()) + sum("raised" in f for f in harness.failures)
    assert total >= CASES, f"the fuzz test did not run first ({total} cases)"
    assert harness.failures == [], f"{len(harness.failures)} of {total}:\n" + "\n".join(harness.failures[:15])
    for path, body in ENDPOINTS.items():
        resp = harness.post(path, json.dumps(body).encode(), "sk-plain")
        assert resp.status_code == 200, resp.text
    assert harness.run(harness.client.get("/healthz")).status_code == 200


# ---- what is forwarded rather than refused ----------------------------------------------------------------
def last_upstream_body(h: Harness) -> Any:
    return h.provider[mock.STATE].requests[-1]["body"]


def ledger_of(h: Harness, team: str, request_id: str) -> Any:
    async def find() -> Any:
        while True:
            rows = [r for r in await h.gateway.store.ledger(0, team=team) if r.request_id == request_id]
            if rows:
                return rows[0]
            await asyncio.sleep(0.02)

    return h.run(find())


def test_stream_options_without_a_stream_reach_the_provider_unchanged(harness: Harness) -> None:
    """The SDK's own tests send it; whether it is valid is the provider's call, not quotagate's."""
    body = {**ENDPOINTS["/v1/chat/completions"], "stream": False, "stream_options": {"include_usage": True}}
    resp = harness.post("/v1/chat/completions", json.dumps(body).encode(), "sk-plain")
    assert PROVIDER_MARK in resp.headers  # the provider answered, whatever it answered
    assert last_upstream_body(harness) == body


def test_stored_context_is_forwarded_reserved_up_to_the_team_cap_and_settled_from_usage(harness: Harness) -> None:
    first = harness.post("/v1/responses", b'{"model": "gpt-4o-mini", "input": "hi"}', "sk-trim")
    assert first.status_code == 200, first.text
    body = {"model": "gpt-4o-mini", "input": "and then?", "previous_response_id": first.json()["id"]}
    resp = harness.post("/v1/responses", json.dumps(body).encode(), "sk-trim")
    assert resp.status_code == 200, resp.text
    assert last_upstream_body(harness) == {**body, "max_output_tokens": 64}  # the team's output cap, injected
    rec = ledger_of(harness, "trim", resp.headers["x-quotagate-request-id"])
    # quotagate cannot see the stored turns: it reserved the team's cap as the input worst case ...
    assert (rec.counted_input, rec.estimated) == (60, True)
    # ... and charged what the provider reported
    assert rec.input_tokens == resp.json()["usage"]["input_tokens"] and rec.charged


def test_a_missing_prompt_field_is_the_providers_to_refuse(harness: Harness) -> None:
    for path, body in ENDPOINTS.items():
        prompt = {"/v1/chat/completions": "messages", "/v1/completions": "prompt"}.get(path, "input")
        bare = {k: v for k, v in body.items() if k != prompt}
        resp = harness.post(path, json.dumps(bare).encode(), "sk-plain")
        assert PROVIDER_MARK in resp.headers and resp.status_code == 400, resp.text  # the mock requires it
        assert last_upstream_body(harness) == bare
        rec = ledger_of(harness, "plain", resp.headers["x-quotagate-request-id"])
        assert rec.estimated and not rec.charged  # reserved as unseen input, refused upstream: not charged
        assert rec.counted_input == (128000 if path != "/v1/embeddings" else 8191)


def test_what_quotagate_refuses_names_the_field_and_why(harness: Harness) -> None:
    cases = [
        (b'{"messages": []}', "model", "routes and prices"),
        (b'{"model": "gpt-4o-mini", "prompt": "x", "max_tokens": "10"}', "max_tokens", "reserves the output cap"),
        (b'{"model": "gpt-4o-mini", "prompt": "x", "stream": true, "stream_options": 1}', "stream_options", "usage"),
    ]
    for raw, param, why in cases:
        resp = harness.post("/v1/completions", raw, "sk-plain")
        err = resp.json()["error"]
        assert (resp.status_code, err["param"], PROVIDER_MARK in resp.headers) == (400, param, False)
        assert why in err["message"]

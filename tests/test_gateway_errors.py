"""Every error class, as the official SDK sees it (exception class, status, ``code``) and on the wire
(an OpenAI-shaped body with all four keys), including errors that happen after a stream has started."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from tests.gateway import Proc, base_config, free_port, start_gateway, start_mock

MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]
MAX_BODY = 20_000


@dataclass
class Env:
    mock: Proc
    gw: Proc


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    tmp: Path = tmp_path_factory.mktemp("errors")
    mock = start_mock(tmp)
    # warm the mock's tokenizers first: the first request loads them, which can outlast the 0.5 s timeout
    warmups: list[tuple[str, dict[str, Any]]] = [
        ("/v1/chat/completions", {"messages": MESSAGES}),
        ("/v1/responses", {"input": "x"}),
    ]
    for path, body in warmups:
        httpx.post(mock.url + path, json={"model": "gpt-4o-mini", **body}, timeout=30).raise_for_status()
    cfg = base_config(mock.url, f"sqlite:///{tmp}/qg.db", max_body_bytes=MAX_BODY, upstream_timeout_s=0.5)
    # a provider nobody listens on: free_port() returns a port that was just closed
    cfg["providers"]["dead"] = {"base_url": f"http://127.0.0.1:{free_port()}/v1", "api_key": "sk-dead"}
    cfg["models"]["gpt-4.1-mini"] = {"provider": "dead"}
    try:
        gw = start_gateway(tmp, cfg)
    except BaseException:
        mock.kill()
        raise
    try:
        yield Env(mock, gw)
    finally:
        gw.terminate()
        mock.terminate()


def client(env: Env, key: str = "sk-t1") -> openai.OpenAI:
    return openai.OpenAI(base_url=env.gw.url + "/v1", api_key=key, max_retries=0)


def post(env: Env, path: str, body: Any, key: str | None = "sk-t1") -> httpx.Response:
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    return httpx.post(env.gw.url + path, content=content, headers=headers, timeout=10)


def assert_openai_error(resp: httpx.Response, status: int, code: str | None) -> dict[str, Any]:
    assert resp.status_code == status, resp.text
    assert resp.headers["content-type"] == "application/json"
    body = resp.json()
    assert set(body) == {"error"}
    err: dict[str, Any] = body["error"]
    assert set(err) == {"message", "type", "param", "code"}  # all four keys, always
    assert isinstance(err["message"], str) and err["message"]
    assert isinstance(err["type"], str) and err["type"]
    assert err["code"] == code
    assert err["param"] is None or isinstance(err["param"], str)
    return err


# ---- errors the gateway answers itself ---------------------------------------------------------------------
def test_missing_key_is_authentication_error_with_null_code(env: Env) -> None:
    with pytest.raises(openai.AuthenticationError) as e:
        client(env).chat.completions.create(
            model="gpt-4o-mini", messages=MESSAGES, extra_headers={"Authorization": openai.Omit()}
        )
    assert e.value.status_code == 401 and e.value.code is None
    assert "didn't provide an API key" in e.value.message
    err = assert_openai_error(
        post(env, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES}, None), 401, None
    )
    assert err["type"] == "invalid_request_error"


def test_wrong_key_is_authentication_error_invalid_api_key(env: Env) -> None:
    with pytest.raises(openai.AuthenticationError) as e:
        client(env, "sk-wrong-key-123").chat.completions.create(model="gpt-4o-mini", messages=MESSAGES)
    assert e.value.status_code == 401 and e.value.code == "invalid_api_key"
    assert "sk-wrong-key-123" not in e.value.message  # masked
    assert_openai_error(post(env, "/v1/embeddings", {"model": "x", "input": "x"}, "sk-nope"), 401, "invalid_api_key")


@pytest.mark.parametrize(
    ("key", "model"), [("sk-t1", "gpt-9-ultra"), ("sk-t2", "gpt-4o")], ids=["unknown", "not-allowed"]
)
def test_unknown_or_forbidden_model_is_not_found(env: Env, key: str, model: str) -> None:
    with pytest.raises(openai.NotFoundError) as e:
        client(env, key).chat.completions.create(model=model, messages=MESSAGES)
    assert e.value.status_code == 404 and e.value.code == "model_not_found"
    assert model in e.value.message
    assert_openai_error(post(env, "/v1/responses", {"model": model, "input": "x"}, key), 404, "model_not_found")


@pytest.mark.parametrize("raw", [b"{not json", b"", b'{"model": "gpt-4o-mini", "messages": [}'])
def test_malformed_json_is_400_invalid_json(env: Env, raw: bytes) -> None:
    err = assert_openai_error(post(env, "/v1/chat/completions", raw), 400, "invalid_json")
    assert err["type"] == "invalid_request_error"


def test_missing_required_fields_are_bad_request(env: Env) -> None:
    with pytest.raises(openai.BadRequestError) as e:
        client(env).chat.completions.create(model="gpt-4o-mini", messages=openai.NOT_GIVEN)  # type: ignore[call-overload]
    assert e.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as e:
        client(env).chat.completions.create(model=openai.NOT_GIVEN, messages=MESSAGES)  # type: ignore[call-overload]
    assert e.value.param == "model"
    with pytest.raises(openai.BadRequestError) as e:
        client(env).embeddings.create(model="text-embedding-3-small", input=openai.NOT_GIVEN)  # type: ignore[arg-type]
    assert e.value.param == "input"
    err = assert_openai_error(post(env, "/v1/completions", {"model": "gpt-4o-mini"}), 400, None)
    assert err["param"] == "prompt"


def test_body_over_max_body_bytes_is_413(env: Env) -> None:
    big: list[ChatCompletionMessageParam] = [{"role": "user", "content": "x" * (MAX_BODY + 100)}]
    with pytest.raises(openai.APIStatusError) as e:
        client(env).chat.completions.create(model="gpt-4o-mini", messages=big)
    assert e.value.status_code == 413 and e.value.code == "request_too_large"
    assert_openai_error(
        post(env, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": big}), 413, "request_too_large"
    )
    # just under the limit is served
    ok = client(env).chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "x" * 1000}])
    assert ok.usage is not None


def test_wrong_method_and_unknown_url(env: Env) -> None:
    # (GET /v1/chat/completions lists stored completions: tests/test_stateful_endpoints.py)
    resp = httpx.get(env.gw.url + "/v1/embeddings", headers={"authorization": "Bearer sk-t1"})
    assert_openai_error(resp, 405, "method_not_allowed")
    assert_openai_error(httpx.get(env.gw.url + "/v1/nothing-here"), 404, "unknown_url")


# ---- errors from the upstream ------------------------------------------------------------------------------
SDK_ERRORS = {400: openai.BadRequestError, 429: openai.RateLimitError, 500: openai.InternalServerError,
              503: openai.InternalServerError}  # fmt: skip
EXPECTED_CODE = {("openai", 429): "rate_limit_exceeded"}  # every other shape/status carries no string code


@pytest.mark.parametrize("shape", ["openai", "vllm", "sglang", "anthropic", "text"])
@pytest.mark.parametrize("status", [400, 429, 500, 503])
def test_upstream_errors_keep_their_status_and_arrive_openai_shaped(env: Env, shape: str, status: int) -> None:
    mock = {"mock": {"status": status, "error_shape": shape}}
    with pytest.raises(SDK_ERRORS[status]) as e:
        client(env).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, extra_body=mock)
    assert e.value.status_code == status
    assert e.value.code == EXPECTED_CODE.get((shape, status))
    assert f"mock: injected HTTP {status}" in e.value.message
    err = assert_openai_error(
        post(env, "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": MESSAGES, **mock}),
        status,
        EXPECTED_CODE.get((shape, status)),
    )
    assert err["message"] == f"mock: injected HTTP {status}"
    if shape == "anthropic" and status == 429:
        assert err["type"] == "rate_limit_error"
    if status >= 500 and shape in ("openai", "text"):
        assert err["type"] == "server_error"


def test_upstream_timeout_is_504(env: Env) -> None:
    with pytest.raises(openai.InternalServerError) as e:
        client(env).chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, extra_body={"mock": {"delay_s": 2}})
    assert e.value.status_code == 504 and e.value.code == "upstream_timeout"
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True, "mock": {"delay_s": 2}}
    assert_openai_error(post(env, "/v1/chat/completions", body), 504, "upstream_timeout")


def test_connection_failure_is_502(env: Env) -> None:
    with pytest.raises(openai.InternalServerError) as e:
        client(env).chat.completions.create(model="gpt-4.1-mini", messages=MESSAGES)
    assert e.value.status_code == 502 and e.value.code == "upstream_unreachable"
    assert_openai_error(
        post(env, "/v1/responses", {"model": "gpt-4.1-mini", "input": "x"}), 502, "upstream_unreachable"
    )


# ---- errors after a stream started: in-band --------------------------------------------------------------
def test_upstream_in_band_error_reaches_the_sdk(env: Env) -> None:
    stream = client(env).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_body={"mock": {"error_after": 3}}
    )
    seen: list[str] = []
    with pytest.raises(openai.APIError) as e:
        for chunk in stream:
            seen.append(chunk.choices[0].delta.content or "")
    assert "".join(seen) == "Lorem ipsum dolor"
    assert "injected stream error" in e.value.message


def test_responses_in_band_error_event_is_yielded(env: Env) -> None:
    events = list(
        client(env).responses.create(
            model="gpt-4o-mini", input="hi", stream=True, extra_body={"mock": {"error_after": 2}}
        )
    )
    assert events[-1].type == "error"
    assert events[-1].code == "server_error"


@pytest.mark.parametrize("use_usage", [False, True])
def test_stream_cut_by_the_upstream_becomes_an_in_band_error(env: Env, use_usage: bool) -> None:
    extra: Any = {"stream_options": {"include_usage": True}} if use_usage else {}
    stream = client(env).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_body={"mock": {"cut_after": 3}}, **extra
    )
    seen: list[str] = []
    with pytest.raises(openai.APIError) as e:
        for chunk in stream:
            seen.append(chunk.choices[0].delta.content or "")
    assert "".join(seen) == "Lorem ipsum dolor"
    assert e.value.code == "upstream_unreachable"

    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True, "mock": {"cut_after": 3}, **extra}
    resp = post(env, "/v1/chat/completions", body)
    assert resp.status_code == 200  # already started: the status cannot change
    last = resp.content.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    assert last.startswith(b"data: ")
    err = json.loads(last[len(b"data: ") :])["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["code"] == "upstream_unreachable"
    assert b"[DONE]" not in resp.content


def test_upstream_stalling_mid_stream_becomes_an_in_band_timeout(env: Env) -> None:
    # the first content chunk comes at once, the next only after 0.8 s: past upstream_timeout_s (0.5 s)
    stream = client(env).chat.completions.create(
        model="gpt-4o-mini", messages=MESSAGES, stream=True, extra_body={"mock": {"tpot_s": 0.8, "output_tokens": 3}}
    )
    seen: list[str] = []
    with pytest.raises(openai.APIError) as e:
        for chunk in stream:
            seen.append(chunk.choices[0].delta.content or "")
    assert "".join(seen) == "Lorem"
    assert e.value.code == "upstream_timeout"


def test_responses_stream_cut_becomes_an_error_event(env: Env) -> None:
    with pytest.raises(openai.APIError) as e:
        list(
            client(env).responses.create(
                model="gpt-4o-mini", input="hi", stream=True, extra_body={"mock": {"cut_after": 2}}
            )
        )
    assert e.value.code == "upstream_unreachable"
    resp = post(env, "/v1/responses", {"model": "gpt-4o-mini", "input": "hi", "stream": True, "mock": {"cut_after": 2}})
    last = resp.content.rstrip(b"\n").rsplit(b"\n\n", 1)[-1]
    event, data = last.split(b"\n", 1)
    assert event == b"event: error"
    assert set(json.loads(data[len(b"data: ") :])["error"]) == {"message", "type", "param", "code"}

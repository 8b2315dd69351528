"""parse(): the governed fields read, the rest untouched; the raw bytes kept until something is patched."""

from __future__ import annotations

import orjson
import pytest

from proxy.errors import InvalidJSON, InvalidRequest
from proxy.parse import CHAT, COMPLETIONS, EMBEDDINGS, ENDPOINTS, RESPONSES, Endpoint, parse

RAW = b'{ "model" : "gpt-4o-mini",\n  "messages": [{"role":"user","content":"h\\u00e9"}], "x_extra": {"a": [1, 2.50]} }'


def test_endpoints_map_paths_to_upstream_paths() -> None:
    assert {p: e.path for p, e in ENDPOINTS.items()} == {
        "/v1/chat/completions": "/chat/completions",
        "/v1/completions": "/completions",
        "/v1/embeddings": "/embeddings",
        "/v1/responses": "/responses",
    }
    assert not EMBEDDINGS.has_output and EMBEDDINGS.cap_fields == ()
    assert COMPLETIONS.default_cap == 16


def test_unpatched_body_is_the_clients_exact_bytes() -> None:
    req = parse(CHAT, RAW)
    assert req.model == "gpt-4o-mini"
    assert not req.stream and not req.wants_usage and req.requested_cap is None
    assert req.body_bytes() is RAW
    assert req.body["x_extra"] == {"a": [1, 2.5]}


def test_patched_body_changes_only_the_patched_field() -> None:
    req = parse(CHAT, RAW)
    req.set("max_completion_tokens", 5)
    out = orjson.loads(req.body_bytes())
    assert out == {**orjson.loads(RAW), "max_completion_tokens": 5}
    assert req.patched


@pytest.mark.parametrize("raw", [b"{not json", b"", b'{"model": "m",}', b"\xff\xfe"])
def test_malformed_json_is_invalid_json(raw: bytes) -> None:
    with pytest.raises(InvalidJSON) as e:
        parse(CHAT, raw)
    assert (e.value.status, e.value.code, e.value.type) == (400, "invalid_json", "invalid_request_error")
    assert set(e.value.body()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("raw", [b"[]", b'"text"', b"3", b"null"])
def test_json_that_is_not_an_object_is_invalid_json(raw: bytes) -> None:
    with pytest.raises(InvalidJSON):
        parse(CHAT, raw)


@pytest.mark.parametrize("model", [None, "", 3, ["gpt-4o"]])
def test_model_must_be_a_non_empty_string(model: object) -> None:
    body = {"messages": [{"role": "user", "content": "x"}]}
    if model is not None:
        body["model"] = model  # type: ignore[assignment]
    with pytest.raises(InvalidRequest) as e:
        parse(CHAT, orjson.dumps(body))
    assert e.value.param == "model" and e.value.status == 400


@pytest.mark.parametrize(
    ("endpoint", "field"),
    [(CHAT, "messages"), (COMPLETIONS, "prompt"), (EMBEDDINGS, "input"), (RESPONSES, "input")],
)
def test_the_prompt_field_is_required(endpoint: Endpoint, field: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        parse(endpoint, b'{"model": "m"}')
    assert e.value.param == field
    assert field in e.value.message


@pytest.mark.parametrize("messages", [[], "hello", {"role": "user"}, ["hello"], [{"role": "user"}, 3]])
def test_chat_messages_must_be_a_non_empty_array_of_objects(messages: object) -> None:
    with pytest.raises(InvalidRequest) as e:
        parse(CHAT, orjson.dumps({"model": "m", "messages": messages}))
    assert e.value.param == "messages"


def test_stream_is_true_only_for_json_true() -> None:
    base = {"model": "m", "prompt": "x"}
    assert parse(COMPLETIONS, orjson.dumps({**base, "stream": True})).stream
    for not_true in ("true", 1, None, False):
        assert not parse(COMPLETIONS, orjson.dumps({**base, "stream": not_true})).stream


def test_stream_options_and_wants_usage() -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
    assert parse(CHAT, orjson.dumps({**base, "stream_options": {"include_usage": True}})).wants_usage
    assert not parse(CHAT, orjson.dumps({**base, "stream_options": {"include_usage": False}})).wants_usage
    assert not parse(CHAT, orjson.dumps({**base, "stream_options": {}})).wants_usage
    assert not parse(CHAT, orjson.dumps(base)).wants_usage
    with pytest.raises(InvalidRequest) as e:
        parse(CHAT, orjson.dumps({**base, "stream_options": ["include_usage"]}))
    assert e.value.param == "stream_options"
    # only allowed with stream: true (OpenAI answers 400), except on the Responses API
    with pytest.raises(InvalidRequest) as e:
        parse(CHAT, orjson.dumps({**base, "stream": False, "stream_options": {"include_usage": True}}))
    assert e.value.param == "stream_options"
    req = parse(RESPONSES, orjson.dumps({"model": "m", "input": "x", "stream_options": {"include_obfuscation": False}}))
    assert not req.stream


def test_requested_cap_prefers_max_completion_tokens() -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    assert parse(CHAT, orjson.dumps({**base, "max_tokens": 50})).requested_cap == 50
    assert parse(CHAT, orjson.dumps({**base, "max_tokens": 50, "max_completion_tokens": 20})).requested_cap == 20
    assert parse(CHAT, orjson.dumps({**base, "max_completion_tokens": None, "max_tokens": 7})).requested_cap == 7
    assert parse(RESPONSES, b'{"model": "m", "input": "x", "max_output_tokens": 0}').requested_cap == 0
    assert parse(EMBEDDINGS, b'{"model": "m", "input": "x", "max_tokens": 5}').requested_cap is None


@pytest.mark.parametrize("value", [-1, 1.5, True, "10", [1]])
def test_caps_must_be_non_negative_integers(value: object) -> None:
    with pytest.raises(InvalidRequest) as e:
        parse(COMPLETIONS, orjson.dumps({"model": "m", "prompt": "x", "max_tokens": value}))
    assert e.value.param == "max_tokens"

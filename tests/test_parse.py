"""Endpoint.parse() (its protocol's parse): the governed fields read, the rest untouched; the raw bytes kept
until something is patched."""

from __future__ import annotations

import orjson
import pytest

from proxy.errors import InvalidJSON, InvalidRequest
from proxy.parse import Endpoint
from proxy.protocols import ENDPOINTS
from proxy.protocols.openai_chat import CHAT
from proxy.protocols.openai_completions import COMPLETIONS
from proxy.protocols.openai_embeddings import EMBEDDINGS
from proxy.protocols.openai_responses import COMPACT, RESPONSES

RAW = b'{ "model" : "gpt-4o-mini",\n  "messages": [{"role":"user","content":"h\\u00e9"}], "x_extra": {"a": [1, 2.50]} }'


def test_endpoints_map_paths_to_upstream_paths() -> None:
    assert {p: e.path for p, e in ENDPOINTS.items()} == {
        "/v1/chat/completions": "/chat/completions",
        "/v1/completions": "/completions",
        "/v1/embeddings": "/embeddings",
        "/v1/responses": "/responses",
        "/v1/responses/compact": "/responses/compact",
        "/v1/messages": "/messages",
    }
    assert not EMBEDDINGS.has_output and EMBEDDINGS.cap_fields == ()
    assert COMPLETIONS.default_cap == 16


def test_unpatched_body_is_the_clients_exact_bytes() -> None:
    req = CHAT.parse(RAW)
    assert req.model == "gpt-4o-mini"
    assert not req.stream and not req.wants_usage and req.requested_cap is None
    assert req.body_bytes() is RAW
    assert req.body["x_extra"] == {"a": [1, 2.5]}


def test_patched_body_changes_only_the_patched_field() -> None:
    req = CHAT.parse(RAW)
    req.set("max_completion_tokens", 5)
    out = orjson.loads(req.body_bytes())
    assert out == {**orjson.loads(RAW), "max_completion_tokens": 5}
    assert req.patched


@pytest.mark.parametrize("raw", [b"{not json", b"", b'{"model": "m",}', b"\xff\xfe"])
def test_malformed_json_is_invalid_json(raw: bytes) -> None:
    with pytest.raises(InvalidJSON) as e:
        CHAT.parse(raw)
    assert (e.value.status, e.value.code, e.value.type) == (400, "invalid_json", "invalid_request_error")
    assert set(e.value.body()["error"]) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("raw", [b"[]", b'"text"', b"3", b"null"])
def test_json_that_is_not_an_object_is_invalid_json(raw: bytes) -> None:
    with pytest.raises(InvalidJSON):
        CHAT.parse(raw)


@pytest.mark.parametrize("model", [None, "", 3, ["gpt-4o"]])
def test_model_must_be_a_non_empty_string(model: object) -> None:
    body = {"messages": [{"role": "user", "content": "x"}]}
    if model is not None:
        body["model"] = model  # type: ignore[assignment]
    with pytest.raises(InvalidRequest) as e:
        CHAT.parse(orjson.dumps(body))
    assert e.value.param == "model" and e.value.status == 400
    assert "routes and prices" in e.value.message  # why quotagate itself needs it


def test_a_body_that_is_not_an_object_says_what_it_got() -> None:
    with pytest.raises(InvalidJSON, match="must be a JSON object, but got an array"):
        CHAT.parse(b"[1]")


# Validation is the provider's: what quotagate does not need to govern is forwarded as it came (issue 8).
# These bodies used to be refused here; the provider now decides.
@pytest.mark.parametrize("endpoint", [CHAT, COMPLETIONS, EMBEDDINGS, RESPONSES])
def test_a_missing_prompt_field_is_forwarded_and_marked_unseen(endpoint: Endpoint) -> None:
    raw = b'{"model": "m"}'
    req = endpoint.parse(raw)
    assert req.unseen_input and req.body_bytes() is raw


@pytest.mark.parametrize("messages", [[], "hello", {"role": "user"}, ["hello"], [{"role": "user"}, 3]])
def test_odd_chat_messages_are_forwarded_for_the_provider_to_judge(messages: object) -> None:
    raw = orjson.dumps({"model": "m", "messages": messages})
    req = CHAT.parse(raw)
    assert req.body_bytes() is raw and not req.unseen_input


@pytest.mark.parametrize(
    "extra",
    [{"previous_response_id": "resp_1"}, {"conversation": "conv_1"}, {"prompt": {"id": "pmpt_1"}}],
)
def test_responses_with_stored_context_are_unseen_input(extra: dict[str, object]) -> None:
    with_input = RESPONSES.parse(orjson.dumps({"model": "m", "input": "and then?", **extra}))
    without = RESPONSES.parse(orjson.dumps({"model": "m", **extra}))
    assert with_input.unseen_input and without.unseen_input
    assert not RESPONSES.parse(b'{"model": "m", "input": "x"}').unseen_input
    # `prompt` is only stored context on the Responses API; on completions it is the prompt itself
    assert not COMPLETIONS.parse(b'{"model": "m", "prompt": "x"}').unseen_input
    assert COMPACT.parse(b'{"model": "m", "input": "x", "previous_response_id": "resp_1"}').unseen_input
    assert not COMPACT.parse(b'{"model": "m", "input": "x"}').unseen_input


def test_stream_is_true_only_for_json_true() -> None:
    base = {"model": "m", "prompt": "x"}
    assert COMPLETIONS.parse(orjson.dumps({**base, "stream": True})).stream
    for not_true in ("true", 1, None, False):
        assert not COMPLETIONS.parse(orjson.dumps({**base, "stream": not_true})).stream


def test_stream_options_and_wants_usage() -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "x"}], "stream": True}
    assert CHAT.parse(orjson.dumps({**base, "stream_options": {"include_usage": True}})).wants_usage
    assert not CHAT.parse(orjson.dumps({**base, "stream_options": {"include_usage": False}})).wants_usage
    assert not CHAT.parse(orjson.dumps({**base, "stream_options": {}})).wants_usage
    assert not CHAT.parse(orjson.dumps(base)).wants_usage
    # a stream's stream_options must take include_usage (quotagate meters the stream with it)
    for endpoint, prompt in ((CHAT, "messages"), (COMPLETIONS, "prompt")):
        with pytest.raises(InvalidRequest) as e:
            endpoint.parse(orjson.dumps({**base, prompt: "x", "stream_options": ["include_usage"]}))
        assert e.value.param == "stream_options" and "include_usage" in e.value.message
    # Without a stream, quotagate patches nothing: forwarded as it came, whatever the provider makes of it
    # (the official SDK's own tests send stream_options with stream: false).
    for options in ({"include_usage": True}, ["include_usage"], 3):
        raw = orjson.dumps({**base, "stream": False, "stream_options": options})
        req = CHAT.parse(raw)
        assert req.body_bytes() is raw and not req.stream and not req.wants_usage
    req = RESPONSES.parse(orjson.dumps({"model": "m", "input": "x", "stream_options": {"include_obfuscation": False}}))
    assert not req.stream
    req = RESPONSES.parse(orjson.dumps({"model": "m", "input": "x", "stream": True, "stream_options": 3}))
    assert req.stream  # the Responses API stream reports usage anyway: nothing to patch


def test_requested_cap_prefers_max_completion_tokens() -> None:
    base = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    assert CHAT.parse(orjson.dumps({**base, "max_tokens": 50})).requested_cap == 50
    assert CHAT.parse(orjson.dumps({**base, "max_tokens": 50, "max_completion_tokens": 20})).requested_cap == 20
    assert CHAT.parse(orjson.dumps({**base, "max_completion_tokens": None, "max_tokens": 7})).requested_cap == 7
    assert RESPONSES.parse(b'{"model": "m", "input": "x", "max_output_tokens": 0}').requested_cap == 0
    assert EMBEDDINGS.parse(b'{"model": "m", "input": "x", "max_tokens": 5}').requested_cap is None


@pytest.mark.parametrize(
    ("value", "got"),
    [(-1, "the number -1"), (1.5, "a decimal number"), (True, "a boolean"), ("10", "a string"), ([1], "an array")],
)
def test_caps_must_be_non_negative_integers(value: object, got: str) -> None:
    """An output cap that is not an integer cannot be reserved: refused, and the message says why."""
    with pytest.raises(InvalidRequest) as e:
        COMPLETIONS.parse(orjson.dumps({"model": "m", "prompt": "x", "max_tokens": value}))
    assert e.value.param == "max_tokens"
    assert f"'max_tokens': expected a non-negative integer, but got {got} instead" in e.value.message
    assert "reserves the output cap" in e.value.message

"""The protocol adapters: what each wire protocol does with the governed fields, usage and errors (no I/O)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from proxy.count import Counter
from proxy.errors import UpstreamTimeout
from proxy.parse import Endpoint
from proxy.protocols import ENDPOINTS, Adapter
from proxy.protocols.anthropic_messages import MESSAGES as ANTHROPIC_MESSAGES
from proxy.protocols.openai_chat import CHAT
from proxy.protocols.openai_completions import COMPLETIONS
from proxy.protocols.openai_embeddings import EMBEDDINGS
from proxy.protocols.openai_responses import COMPACT, RESPONSES

MESSAGES = [{"role": "user", "content": "hi"}]
BODIES: dict[Endpoint, dict[str, Any]] = {
    CHAT: {"model": "m", "messages": MESSAGES},
    COMPLETIONS: {"model": "m", "prompt": "hi"},
    EMBEDDINGS: {"model": "m", "input": "hi"},
    RESPONSES: {"model": "m", "input": "hi"},
    COMPACT: {"model": "m", "input": "hi"},
    ANTHROPIC_MESSAGES: {"model": "m", "max_tokens": 5, "messages": MESSAGES},
}


def test_every_route_has_an_adapter_and_compaction_shares_the_responses_one() -> None:
    assert set(ENDPOINTS.values()) == set(BODIES)
    assert all(isinstance(e.protocol, Adapter) for e in ENDPOINTS.values())
    assert COMPACT.protocol is RESPONSES.protocol
    assert len({id(e.protocol) for e in ENDPOINTS.values()}) == 5  # one per wire protocol


@pytest.mark.parametrize("endpoint", list(BODIES))
def test_nothing_to_apply_leaves_the_clients_bytes(endpoint: Endpoint) -> None:
    raw = orjson.dumps({**BODIES[endpoint], "stream": True, "stream_options": {"include_usage": True}})
    req = endpoint.parse(raw)
    endpoint.protocol.apply(req, model=None, cap=None)
    assert req.body_bytes() is raw


def test_apply_writes_the_cap_into_the_fields_the_client_used_else_the_preferred_one() -> None:
    req = CHAT.parse(orjson.dumps({**BODIES[CHAT], "max_tokens": 900}))
    CHAT.protocol.apply(req, model="gpt-4o-2024-08-06", cap=100)
    assert orjson.loads(req.body_bytes()) == {**BODIES[CHAT], "max_tokens": 100, "model": "gpt-4o-2024-08-06"}
    req = CHAT.parse(orjson.dumps(BODIES[CHAT]))
    CHAT.protocol.apply(req, model=None, cap=100)
    assert req.body["max_completion_tokens"] == 100 and "max_tokens" not in req.body
    req = RESPONSES.parse(orjson.dumps(BODIES[RESPONSES]))
    RESPONSES.protocol.apply(req, model=None, cap=7)
    assert req.body["max_output_tokens"] == 7


@pytest.mark.parametrize(
    "endpoint", [e for e in BODIES if e is not ANTHROPIC_MESSAGES]
)  # its own: test_anthropic_units
def test_a_stream_asks_for_usage_only_where_the_protocol_needs_it(endpoint: Endpoint) -> None:
    req = endpoint.parse(orjson.dumps({**BODIES[endpoint], "stream": True, "stream_options": {"x": 1}}))
    endpoint.protocol.apply(req, model=None, cap=None)
    asks = endpoint in (CHAT, COMPLETIONS)
    assert (req.body["stream_options"] == {"x": 1, "include_usage": True}) is asks
    assert req.patched is asks
    usage_only = b'data: {"choices": [], "usage": {"prompt_tokens": 1, "completion_tokens": 2}}\n\n'
    tap = endpoint.protocol.tap(req)
    assert (tap.feed(usage_only) == b"") is asks  # the usage chunk the client did not ask for is dropped
    assert tap.usage is not None and tap.usage.output == 2


def test_what_the_provider_keeps() -> None:
    def stored(endpoint: Endpoint, **fields: object) -> bool:
        return endpoint.protocol.stored(endpoint.parse(orjson.dumps({**BODIES[endpoint], **fields})))

    assert (stored(CHAT), stored(CHAT, store=True)) == (False, True)
    assert (stored(RESPONSES), stored(RESPONSES, store=False)) == (True, False)
    assert (stored(COMPACT), stored(COMPACT, store=True)) == (False, True)
    assert not stored(COMPLETIONS, store=True) and not stored(EMBEDDINGS, store=True)


def test_errors_in_a_stream_take_the_protocols_shape() -> None:
    err = UpstreamTimeout("late")
    assert RESPONSES.protocol.stream_error(err).startswith(b"event: error\ndata: {")
    assert CHAT.protocol.stream_error(err).startswith(b"data: {")
    status, headers, body = CHAT.protocol.render(err)
    assert (status, headers["content-type"], orjson.loads(body)["error"]["code"]) == (
        504,
        "application/json",
        "upstream_timeout",
    )


async def test_count_delegates_to_the_counter_and_only_chat_has_turns_to_trim() -> None:
    counter = Counter()
    chat = CHAT.parse(orjson.dumps(BODIES[CHAT]))
    est = await CHAT.protocol.count(counter, chat, model="gpt-4o", encoding=None)
    assert est == counter.chat(MESSAGES, None, model="gpt-4o", encoding=None)
    assert CHAT.protocol.messages(chat) == MESSAGES
    assert CHAT.protocol.count_messages(counter, chat, [], model="gpt-4o", encoding=None).tokens == 3
    responses = RESPONSES.parse(orjson.dumps(BODIES[RESPONSES]))
    assert await RESPONSES.protocol.count(counter, responses, model="gpt-4o", encoding=None) == counter.responses(
        "hi", None, None, model="gpt-4o", encoding=None
    )
    for endpoint in (COMPLETIONS, EMBEDDINGS, RESPONSES):
        assert endpoint.protocol.messages(endpoint.parse(orjson.dumps(BODIES[endpoint]))) is None
    odd = CHAT.parse(b'{"model": "m", "messages": "hi"}')
    assert CHAT.protocol.messages(odd) is None  # only an array can be trimmed

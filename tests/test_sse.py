"""StreamTap: passes bytes through, reads usage, strips only the forced usage chunk; read_body for JSON."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from proxy.sse import StreamTap, body_output_text, read_body
from proxy.usage import Usage

USAGE = {
    "prompt_tokens": 12,
    "completion_tokens": 7,
    "total_tokens": 19,
    "prompt_tokens_details": {"cached_tokens": 4},
    "completion_tokens_details": {"reasoning_tokens": 2},
}


def chunk(delta: dict[str, Any], finish: str | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "id": "c1",
        "object": "chat.completion.chunk",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        **extra,
    }


def sse(*objs: Any, sep: bytes = b"\n") -> bytes:
    out = b""
    for o in objs:
        data = o if isinstance(o, bytes) else orjson.dumps(o)
        out += b"data: " + data + sep + sep
    return out


USAGE_CHUNK = {
    "id": "c1",
    "object": "chat.completion.chunk",
    "choices": [],
    "usage": USAGE,
    "system_fingerprint": "fp_x",
}
BODY = [
    chunk({"role": "assistant", "content": ""}, usage=None),
    chunk({"content": "Hello"}, usage=None),
    chunk({"content": " world"}, usage=None),
    chunk({}, "stop", usage=None),
]


def chat_stream(sep: bytes = b"\n") -> tuple[bytes, bytes]:
    """(full stream with the usage chunk, the same stream without it)."""
    full = sse(*BODY, USAGE_CHUNK, b"[DONE]", sep=sep)
    without = sse(*BODY, b"[DONE]", sep=sep)
    return full, without


def run(tap: StreamTap, pieces: list[bytes]) -> tuple[bytes, list[bytes]]:
    outs = [tap.feed(p) for p in pieces]
    outs.append(tap.finish())
    return b"".join(outs), outs


def splits(raw: bytes) -> list[list[bytes]]:
    """Every two-way split, plus one byte at a time."""
    ways = [[raw[:i], raw[i:]] for i in range(len(raw) + 1)]
    ways.append([raw[i : i + 1] for i in range(len(raw))])
    return ways


EXPECTED = Usage(input=12, cached_input=4, output=7, reasoning=2)


@pytest.mark.parametrize("sep", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_passthrough_returns_each_chunk_unchanged_and_reads_usage_at_any_split(sep: bytes) -> None:
    full, _ = chat_stream(sep)
    for pieces in splits(full):
        tap = StreamTap(strip_usage_chunk=False)
        out, outs = run(tap, pieces)
        assert outs[:-1] == pieces  # every chunk is passed on as it came, unbuffered
        assert outs[-1] == b""  # nothing sent twice at the end
        assert out == full
        assert tap.usage == EXPECTED
        assert tap.fingerprint == "fp_x"
        assert tap.saw_done


@pytest.mark.parametrize("sep", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_strip_mode_drops_only_the_usage_chunk_byte_exact_at_any_split(sep: bytes) -> None:
    full, without = chat_stream(sep)
    for pieces in splits(full):
        tap = StreamTap(strip_usage_chunk=True)
        out, _ = run(tap, pieces)
        assert out == without, pieces
        assert tap.usage == EXPECTED
        assert tap.saw_done
        assert b'"choices":[]' not in out


@pytest.mark.parametrize("sep", [b"\n", b"\r\n"], ids=["lf", "crlf"])
def test_strip_mode_passes_each_event_on_as_soon_as_it_is_complete(sep: bytes) -> None:
    first = sse(BODY[0], sep=sep)
    second = sse(BODY[1], sep=sep)
    tap = StreamTap(strip_usage_chunk=True)
    assert tap.feed(first[:10]) == b""  # incomplete: held
    assert tap.feed(first[10:] + second[:5]) == first  # complete event released at once, not at the end
    assert tap.feed(second[5:]) == second  # the held start is released with the rest of its event


def test_strip_mode_keeps_usage_on_chunks_that_have_choices() -> None:
    # vLLM's continuous_usage_stats puts usage on content chunks: those are the client's content, kept.
    running = chunk({"content": "x"}, usage={"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4})
    raw = sse(running, b"[DONE]")
    tap = StreamTap(strip_usage_chunk=True)
    out, _ = run(tap, [raw])
    assert out == raw
    assert tap.usage == Usage(input=3, output=1)


def test_null_usage_fields_are_not_usage() -> None:
    raw = sse(*BODY, b"[DONE]")
    tap = StreamTap(strip_usage_chunk=True)
    out, _ = run(tap, [raw])
    assert out == raw
    assert tap.usage is None
    assert tap.output_text() == "Hello world"


def test_responses_completed_event_carries_the_usage_and_is_never_stripped() -> None:
    usage = {
        "input_tokens": 20,
        "input_tokens_details": {"cached_tokens": 5},
        "output_tokens": 9,
        "output_tokens_details": {"reasoning_tokens": 3},
        "total_tokens": 29,
    }
    events: list[dict[str, Any]] = [
        {"type": "response.created", "response": {"id": "r", "usage": None}},
        {"type": "response.output_text.delta", "delta": "Lorem"},
        {"type": "response.output_text.delta", "delta": " ipsum"},
        {"type": "response.completed", "response": {"id": "r", "usage": usage}},
    ]
    raw = b"".join(b"event: " + e["type"].encode() + b"\r\ndata: " + orjson.dumps(e) + b"\r\n\r\n" for e in events)
    for strip in (False, True):
        for pieces in splits(raw)[::7]:
            tap = StreamTap(strip_usage_chunk=strip)
            out, _ = run(tap, pieces)
            assert out == raw
            assert tap.usage == Usage(input=20, cached_input=5, output=9, reasoning=3)
            assert tap.output_text() == "Lorem ipsum"
            assert not tap.saw_done


def test_unterminated_last_event_is_read_and_sent_once() -> None:
    raw = sse(BODY[1]) + b"data: " + orjson.dumps(USAGE_CHUNK)  # no blank line at the end
    tap = StreamTap(strip_usage_chunk=False)
    out, outs = run(tap, [raw])
    assert out == raw and outs[-1] == b""
    assert tap.usage == EXPECTED

    tail_only = sse(BODY[1]) + b"data: " + orjson.dumps(BODY[2])
    tap = StreamTap(strip_usage_chunk=True)
    out, outs = run(tap, [tail_only])
    assert out == tail_only  # the held, unterminated event is released by finish()
    assert outs[-1] == b"data: " + orjson.dumps(BODY[2])

    tap = StreamTap(strip_usage_chunk=True)
    out, _ = run(tap, [raw])
    assert out == sse(BODY[1])  # an unterminated usage-only chunk is still stripped
    assert tap.usage == EXPECTED


def test_data_lines_without_space_multiline_data_and_comments() -> None:
    obj = chunk({"content": "abc"})
    raw = b": keep-alive\n\n" + b"data:" + orjson.dumps(obj) + b"\n\n" + b"data: [DONE]\n\n"
    tap = StreamTap(strip_usage_chunk=True)
    out, _ = run(tap, [raw])
    assert out == raw
    assert tap.output_text() == "abc"
    assert tap.saw_done
    # one JSON document spread over two data: lines is joined with a newline, as the SSE spec says
    text = orjson.dumps(USAGE_CHUNK).decode()
    half = text.index('"usage"')
    split_event = f"data: {text[:half]}\ndata: {text[half:]}\n\n".encode()
    tap = StreamTap(strip_usage_chunk=True)
    out, _ = run(tap, [split_event])
    assert out == b""
    assert tap.usage == EXPECTED


def test_output_text_collects_tool_calls_reasoning_and_completions_text() -> None:
    tool = chunk({"tool_calls": [{"index": 0, "function": {"name": "get_weather", "arguments": '{"city"'}}]})
    args = chunk({"tool_calls": [{"index": 0, "function": {"arguments": ':"Paris"}'}}]})
    reasoning = chunk({"reasoning_content": "think "})
    completion = {"id": "x", "object": "text_completion", "choices": [{"text": "done", "index": 0}]}
    tap = StreamTap(strip_usage_chunk=False)
    run(tap, [sse(reasoning, tool, args, completion, b"not json", b"[DONE]")])
    assert tap.output_text() == 'think get_weather{"city":"Paris"}done'


def test_read_body_and_output_text_of_json_responses() -> None:
    body = {
        "id": "x",
        "system_fingerprint": "fp_1",
        "choices": [{"message": {"content": "hi", "tool_calls": [{"function": {"name": "f", "arguments": "{}"}}]}}],
        "usage": USAGE,
    }
    usage, fp, obj = read_body(orjson.dumps(body))
    assert usage == EXPECTED and fp == "fp_1" and obj == body
    assert body_output_text(obj) == "hif{}"
    responses = {"output": [{"type": "message", "content": [{"type": "output_text", "text": "Lorem"}]},
                            {"type": "function_call", "arguments": '{"a":1}'}]}  # fmt: skip
    assert body_output_text(responses) == 'Lorem{"a":1}'
    assert read_body(b"not json") == (Usage(), None, None)
    assert read_body(b"[1,2]") == (Usage(), None, None)
    emb, _, _ = read_body(b'{"object":"list","usage":{"prompt_tokens":5,"total_tokens":5}}')
    assert emb == Usage(input=5, output=0)

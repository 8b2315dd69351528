"""The usage rules of proxy/usage.py's table, one test vector each (issue 11.5): the variants providers
send in the wild, normalised to quotagate's usage (cached input part of input, reasoning part of output)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from proxy.sse import StreamTap, read_body
from proxy.usage import Usage, from_anthropic, from_openai


@pytest.mark.parametrize(
    ("name", "raw", "expected"),
    [
        (
            "openai chat",
            {
                "prompt_tokens": 100,
                "completion_tokens": 40,
                "total_tokens": 140,
                "prompt_tokens_details": {"cached_tokens": 64},
                "completion_tokens_details": {"reasoning_tokens": 12},
            },
            Usage(100, 64, 40, 12),
        ),
        (
            "responses",
            {
                "input_tokens": 100,
                "input_tokens_details": {"cached_tokens": 10},
                "output_tokens": 30,
                "output_tokens_details": {"reasoning_tokens": 5},
                "total_tokens": 130,
            },
            Usage(100, 10, 30, 5),
        ),
        ("embeddings", {"prompt_tokens": 8, "total_tokens": 8}, Usage(8, None, 0, None)),
        (
            "cached_tokens null",
            {"prompt_tokens": 5, "completion_tokens": 1, "prompt_tokens_details": {"cached_tokens": None}},
            Usage(5, None, 1, None),
        ),
        (
            "details null",
            {"prompt_tokens": 5, "completion_tokens": 1, "prompt_tokens_details": None},
            Usage(5, None, 1, None),
        ),
        (
            "details absent (vLLM, Ollama)",
            {"prompt_tokens": 5, "completion_tokens": 1, "total_tokens": 6},
            Usage(5, None, 1, None),
        ),
        (
            "sglang top-level reasoning",
            {"prompt_tokens": 5, "completion_tokens": 9, "reasoning_tokens": 4},
            Usage(5, None, 9, 4),
        ),
        (
            "gemini thinking outside completion_tokens",
            {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 40},
            Usage(10, None, 30, 25),
        ),
        (
            "gemini thinking reported beside, outside completion_tokens",
            {
                "prompt_tokens": 10,
                "completion_tokens": 5,
                "total_tokens": 40,
                "completion_tokens_details": {"reasoning_tokens": 25},
            },
            Usage(10, None, 30, 25),
        ),
    ],
)
def test_openai_shaped_usage_variants(name: str, raw: dict[str, Any], expected: Usage) -> None:
    assert from_openai(raw) == expected, name


def test_anthropic_usage_sums_the_cache_into_input() -> None:
    raw = {"input_tokens": 3, "cache_read_input_tokens": 10, "cache_creation_input_tokens": 7, "output_tokens": 2}
    assert from_anthropic(raw) == Usage(20, 10, 2, None, 7, 0)


def _chunk(obj: dict[str, Any]) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def test_usage_in_the_last_content_chunk_is_read_and_passed_on() -> None:
    tap = StreamTap(strip_usage_chunk=True)
    last = _chunk(
        {
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10},
        }
    )
    stream = _chunk({"choices": [{"index": 0, "delta": {"content": "hi"}}]}) + last + b"data: [DONE]\n\n"
    out = tap.feed(stream) + tap.finish()
    assert out == stream  # it has choices: not the usage-only chunk, so the client gets it as sent
    assert tap.usage == Usage(7, None, 3, None)


def test_a_provider_that_ignores_include_usage_leaves_the_output_to_count() -> None:
    tap = StreamTap(strip_usage_chunk=True)
    stream = (
        b"".join(_chunk({"choices": [{"index": 0, "delta": {"content": w}}]}) for w in ("one", " two"))
        + b"data: [DONE]\n\n"
    )
    assert tap.feed(stream) + tap.finish() == stream
    assert tap.usage is None and tap.output_text() == "one two"


def test_a_body_without_usage_is_unknown_not_zero() -> None:
    usage, _, answer = read_body(orjson.dumps({"choices": [{"message": {"content": "x"}}]}))
    assert usage == Usage() and not usage.known and answer is not None

from __future__ import annotations

import asyncio
import base64
import struct
import zlib
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy import count
from proxy.count import Counter, Estimate, image_size, patch_image_tokens, tile_image_tokens
from proxy.count import counter as counting
from proxy.encodings import get_encoding

# openai/openai-cookbook examples/How_to_count_tokens_with_tiktoken.ipynb, section 6 "example_messages"
COOKBOOK_MESSAGES: list[dict[str, Any]] = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate jargon "
        "into plain English.",
    },
    {"role": "system", "name": "example_user", "content": "New synergies will help drive top-line growth."},
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on opportunities for "
        "increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client deliverable.",
    },
]

# Same notebook, section 7 (tools)
WEATHER_TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_current_weather",
            "description": "Get the current weather in a given location",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {
                        "type": "string",
                        "description": "The city and state, e.g. San Francisco, CA",
                    },
                    "unit": {
                        "type": "string",
                        "description": "The unit of temperature to return",
                        "enum": ["celsius", "fahrenheit"],
                    },
                },
                "required": ["location"],
            },
        },
    }
]
WEATHER_MESSAGES: list[dict[str, Any]] = [
    {
        "role": "system",
        "content": "You are a helpful assistant that can answer to questions about the weather.",
    },
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]


def n(text: str, enc: str = "o200k_base") -> int:
    return len(get_encoding(enc).encode(text, disallowed_special=()))


def cookbook_reference(messages: list[dict[str, Any]], enc: str) -> int:
    """num_tokens_from_messages, written out again straight on tiktoken."""
    total = 3
    for m in messages:
        total += 3 + sum(n(v, enc) + (1 if k == "name" else 0) for k, v in m.items())
    return total


def chat(messages: list[Any], tools: list[Any] | None = None, model: str = "gpt-4o") -> Estimate:
    return Counter().chat(messages, tools, model=model, encoding=None)


def png(width: int, height: int) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return b"\x89PNG\r\n\x1a\n" + struct.pack(">I", 13) + chunk + struct.pack(">I", zlib.crc32(chunk))


def jpeg(width: int, height: int) -> bytes:
    app0 = b"\xff\xe0" + struct.pack(">H", 16) + b"JFIF\x00\x01\x01\x00\x00\x01\x00\x01\x00\x00"
    exif = b"\xff\xe1" + struct.pack(">H", 2 + 5000) + b"\x00" * 5000  # pushes SOF past the first chunk
    sof = b"\xff\xc0" + struct.pack(">HBHHB", 11, 8, height, width, 1) + b"\x01\x11\x00"
    return b"\xff\xd8" + app0 + exif + sof + b"\xff\xd9"


def data_url(raw: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(raw).decode()}"


def image_message(url: str, detail: str | None = "high") -> dict[str, Any]:
    image: dict[str, Any] = {"url": url}
    if detail:
        image["detail"] = detail
    return {"role": "user", "content": [{"type": "image_url", "image_url": image}]}


def image_tokens(url: str, detail: str | None = "high", model: str = "gpt-4o") -> tuple[int, bool]:
    est = chat([image_message(url, detail)], model=model)
    empty = chat([{"role": "user", "content": []}], model=model)
    return est.tokens - empty.tokens, est.exact


# -------------------------------------------------------------------------------------- cookbook vectors


@pytest.mark.parametrize(
    ("model", "enc", "expected"),
    [("gpt-4-0613", "cl100k_base", 129), ("gpt-4o-2024-08-06", "o200k_base", 124)],
)
def test_cookbook_chat_vectors(model: str, enc: str, expected: int) -> None:
    assert cookbook_reference(COOKBOOK_MESSAGES, enc) == expected  # tiktoken itself agrees
    est = chat(COOKBOOK_MESSAGES, model=model)
    assert est.tokens == expected
    assert est.exact
    last = COOKBOOK_MESSAGES[-1]
    assert est.parts == count.Parts(
        system=expected - (3 + n("user", enc) + n(last["content"], enc)) - 3,
        tools=0,
        history=0,
        new=3 + n("user", enc) + n(last["content"], enc) + 3,
    )


def test_configured_encoding_wins_over_model_name() -> None:
    est = Counter().chat(COOKBOOK_MESSAGES, None, model="my-azure-deployment", encoding="cl100k_base")
    assert (est.tokens, est.exact) == (129, True)


@pytest.mark.parametrize(
    ("model", "expected"), [("gpt-4o", 101), ("gpt-4o-mini", 101), ("gpt-4", 105), ("gpt-3.5-turbo", 105)]
)
def test_cookbook_tools_vectors(model: str, expected: int) -> None:
    est = chat(WEATHER_MESSAGES, WEATHER_TOOLS, model=model)
    assert est.tokens == expected
    assert est.exact
    assert est.parts.tools == expected - est.parts.system - est.parts.new
    assert est.parts.history == 0


def test_responses_shaped_function_tool_counts_like_chat_shape() -> None:
    flat = [{"type": "function", **WEATHER_TOOLS[0]["function"]}]
    est = Counter().responses(
        "What's the weather like in San Francisco?",
        "You are a helpful assistant that can answer to questions about the weather.",
        flat,
        model="gpt-4o",
        encoding=None,
    )
    assert (est.tokens, est.exact) == (101, True)


def test_nested_tool_schema_is_counted_but_inexact() -> None:
    tool = orjson.loads(orjson.dumps(WEATHER_TOOLS))
    tool[0]["function"]["parameters"]["properties"]["days"] = {
        "type": "array",
        "description": "Days",
        "items": {"type": "string"},
    }
    est = chat(WEATHER_MESSAGES, tool)
    assert est.tokens > 101
    assert not est.exact


def test_non_function_tool_is_estimated() -> None:
    est = Counter().responses("hi", None, [{"type": "web_search"}], model="gpt-4o", encoding=None)
    assert est.parts.tools > 0
    assert not est.exact


# -------------------------------------------------------------------------------------- messages


def test_name_costs_its_tokens_plus_one() -> None:
    base = chat([{"role": "user", "content": "hello"}])
    named = chat([{"role": "user", "name": "alice_smith", "content": "hello"}])
    assert named.tokens - base.tokens == n("alice_smith") + 1


def test_single_text_part_equals_string_content() -> None:
    text = "Summarise the quarterly numbers, please."
    as_string = chat([{"role": "user", "content": text}])
    as_parts = chat([{"role": "user", "content": [{"type": "text", "text": text}]}])
    assert as_parts == as_string


def test_tool_calls_and_tool_results_are_counted() -> None:
    args = '{"location": "Paris, France", "unit": "celsius"}'
    messages = [
        {"role": "user", "content": "Weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_current_weather", "arguments": args},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": '{"temp": 21}'},
    ]
    est = chat(messages)
    expected = (
        (3 + n("user") + n("Weather in Paris?"))
        + (3 + n("assistant") + n("get_current_weather") + n(args))
        + (3 + n("tool") + n('{"temp": 21}'))  # tool_call_id is not rendered
        + 3
    )
    assert (est.tokens, est.exact) == (expected, True)
    assert est.parts.new == est.tokens  # everything from the latest user turn on


def test_endoftext_in_user_text_does_not_raise() -> None:
    text = "before <|endoftext|> after <|im_start|>"
    est = chat([{"role": "user", "content": text}])
    assert est.tokens == 3 + n("user") + n(text) + 3
    assert n("<|endoftext|>") > 1  # counted as ordinary text, not as the special token
    assert Counter().text(text, encoding="o200k_base") == n(text)
    assert Counter().completion(text, model="gpt-4o", encoding=None).tokens == n(text)


def test_unknown_model_is_estimated_with_o200k() -> None:
    est = chat(COOKBOOK_MESSAGES, model="claude-sonnet-4")
    assert (est.tokens, est.exact) == (124, False)
    unbundled = Counter().chat(COOKBOOK_MESSAGES, None, model="x", encoding="p50k_base")
    assert (unbundled.tokens, unbundled.exact) == (124, False)


def test_parts_partition_a_conversation() -> None:
    messages = [
        {"role": "developer", "content": "Be brief."},
        {"role": "user", "content": "first question"},
        {"role": "assistant", "content": "first answer"},
        {"role": "system", "content": "late system note"},
        {"role": "user", "content": "second question"},
        {"role": "assistant", "content": "partial"},
    ]
    est = chat(messages, WEATHER_TOOLS)
    p = est.parts
    assert p.system == (3 + n("developer") + n("Be brief.")) + (3 + n("system") + n("late system note"))
    assert p.history == (3 + n("user") + n("first question")) + (3 + n("assistant") + n("first answer"))
    assert p.new == (3 + n("user") + n("second question")) + (3 + n("assistant") + n("partial")) + 3
    assert p.tools > 0
    assert est.tokens == p.system + p.tools + p.history + p.new
    assert count.count_chat_parts(Counter(), messages, WEATHER_TOOLS, model="gpt-4o", encoding=None) == p


def test_no_user_turn_means_everything_is_new() -> None:
    est = chat([{"role": "system", "content": "s"}, {"role": "assistant", "content": "a"}])
    assert est.parts.history == 0
    assert est.parts.new == 3 + n("assistant") + n("a") + 3


# -------------------------------------------------------------------------------------- images


def test_tile_formula_examples() -> None:
    assert tile_image_tokens(1024, 1024, "high", 85, 170) == 765
    assert tile_image_tokens(2048, 4096, "high", 85, 170) == 1105
    assert tile_image_tokens(4096, 2048, "auto", 85, 170) == 1105
    assert tile_image_tokens(512, 512, "high", 85, 170) == 255  # small images are not upscaled
    assert tile_image_tokens(4096, 4096, "low", 85, 170) == 85


def test_patch_formula_examples() -> None:
    assert patch_image_tokens(1024, 1024, 1.0) == 1024
    assert patch_image_tokens(1800, 2400, 1.0) == 1452  # vision guide: resized to 1056x1408
    assert patch_image_tokens(1800, 2400, 1.62) == 2353


@pytest.mark.parametrize(
    ("size", "detail", "expected"),
    [
        ((1024, 1024), "high", 765),
        ((2048, 4096), "high", 1105),
        ((2048, 4096), "low", 85),
        ((1024, 1024), None, 765),
    ],
)
def test_png_data_url_images(size: tuple[int, int], detail: str | None, expected: int) -> None:
    assert image_tokens(data_url(png(*size)), detail) == (expected, True)


def test_jpeg_data_url_with_sof_past_first_chunk() -> None:
    assert image_tokens(data_url(jpeg(2048, 4096), "image/jpeg")) == (1105, True)


@pytest.mark.parametrize(("model", "low"), [("gpt-4o-mini", 2833), ("o1", 75), ("o3", 75), ("gpt-4.1", 85)])
def test_low_detail_base_per_model(model: str, low: int) -> None:
    assert image_tokens(data_url(png(10, 10)), "low", model=model) == (low, True)


def test_remote_or_broken_image_assumes_1024_square_and_is_inexact() -> None:
    assert image_tokens("https://example.com/cat.png") == (765, False)
    assert image_tokens("data:image/png;base64,!!!notbase64") == (765, False)


def test_patch_model_images_are_estimates() -> None:
    tokens, exact = image_tokens(data_url(png(1024, 1024)), "low", model="gpt-4.1-mini")
    assert (tokens, exact) == (patch_image_tokens(1024, 1024, 1.62), False)


def test_responses_input_image() -> None:
    item = {
        "role": "user",
        "content": [{"type": "input_image", "image_url": data_url(png(1024, 1024)), "detail": "high"}],
    }
    est = Counter().responses([item], None, None, model="gpt-4o", encoding=None)
    assert (est.tokens, est.exact) == (3 + n("user") + 765 + 3, True)


def test_image_size_parsers() -> None:
    assert image_size(png(640, 480)) == (640, 480)
    assert image_size(jpeg(800, 600)) == (800, 600)
    assert image_size(b"GIF89a" + struct.pack("<HH", 320, 200) + b"\x00" * 8) == (320, 200)
    vp8x = b"RIFF\x00\x00\x00\x00WEBPVP8X" + b"\x00" * 8 + (999).to_bytes(3, "little") + (499).to_bytes(3, "little")
    assert image_size(vp8x) == (1000, 500)
    bits = (300 - 1) | ((150 - 1) << 14)
    vp8l = b"RIFF\x00\x00\x00\x00WEBPVP8L" + b"\x00" * 4 + b"\x2f" + bits.to_bytes(4, "little")
    assert image_size(vp8l) == (300, 150)
    vp8 = b"RIFF\x00\x00\x00\x00WEBPVP8 " + b"\x00" * 10 + struct.pack("<HH", 64, 48)
    assert image_size(vp8) == (64, 48)
    assert image_size(b"not an image at all") is None


def test_audio_and_file_parts_are_estimates() -> None:
    audio = {
        "type": "input_audio",
        "input_audio": {"data": base64.b64encode(b"\0" * 48000).decode(), "format": "wav"},
    }
    est = chat([{"role": "user", "content": [audio]}])
    assert est.tokens == 3 + n("user") + 10 + 3
    assert not est.exact
    file = {"type": "file", "file": {"file_id": "file-abc"}}
    est = chat([{"role": "user", "content": [file]}])
    assert est.tokens > 1000
    assert not est.exact


# -------------------------------------------------------------------------------------- other endpoints


def test_responses_text_input_matches_chat() -> None:
    counter = Counter()
    est = counter.responses("hello there", "You are terse.", None, model="gpt-4o", encoding=None)
    same = chat([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "hello there"}])
    assert est == same
    assert est.parts.system == 3 + n("system") + n("You are terse.")


def test_responses_function_call_items_are_estimates() -> None:
    items = [
        {"type": "message", "role": "user", "content": [{"type": "input_text", "text": "weather?"}]},
        {"type": "function_call", "call_id": "c1", "name": "get_weather", "arguments": '{"city":"Oslo"}'},
        {"type": "function_call_output", "call_id": "c1", "output": '{"temp": -3}'},
    ]
    est = Counter().responses(items, None, None, model="gpt-4o", encoding=None)
    expected = (
        (3 + n("user") + n("weather?")) + (3 + n("get_weather") + n('{"city":"Oslo"}')) + (3 + n('{"temp": -3}')) + 3
    )
    assert (est.tokens, est.exact) == (expected, False)
    assert est.parts.new == est.tokens


def test_completion_and_embeddings_inputs() -> None:
    c = Counter()
    kw: dict[str, Any] = {"model": "text-embedding-3-small", "encoding": None}
    assert c.embeddings("hello world", **kw).tokens == n("hello world", "cl100k_base")
    assert c.embeddings(["a b", "c d e"], **kw).tokens == n("a b", "cl100k_base") + n("c d e", "cl100k_base")
    assert c.embeddings([1, 2, 3], **kw).tokens == 3
    assert c.completion([[1, 2], [3, 4, 5]], model="davinci-002", encoding=None).tokens == 5
    est = c.completion("hi", model="gpt-4o", encoding=None)
    assert est == Estimate(n("hi"), True, count.Parts(0, 0, 0, n("hi")))


# -------------------------------------------------------------------------------------- odd shapes, unseen input

ODD_VALUES: list[Any] = [42, 4.5, True, "text", {"a": [1, None]}, ["x", 7], None]


@pytest.mark.parametrize("odd", ODD_VALUES)
def test_shapes_the_api_does_not_define_are_counted_never_raised(odd: Any) -> None:
    """The provider judges validity; the counter only needs a number (JSON text, inexact) for any JSON."""
    c = Counter()
    base = c.chat([{"role": "user", "content": "hi"}], None, model="gpt-4o", encoding=None)
    tools = c.chat([{"role": "user", "content": "hi"}], odd, model="gpt-4o", encoding=None)
    assert tools.tokens >= base.tokens and (tools.exact is (odd is None))
    for messages in (odd, [odd], [{"role": odd, "content": odd, "name": odd, "tool_calls": odd}]):
        est = c.chat(messages, odd, model="gpt-4o", encoding=None)
        assert est.tokens >= count.REPLY_PRIMER
    for value in (odd, [odd], ["hello", odd], [{"type": odd, "content": odd, "output": odd}]):
        est = c.responses(value, odd, odd, model="gpt-4o", encoding=None)
        assert est.tokens >= count.REPLY_PRIMER
    assert c.completion(odd, model="gpt-4o", encoding=None).tokens >= 0
    assert c.embeddings([odd, [1, odd]], model="gpt-4o", encoding=None).tokens >= 0


def test_odd_tools_and_instructions_make_the_estimate_inexact() -> None:
    c = Counter()
    assert not c.chat([{"role": "user", "content": "hi"}], 42, model="gpt-4o", encoding=None).exact
    est = c.responses("hi", ["be", "terse"], None, model="gpt-4o", encoding=None)
    assert est.parts.system > 0  # counted as instructions, part by part
    assert not c.responses("hi", 5, None, model="gpt-4o", encoding=None).exact
    assert c.responses(["hello", 42], None, None, model="gpt-4o", encoding=None).exact is False


def test_responses_without_input_count_only_what_is_there() -> None:
    """previous_response_id / conversation only: no phantom user message."""
    est = Counter().responses(None, "You are terse.", None, model="gpt-4o", encoding=None)
    assert est.tokens == 3 + n("system") + n("You are terse.") + count.REPLY_PRIMER
    assert Counter().responses(None, None, None, model="gpt-4o", encoding=None).tokens == count.REPLY_PRIMER


def test_with_unseen_reserves_up_to_the_bound_and_is_inexact() -> None:
    est = Counter().responses("hello", None, None, model="gpt-4o", encoding=None)
    assert est.exact and est.unseen == 0
    bounded = est.with_unseen(4096)
    assert (bounded.tokens, bounded.exact, bounded.unseen, bounded.parts) == (4096, False, 4096 - est.tokens, est.parts)
    assert bounded.parts.system + bounded.parts.tools + bounded.parts.history + bounded.parts.new == est.tokens
    over = est.with_unseen(2)  # the visible part alone is already past the bound: that is what is reserved
    assert (over.tokens, over.exact, over.unseen) == (est.tokens, False, 0)
    assert est.with_unseen(0).tokens == est.tokens  # no bound known


# -------------------------------------------------------------------------------------- cache


class SpyEncoding:
    def __init__(self, inner: Any, log: list[str]) -> None:
        self.inner, self.log = inner, log

    def encode_ordinary(self, text: str) -> list[int]:
        self.log.append(text)
        return list(self.inner.encode_ordinary(text))


def conversation(turns: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a careful assistant."}]
    for i in range(turns):
        messages.append({"role": "user", "content": f"question {i}: " + "lorem ipsum " * 20})
        messages.append({"role": "assistant", "content": f"answer {i}: " + "dolor sit amet " * 20})
    return messages


def test_resent_conversation_encodes_only_the_new_message(monkeypatch: pytest.MonkeyPatch) -> None:
    log: list[str] = []
    real = get_encoding
    monkeypatch.setattr(counting, "get_encoding", lambda name: SpyEncoding(real(name), log))
    counter = Counter()
    history = conversation(25)
    first = counter.chat(history, WEATHER_TOOLS, model="gpt-4o", encoding=None)
    assert len(log) > 50

    log.clear()
    resent = orjson.loads(orjson.dumps(history))  # a fresh request: new objects, equal content
    resent.append({"role": "user", "content": "and one more thing"})
    tools_again = orjson.loads(orjson.dumps(WEATHER_TOOLS))
    second = counter.chat(resent, tools_again, model="gpt-4o", encoding=None)
    assert log == ["user", "and one more thing"]
    assert second.tokens == first.tokens + 3 + n("user") + n("and one more thing")
    assert second == Counter().chat(resent, WEATHER_TOOLS, model="gpt-4o", encoding=None)  # cache is transparent
    stats = counter.stats
    assert stats.hits == len(history) + 1  # every old message + the tools
    assert stats.encoded_chars > 0


def test_cache_key_includes_encoding() -> None:
    counter = Counter()
    o200k = counter.chat(COOKBOOK_MESSAGES, None, model="gpt-4o", encoding=None)
    cl100k = counter.chat(COOKBOOK_MESSAGES, None, model="gpt-4", encoding=None)
    assert (o200k.tokens, cl100k.tokens) == (124, 129)


def test_cache_key_includes_image_profile() -> None:
    counter = Counter()
    msg = image_message(data_url(png(1024, 1024)), "low")
    a = counter.chat([msg], None, model="gpt-4o", encoding=None)
    b = counter.chat([msg], None, model="gpt-4o-mini", encoding=None)
    assert b.tokens - a.tokens == 2833 - 85


def test_lru_stays_within_its_bound() -> None:
    counter = Counter(cache_bytes=4096)
    messages = [{"role": "user", "content": f"message number {i} " + "x" * 200} for i in range(100)]
    for m in messages:
        counter.chat([m], None, model="gpt-4o", encoding=None)
        assert counter.stats.size <= 4096
    stats = counter.stats
    assert stats.evictions > 0
    assert 0 < stats.entries < 100
    before = counter.stats
    counter.chat([messages[-1]], None, model="gpt-4o", encoding=None)  # newest: still cached
    counter.chat([messages[0]], None, model="gpt-4o", encoding=None)  # oldest: evicted
    after = counter.stats
    assert (after.hits - before.hits, after.misses - before.misses) == (1, 1)


def test_entry_larger_than_cache_is_counted_not_cached() -> None:
    counter = Counter(cache_bytes=100)
    est = counter.chat([{"role": "user", "content": "y" * 1000}], None, model="gpt-4o", encoding=None)
    assert est.tokens > 3
    assert counter.stats.entries == 0


# -------------------------------------------------------------------------------------- async


async def test_achat_matches_chat_and_uses_a_thread_only_for_large_uncached_text(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[object] = []
    real_to_thread = asyncio.to_thread

    async def spy(fn: Any, *args: Any, **kwargs: Any) -> Any:
        calls.append(fn)
        return await real_to_thread(fn, *args, **kwargs)

    monkeypatch.setattr(asyncio, "to_thread", spy)  # counting calls asyncio.to_thread
    counter = Counter()
    small = await counter.achat(COOKBOOK_MESSAGES, None, model="gpt-4o", encoding=None)
    assert (small.tokens, calls) == (124, [])

    big = [{"role": "user", "content": "word " * 10_000}]
    est = await counter.achat(big, None, model="gpt-4o", encoding=None)
    assert len(calls) == 1
    assert est == Counter().chat(big, None, model="gpt-4o", encoding=None)
    await counter.achat(big, None, model="gpt-4o", encoding=None)  # now cached: inline
    assert len(calls) == 1

    r = await counter.aresponses("hello", None, None, model="gpt-4o", encoding=None)
    assert r.tokens == 3 + n("user") + n("hello") + 3
    e = await counter.aembeddings(["x " * 20_000], model="text-embedding-3-small", encoding=None)
    assert e.tokens == n("x " * 20_000, "cl100k_base")
    assert len(calls) == 2


# -------------------------------------------------------------------------------------- properties

texts = st.text(max_size=40)


@settings(max_examples=60, deadline=None)
@given(parts=st.lists(texts, max_size=6), role=st.sampled_from(["user", "assistant", "system", "tool"]))
def test_text_parts_sum_and_are_deterministic(parts: list[str], role: str) -> None:
    message = {"role": role, "content": [{"type": "text", "text": p} for p in parts]}
    est = chat([message])
    assert est.tokens == 3 + n(role) + sum(n(p) for p in parts) + 3
    assert est.tokens > 0
    assert est == chat([orjson.loads(orjson.dumps(message))])
    assert est.tokens == est.parts.system + est.parts.tools + est.parts.history + est.parts.new


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["user", "assistant", "system", "developer"]), texts), max_size=8))
def test_parts_always_add_up_and_never_negative(turns: list[tuple[str, str]]) -> None:
    counter = Counter()
    messages = [{"role": r, "content": c} for r, c in turns]
    est = counter.chat(messages, None, model="gpt-4o", encoding=None)
    p = est.parts
    assert min(p.system, p.tools, p.history, p.new) >= 0
    assert est.tokens == p.system + p.tools + p.history + p.new
    assert counter.chat(messages, None, model="gpt-4o", encoding=None) == est  # cached == fresh

"""An OpenAI-compatible fake provider for demos, tests and benchmarks (`quotagate mock-upstream`).

It answers /v1/chat/completions, /v1/completions, /v1/embeddings, /v1/responses (and /compact) and
/v1/models with shapes the official `openai` SDK accepts (and keeps responses, chat completions created
with ``store: true`` and conversations in memory for the stateful endpoints: retrieve, list, input items,
messages, update, cancel, delete, input token counts, conversation items), and deterministic output: N
tokens of a fixed word list in which every word is one token in both cl100k_base and o200k_base, streamed
one token per chunk. Prompt usage is counted with `proxy.count`, i.e. the same tokenizer as the gateway's
own pre-count, so tests can compare the two exactly.

Faults and behaviour are chosen per request by a ``mock`` object in the JSON body or by ``x-mock-<name>``
headers (body wins); see `Controls`. The last requests received are kept for inspection at
``GET /_mock/requests`` (``DELETE`` clears them).

This is a *provider*, not part of quotagate: it renders provider error shapes itself (OpenAI, vLLM, SGLang,
Anthropic, plain text) rather than going through `proxy.errors`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import itertools
import sys
import time
from array import array
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

from proxy.count import Counter
from proxy.encodings import encoding_name_for_model, get_encoding


@dataclass(frozen=True, slots=True)
class MockConfig:
    ttft_per_1k_input_s: float = 0.0  # latency model: time to first token proportional to input tokens
    base_ttft_s: float = 0.0
    tpot_s: float = 0.0  # fixed time per output token (streams pace chunks by this)
    default_output_tokens: int = 16
    api_key: str | None = None  # if set, require `Authorization: Bearer <api_key>`


@dataclass(frozen=True, slots=True)
class Controls:
    """Per-request behaviour, from the body's ``mock`` object or ``x-mock-<name>`` headers."""

    status: int | None = None  # answer with this HTTP status and an error body
    error_shape: str = "openai"  # openai | vllm | sglang | anthropic | text
    cut_after: int | None = None  # streams: abort the connection after this many content chunks
    error_after: int | None = None  # streams: in-band error after this many content chunks
    delay_s: float = 0.0  # sleep before the response headers
    output_tokens: int | None = None  # replaces default_output_tokens (still capped by max_tokens)
    no_usage: bool = False  # omit usage entirely
    cached_tokens: int = 0
    reasoning_tokens: int = 0  # added to completion tokens (reasoning is part of them)
    tpot_s: float | None = None


NO_CONTROLS = Controls()
ERROR_SHAPES = frozenset({"openai", "vllm", "sglang", "anthropic", "text"})
_INTS = frozenset({"status", "cut_after", "error_after", "output_tokens", "cached_tokens", "reasoning_tokens"})
_FLOATS = frozenset({"delay_s", "tpot_s"})
_HEADER_PREFIX = "x-mock-"
DEFAULT_EMBEDDING_DIMS = 8
RECORDED_REQUESTS = 100
MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-5-mini", "o3-mini", "text-embedding-3-small")

# Every word is a single token in cl100k_base and o200k_base, alone and in any concatenation
# (checked in tests): the first token is "Lorem", then " word" pieces cycling through _WORDS.
_FIRST = "Lorem"
_WORDS = tuple(
    " " + w
    for w in (  # noqa: SIM905
        "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore"
        " et dolore magna aliqua the quick brown fox jumps over lazy dog"
    ).split()
)
_SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class _NotFound(Exception):
    def __init__(self, what: str, object_id: str) -> None:
        super().__init__(f"{what} with id '{object_id}' not found.")
        self.what, self.object_id = what, object_id


@dataclass(slots=True)
class _StoredResponse:
    response: dict[str, Any]
    input_items: list[dict[str, Any]]


@dataclass(slots=True)
class _StoredCompletion:
    completion: dict[str, Any]
    messages: list[dict[str, Any]]


@dataclass(slots=True)
class _Conversation:
    conversation: dict[str, Any]
    items: list[dict[str, Any]]


@dataclass(slots=True)
class _State:
    config: MockConfig
    counter: Counter = field(default_factory=Counter)
    requests: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECORDED_REQUESTS))
    ids: Iterator[int] = field(default_factory=itertools.count)
    responses: dict[str, _StoredResponse] = field(default_factory=dict)
    completions: dict[str, _StoredCompletion] = field(default_factory=dict)  # insertion order = created order
    conversations: dict[str, _Conversation] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class _Ctx:
    body: dict[str, Any]
    controls: Controls


STATE = web.AppKey("mock_state", _State)
CTX = web.RequestKey("mock_ctx", _Ctx)


# ---------------------------------------------------------------- deterministic output


@lru_cache(maxsize=512)
def output_pieces(n: int) -> tuple[str, ...]:
    """The N one-token pieces of the deterministic output text."""
    if n <= 0:
        return ()
    return (_FIRST, *(_WORDS[i % len(_WORDS)] for i in range(1, n)))


@lru_cache(maxsize=512)
def output_text(n: int) -> str:
    return "".join(output_pieces(n))


@lru_cache(maxsize=256)
def _tool_pieces(arguments: str, encoding: str) -> tuple[str, ...]:
    enc = get_encoding(encoding)
    return tuple(enc.decode([t]) for t in enc.encode(arguments))


def _fake_value(schema: Any) -> Any:
    if not isinstance(schema, dict):
        return None
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), None)
    return {"string": "lorem", "integer": 1, "number": 1.5, "boolean": True, "array": [], "object": {}}.get(
        kind if isinstance(kind, str) else ""
    )


def _fake_arguments(function: dict[str, Any]) -> str:
    params = function.get("parameters")
    props = params.get("properties") if isinstance(params, dict) else None
    if not isinstance(props, dict):
        return "{}"
    return orjson.dumps({k: _fake_value(v) for k, v in props.items()}).decode()


def _pick_function(tools: Any, tool_choice: Any) -> dict[str, Any] | None:
    if not isinstance(tools, list) or tool_choice == "none":
        return None
    functions: list[dict[str, Any]] = [
        t["function"]
        for t in tools
        if isinstance(t, dict) and t.get("type") == "function" and isinstance(t.get("function"), dict)
    ]
    if not functions:
        return None
    if isinstance(tool_choice, dict):
        wanted = (tool_choice.get("function") or {}).get("name")
        for f in functions:
            if f.get("name") == wanted:
                return f
    return functions[0]


@dataclass(frozen=True, slots=True)
class _Plan:
    pieces: tuple[str, ...]
    finish: str  # stop | length | tool_calls
    prompt: int
    completion: int
    cached: int
    reasoning: int
    tool_call: tuple[str, str] | None = None  # (call id, function name)

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def _int_field(body: Mapping[str, Any], *names: str) -> int | None:
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise _BadRequest(f"Invalid '{name}': expected a non-negative integer.", name)
        return value
    return None


def _plan_text(
    state: _State, body: Mapping[str, Any], ctl: Controls, prompt: int, cap_fields: tuple[str, ...]
) -> _Plan:
    cap = _int_field(body, *cap_fields)
    n = ctl.output_tokens if ctl.output_tokens is not None else state.config.default_output_tokens
    truncated = cap is not None and cap < n
    if truncated and cap is not None:
        n = cap
    pieces = output_pieces(n)
    return _Plan(
        pieces=pieces,
        finish="length" if truncated else "stop",
        prompt=prompt,
        completion=n + ctl.reasoning_tokens,
        cached=ctl.cached_tokens,
        reasoning=ctl.reasoning_tokens,
    )


def _encoding_for(model: str) -> str:
    return encoding_name_for_model(model) or "o200k_base"


def _model(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise _BadRequest("you must provide a model parameter", "model")
    return model


def _chat_usage(plan: _Plan) -> dict[str, Any]:
    return {
        "prompt_tokens": plan.prompt,
        "completion_tokens": plan.completion,
        "total_tokens": plan.prompt + plan.completion,
        "prompt_tokens_details": {"cached_tokens": plan.cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": plan.reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _responses_usage(plan: _Plan) -> dict[str, Any]:
    return {
        "input_tokens": plan.prompt,
        "input_tokens_details": {"cached_tokens": plan.cached, "cache_write_tokens": 0},
        "output_tokens": plan.completion,
        "output_tokens_details": {"reasoning_tokens": plan.reasoning},
        "total_tokens": plan.prompt + plan.completion,
    }


# ---------------------------------------------------------------- wire helpers


def _json(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


def _data(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def _event(obj: dict[str, Any]) -> bytes:
    kind: str = obj["type"]
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


_DONE = b"data: [DONE]\n\n"


def _openai_error(message: str, type_: str, code: str | None = None, param: str | None = None) -> Any:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def _phrase_type(status: int) -> str:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return phrase.replace(" ", "").replace("-", "") + ("" if phrase.endswith("Error") else "Error")


_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def injected_error(status: int, shape: str) -> web.Response:
    """An error answer in one provider's wire shape."""
    message = f"mock: injected HTTP {status}"
    if shape == "text":
        return web.Response(text=message, status=status, content_type="text/plain")
    if shape == "vllm":
        body: Any = {"error": {"message": message, "type": _phrase_type(status), "param": None, "code": status}}
    elif shape == "sglang":
        body = {
            "object": "error",
            "message": message,
            "type": _phrase_type(status),
            "param": None,
            "code": status,
        }
    elif shape == "anthropic":
        kind = _ANTHROPIC_TYPES.get(status, "api_error")
        body = {"type": "error", "error": {"type": kind, "message": message}}
    elif status == 429:
        body = _openai_error(message, "requests", "rate_limit_exceeded")
    elif status >= 500:
        body = _openai_error(message, "server_error")
    else:
        body = _openai_error(message, "invalid_request_error")
    return _json(body, status)


def _stream_error(after: int) -> Any:
    return _openai_error(f"mock: injected stream error after {after} chunks", "server_error")


# ---------------------------------------------------------------- controls


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise _BadRequest(f"mock.{name} must be an integer", f"mock.{name}")
    try:
        result = int(value)
    except ValueError:
        raise _BadRequest(f"mock.{name} must be an integer", f"mock.{name}") from None
    if result < 0:
        raise _BadRequest(f"mock.{name} must be >= 0", f"mock.{name}")
    return result


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _BadRequest(f"mock.{name} must be a number", f"mock.{name}")
    try:
        result = float(value)
    except ValueError:
        raise _BadRequest(f"mock.{name} must be a number", f"mock.{name}") from None
    if not result >= 0:
        raise _BadRequest(f"mock.{name} must be >= 0", f"mock.{name}")
    return result


def parse_controls(body_mock: Any, headers: Mapping[str, str]) -> Controls:
    """Merge ``x-mock-<name>`` headers (``-`` or ``_`` in names) with the body's ``mock`` object."""
    raw: dict[str, Any] = {}
    for name, value in headers.items():
        lowered = name.lower()
        if lowered.startswith(_HEADER_PREFIX):
            raw[lowered[len(_HEADER_PREFIX) :].replace("-", "_")] = value
    if body_mock is not None:
        if not isinstance(body_mock, dict):
            raise _BadRequest("mock must be an object", "mock")
        raw.update(body_mock)
    if not raw:
        return NO_CONTROLS
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name in _INTS:
            values[name] = _as_int(name, value)
        elif name in _FLOATS:
            values[name] = _as_float(name, value)
        elif name == "no_usage":
            values[name] = value is True or (isinstance(value, str) and value.lower() in ("1", "true", "yes"))
        elif name == "error_shape":
            if value not in ERROR_SHAPES:
                raise _BadRequest(f"mock.error_shape must be one of {sorted(ERROR_SHAPES)}", "mock.error_shape")
            values[name] = value
        else:
            raise _BadRequest(f"unknown mock control {name!r}", f"mock.{name}")
    return Controls(**values)


# ---------------------------------------------------------------- middleware: record, auth, faults


def _auth_error(header: str | None, key: str) -> web.Response | None:
    if header is None or not header.startswith("Bearer "):
        return _json(
            _openai_error(
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "invalid_request_error",
            ),
            401,
        )
    given = header[len("Bearer ") :]
    if hmac.compare_digest(given.encode(), key.encode()):
        return None
    masked = given[:3] + "***" + given[-3:] if len(given) > 8 else "***"
    return _json(
        _openai_error(f"Incorrect API key provided: {masked}.", "invalid_request_error", "invalid_api_key"),
        401,
    )


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith("/v1/"):
        return await handler(request)
    state = request.app[STATE]
    raw = await request.read() if request.body_exists else b""
    try:
        body: Any = orjson.loads(raw) if raw else {}
        parsed_ok = True
    except orjson.JSONDecodeError:
        body, parsed_ok = raw.decode("utf-8", "replace"), False
    state.requests.append(
        {
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body": body if raw else None,
        }
    )
    if state.config.api_key is not None:
        denied = _auth_error(request.headers.get("Authorization"), state.config.api_key)
        if denied is not None:
            return denied
    if not parsed_ok or not isinstance(body, dict):
        return _json(_openai_error("We could not parse the JSON body of your request.", "invalid_request_error"), 400)
    try:
        controls = parse_controls(body.get("mock"), request.headers)
    except _BadRequest as exc:
        return _json(_openai_error(exc.message, "invalid_request_error", None, exc.param), 400)
    if controls.delay_s > 0:
        await asyncio.sleep(controls.delay_s)
    if controls.status is not None:
        return injected_error(controls.status, controls.error_shape)
    request[CTX] = _Ctx(body, controls)
    try:
        return await handler(request)
    except _BadRequest as exc:
        return _json(_openai_error(exc.message, "invalid_request_error", None, exc.param), 400)
    except _NotFound as exc:
        return _not_found(exc.what, exc.object_id)


# ---------------------------------------------------------------- streaming


async def _sleep(seconds: float) -> None:
    if seconds > 0:
        await asyncio.sleep(seconds)


def _ttft(config: MockConfig, prompt: int) -> float:
    return config.base_ttft_s + config.ttft_per_1k_input_s * prompt / 1000


def _tpot(config: MockConfig, ctl: Controls) -> float:
    return ctl.tpot_s if ctl.tpot_s is not None else config.tpot_s


async def _stream(
    request: web.Request,
    ctl: Controls,
    ttft: float,
    tpot: float,
    opening: list[bytes],
    content: list[bytes],
    closing: list[bytes],
    error_frame: Callable[[int], bytes],
) -> web.StreamResponse:
    """Send opening, then content frames (paced by tpot), then closing; or fail as the controls say.

    A requested cut or in-band error always happens: after ``min(n, len(content))`` content frames, so
    ``cut_after`` >= the output length drops the connection right before the finish/usage chunks.
    """
    resp = web.StreamResponse(headers=_SSE_HEADERS)
    await resp.prepare(request)
    cut, err = ctl.cut_after, ctl.error_after
    stop = min((x for x in (cut, err) if x is not None), default=None)
    cutting = cut is not None and (err is None or cut <= err)
    if stop is not None:
        stop = min(stop, len(content))
        content = content[:stop]
        closing = [] if cutting else [error_frame(stop)]
    try:
        if ttft <= 0 and tpot <= 0:  # one write: no per-chunk syscalls nor event-loop round trips
            await resp.write(b"".join(opening + content + closing))
        else:
            if opening:
                await resp.write(b"".join(opening))
            await _sleep(ttft)
            if tpot <= 0:
                await resp.write(b"".join(content + closing))
            else:
                for i, frame in enumerate(content):
                    if i:
                        await asyncio.sleep(tpot)
                    await resp.write(frame)
                if closing:
                    await resp.write(b"".join(closing))
    except ConnectionError:  # the client went away mid-stream: nothing left to do
        return resp
    if cutting:
        # abrupt end: no terminating chunk, so the client sees an incomplete body, not a clean EOF
        if request.transport is not None:
            request.transport.abort()
        resp.force_close()
        return resp  # aiohttp's write_eof then meets the dead transport and gives up quietly
    await resp.write_eof()
    return resp


# ---------------------------------------------------------------- handlers


def _new_id(state: _State, prefix: str) -> str:
    return f"{prefix}mock{next(state.ids):010x}"


def _fingerprint(body: Mapping[str, Any]) -> str:
    seed = body.get("seed")
    return "fp_mock" if seed is None else f"fp_mock{seed}"


def _stream_flags(body: Mapping[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream") is True
    options = body.get("stream_options")
    if options is not None and not stream:
        raise _BadRequest("The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options")
    return stream, isinstance(options, dict) and options.get("include_usage") is True


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state, ctx = request.app[STATE], request[CTX]
    body, ctl = ctx.body, ctx.controls
    model = _model(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("'messages' must be a non-empty array.", "messages")
    stream, include_usage = _stream_flags(body)
    encoding = _encoding_for(model)
    tools = body.get("tools")
    estimate = await state.counter.achat(messages, tools, model=model, encoding=encoding)
    prompt = estimate.tokens
    function = _pick_function(tools, body.get("tool_choice"))
    plan = _plan_text(state, body, ctl, prompt, ("max_completion_tokens", "max_tokens"))
    if function is not None:
        pieces = _tool_pieces(_fake_arguments(function), encoding)
        call = (_new_id(state, "call_"), str(function.get("name", "")))
        plan = _Plan(pieces, "tool_calls", prompt, len(pieces) + ctl.reasoning_tokens, ctl.cached_tokens,
                     ctl.reasoning_tokens, call)  # fmt: skip
    base = {
        "id": _new_id(state, "chatcmpl-"),
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": _fingerprint(body),
    }
    ttft, tpot = _ttft(state.config, prompt), _tpot(state.config, ctl)
    message: dict[str, Any] = {
        "role": "assistant",
        "content": plan.text,
        "refusal": None,
        "annotations": [],
    }
    if plan.tool_call is not None:
        message["content"] = None
        message["tool_calls"] = [
            {
                "id": plan.tool_call[0],
                "type": "function",
                "function": {"name": plan.tool_call[1], "arguments": plan.text},
            }
        ]
    out = {
        **base,
        "object": "chat.completion",
        "choices": [{"index": 0, "message": message, "logprobs": None, "finish_reason": plan.finish}],
        "service_tier": "default",
    }
    if not ctl.no_usage:
        out["usage"] = _chat_usage(plan)
    if body.get("store") is True:
        _store_completion(state, out, body, messages)
    if not stream:
        await _sleep(ttft + tpot * len(plan.pieces))
        return _json(out)

    head = {**base, "object": "chat.completion.chunk", "service_tier": "default"}
    with_usage = include_usage and not ctl.no_usage
    if with_usage:
        head["usage"] = None

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return _data({**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]})

    if plan.tool_call is not None:
        first: dict[str, Any] = {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "index": 0,
                    "id": plan.tool_call[0],
                    "type": "function",
                    "function": {"name": plan.tool_call[1], "arguments": ""},
                }
            ],
        }
        content = [chunk({"tool_calls": [{"index": 0, "function": {"arguments": p}}]}) for p in plan.pieces]
    else:
        first = {"role": "assistant", "content": "", "refusal": None}
        content = [chunk({"content": p}) for p in plan.pieces]
    closing = [chunk({}, plan.finish)]
    if with_usage:
        closing.append(_data({**head, "choices": [], "usage": _chat_usage(plan)}))
    closing.append(_DONE)
    return await _stream(request, ctl, ttft, tpot, [chunk(first)], content, closing, lambda n: _data(_stream_error(n)))


async def completions(request: web.Request) -> web.StreamResponse:
    state, ctx = request.app[STATE], request[CTX]
    body, ctl = ctx.body, ctx.controls
    model = _model(body)
    if "prompt" not in body:
        raise _BadRequest("you must provide a prompt parameter", "prompt")
    stream, include_usage = _stream_flags(body)
    estimate = await state.counter.acompletion(body["prompt"], model=model, encoding=_encoding_for(model))
    prompt = estimate.tokens
    plan = _plan_text(state, body, ctl, prompt, ("max_tokens",))
    head: dict[str, Any] = {
        "id": _new_id(state, "cmpl-"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": _fingerprint(body),
    }
    ttft, tpot = _ttft(state.config, prompt), _tpot(state.config, ctl)
    if not stream:
        await _sleep(ttft + tpot * len(plan.pieces))
        out = {
            **head,
            "choices": [{"text": plan.text, "index": 0, "logprobs": None, "finish_reason": plan.finish}],
        }
        if not ctl.no_usage:
            out["usage"] = _chat_usage(plan)
        return _json(out)
    with_usage = include_usage and not ctl.no_usage
    if with_usage:
        head["usage"] = None

    def chunk(text: str, finish: str | None = None) -> bytes:
        return _data({**head, "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]})

    closing = [chunk("", plan.finish)]
    if with_usage:
        closing.append(_data({**head, "choices": [], "usage": _chat_usage(plan)}))
    closing.append(_DONE)
    return await _stream(
        request,
        ctl,
        ttft,
        tpot,
        [],
        [chunk(p) for p in plan.pieces],
        closing,
        lambda n: _data(_stream_error(n)),
    )


def _embedding_vector(item: Any, dims: int) -> array[float]:
    key = item.encode() if isinstance(item, str) else orjson.dumps(item)
    raw = hashlib.shake_128(key).digest(4 * dims)
    ints = array("I", raw)
    vec = array("f", (i / 2147483648.0 - 1.0 for i in ints))
    norm = sum(x * x for x in vec) ** 0.5 or 1.0
    return array("f", (x / norm for x in vec))


async def embeddings(request: web.Request) -> web.StreamResponse:
    state, ctx = request.app[STATE], request[CTX]
    body, ctl = ctx.body, ctx.controls
    model = _model(body)
    inputs = body.get("input")
    if isinstance(inputs, str) or (isinstance(inputs, list) and inputs and isinstance(inputs[0], int)):
        items: list[Any] = [inputs]
    elif isinstance(inputs, list) and inputs:
        items = inputs
    else:
        raise _BadRequest("'input' must be a non-empty string or array.", "input")
    dims = _int_field(body, "dimensions")
    if dims == 0:
        raise _BadRequest("'dimensions' must be at least 1.", "dimensions")
    dims = dims or DEFAULT_EMBEDDING_DIMS
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise _BadRequest("'encoding_format' must be 'float' or 'base64'.", "encoding_format")
    estimate = await state.counter.aembeddings(inputs, model=model, encoding=_encoding_for(model))
    prompt = estimate.tokens
    data = []
    for index, item in enumerate(items):
        vec = _embedding_vector(item, dims)
        if fmt == "base64":
            if sys.byteorder == "big":
                vec.byteswap()
            value: Any = base64.b64encode(vec.tobytes()).decode()
        else:
            value = vec.tolist()
        data.append({"object": "embedding", "index": index, "embedding": value})
    await _sleep(_ttft(state.config, prompt))
    out: dict[str, Any] = {"object": "list", "data": data, "model": model}
    if not ctl.no_usage:
        out["usage"] = {"prompt_tokens": prompt, "total_tokens": prompt}
    return _json(out)


def _response_object(
    rid: str, body: Mapping[str, Any], model: str, created: int, status: str, output: list[Any], usage: Any
) -> dict[str, Any]:
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": body.get("background") is True,
        "error": None,
        "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "model": model,
        "output": output,
        "parallel_tool_calls": True,
        "previous_response_id": body.get("previous_response_id"),
        "reasoning": {"effort": None, "summary": None},
        "service_tier": "default",
        "store": body.get("store") is not False,
        "temperature": 1.0,
        "text": {"format": {"type": "text"}},
        "tool_choice": "auto",
        "tools": [],
        "top_p": 1.0,
        "truncation": "disabled",
        "usage": usage,
        "user": None,
        "metadata": body.get("metadata") or {},
    }


async def responses(request: web.Request) -> web.StreamResponse:
    state, ctx = request.app[STATE], request[CTX]
    body, ctl = ctx.body, ctx.controls
    model = _model(body)
    if "input" not in body:
        raise _BadRequest("you must provide an input parameter", "input")
    missing = _missing_previous(state, body)
    if missing is not None:
        return missing
    conversation = _conversation_of(state, body.get("conversation"))
    if isinstance(conversation, web.Response):
        return conversation
    stream = body.get("stream") is True
    prompt = (
        await state.counter.aresponses(
            body["input"],
            body.get("instructions"),
            body.get("tools"),
            model=model,
            encoding=_encoding_for(model),
        )
    ).tokens
    plan = _plan_text(state, body, ctl, prompt, ("max_output_tokens",))
    status = "incomplete" if plan.finish == "length" else "completed"
    rid, mid, created = _new_id(state, "resp_"), _new_id(state, "msg_"), int(time.time())
    usage = None if ctl.no_usage else _responses_usage(plan)
    part = {"type": "output_text", "text": plan.text, "annotations": [], "logprobs": []}
    item = {"id": mid, "type": "message", "status": status, "role": "assistant", "content": [part]}
    ttft, tpot = _ttft(state.config, prompt), _tpot(state.config, ctl)
    if conversation is not None:
        conversation.items += [*_input_items(state, body["input"]), item]
    if body.get("background") is True and not stream:  # queued; only ever cancelled (nothing runs it)
        queued = _response_object(rid, body, model, created, "queued", [], None)
        _store_response(state, queued, body)
        return _json(queued)
    _store_response(state, _response_object(rid, body, model, created, status, [item], usage), body)
    if not stream:
        await _sleep(ttft + tpot * len(plan.pieces))
        return _json(_response_object(rid, body, model, created, status, [item], usage))

    seq = itertools.count()
    pending = _response_object(rid, body, model, created, "in_progress", [], None)
    where = {"item_id": mid, "output_index": 0, "content_index": 0}
    opening = [
        _event({"type": "response.created", "sequence_number": next(seq), "response": pending}),
        _event({"type": "response.in_progress", "sequence_number": next(seq), "response": pending}),
        _event(
            {
                "type": "response.output_item.added",
                "sequence_number": next(seq),
                "output_index": 0,
                "item": {**item, "status": "in_progress", "content": []},
            }
        ),
        _event(
            {
                "type": "response.content_part.added",
                "sequence_number": next(seq),
                **where,
                "part": {**part, "text": ""},
            }
        ),
    ]
    content = [
        _event(
            {
                "type": "response.output_text.delta",
                "sequence_number": next(seq),
                **where,
                "delta": p,
                "logprobs": [],
            }
        )
        for p in plan.pieces
    ]
    after_deltas = next(seq)
    closing = [
        _event(
            {
                "type": "response.output_text.done",
                "sequence_number": after_deltas,
                **where,
                "text": plan.text,
                "logprobs": [],
            }
        ),
        _event({"type": "response.content_part.done", "sequence_number": next(seq), **where, "part": part}),
        _event(
            {
                "type": "response.output_item.done",
                "sequence_number": next(seq),
                "output_index": 0,
                "item": item,
            }
        ),
        _event(
            {
                "type": f"response.{status}",
                "sequence_number": next(seq),
                "response": _response_object(rid, body, model, created, status, [item], usage),
            }
        ),
    ]

    def error_event(n: int) -> bytes:
        return _event(
            {
                "type": "error",
                "sequence_number": len(opening) + n,
                "code": "server_error",
                "message": f"mock: injected stream error after {n} chunks",
                "param": None,
            }
        )

    return await _stream(request, ctl, ttft, tpot, opening, content, closing, error_event)


def _missing_previous(state: _State, body: Mapping[str, Any]) -> web.Response | None:
    """A ``previous_response_id`` this provider does not keep: 404 (400 when it is not a string at all)."""
    previous = body.get("previous_response_id")
    if previous is None:
        return None
    if not isinstance(previous, str):
        raise _BadRequest("Invalid type for 'previous_response_id': expected a string.", "previous_response_id")
    if previous in state.responses:
        return None
    return _json(
        _openai_error(
            f"Previous response with id '{previous}' not found.",
            "invalid_request_error",
            "previous_response_not_found",
            "previous_response_id",
        ),
        404,
    )


def _conversation_of(state: _State, value: Any) -> _Conversation | web.Response | None:
    if value is None:
        return None
    cid = value.get("id") if isinstance(value, dict) else value
    if not isinstance(cid, str):
        raise _BadRequest("Invalid type for 'conversation': expected a string or an object with an id.", "conversation")
    found = state.conversations.get(cid)
    return found if found is not None else _not_found("Conversation", cid)


async def compact(request: web.Request) -> web.StreamResponse:
    """POST /v1/responses/compact: the user messages of the input (or of the previous response's), then one
    compaction item; billed like a response (usage)."""
    state, ctx = request.app[STATE], request[CTX]
    body, ctl = ctx.body, ctx.controls
    model = _model(body)
    missing = _missing_previous(state, body)
    if missing is not None:
        return missing
    previous = body.get("previous_response_id")
    value = body.get("input")
    items = _input_items(state, value) if value is not None else []
    if previous is not None:
        items = [*state.responses[previous].input_items, *items]
    prompt = (
        await state.counter.aresponses(
            value or "", body.get("instructions"), None, model=model, encoding=_encoding_for(model)
        )
    ).tokens
    plan = _plan_text(state, body, ctl, prompt, ())
    cid = _new_id(state, "cmp_")
    summary = base64.b64encode(plan.text.encode()).decode()
    compaction = {"id": _new_id(state, "cmp_item_"), "type": "compaction", "encrypted_content": summary}
    users = [i for i in items if i.get("role") == "user"]
    return _json(
        {
            "id": cid,
            "object": "response.compaction",
            "output": [*users, compaction],
            "created_at": int(time.time()),
            "usage": None if ctl.no_usage else _responses_usage(plan),
        }
    )


# ---------------------------------------------------------------- stored objects


def _not_found(what: str, object_id: str) -> web.Response:
    return _json(_openai_error(f"{what} with id '{object_id}' not found.", "invalid_request_error"), 404)


def _page(items: list[dict[str, Any]], query: Mapping[str, str], default_order: str) -> dict[str, Any]:
    """One page of a cursor list (``limit``, ``after``, ``order``), as OpenAI's list endpoints answer."""
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        raise _BadRequest("Invalid 'limit': expected an integer.", "limit") from None
    if not 1 <= limit <= 100:
        raise _BadRequest("Invalid 'limit': expected an integer between 1 and 100.", "limit")
    ordered = items if query.get("order", default_order) == "asc" else items[::-1]
    after = query.get("after")
    if after:
        at = next((i for i, item in enumerate(ordered) if item.get("id") == after), None)
        if at is None:
            raise _BadRequest(f"Invalid 'after': no object with id '{after}'.", "after")
        ordered = ordered[at + 1 :]
    data = ordered[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(ordered) > limit,
    }


def _input_items(state: _State, value: Any) -> list[dict[str, Any]]:
    entries = [{"role": "user", "content": value}] if isinstance(value, str) else value
    items: list[dict[str, Any]] = []
    for entry in entries if isinstance(entries, list) else ():
        if not isinstance(entry, dict):
            continue
        item = {"id": _new_id(state, "msg_"), "type": "message", "status": "completed", **entry}
        if isinstance(item.get("content"), str):
            item["content"] = [{"type": "input_text", "text": item["content"]}]
        items.append(item)
    return items


def _store_response(state: _State, response: dict[str, Any], body: Mapping[str, Any]) -> None:
    if body.get("store") is not False:
        state.responses[response["id"]] = _StoredResponse(response, _input_items(state, body["input"]))


def _store_completion(state: _State, out: dict[str, Any], body: Mapping[str, Any], messages: list[Any]) -> None:
    stored = {**out, "metadata": body.get("metadata") or {}}
    listed = [{"id": f"{out['id']}-{i}", **m} for i, m in enumerate(messages) if isinstance(m, dict)]
    state.completions[out["id"]] = _StoredCompletion(stored, listed)


async def get_response(request: web.Request) -> web.StreamResponse:
    stored = request.app[STATE].responses.get(rid := request.match_info["id"])
    return _json(stored.response) if stored is not None else _not_found("Response", rid)


async def delete_response(request: web.Request) -> web.StreamResponse:
    if request.app[STATE].responses.pop(rid := request.match_info["id"], None) is None:
        return _not_found("Response", rid)
    return _json({"id": rid, "object": "response", "deleted": True})


async def response_input_items(request: web.Request) -> web.StreamResponse:
    stored = request.app[STATE].responses.get(rid := request.match_info["id"])
    if stored is None:
        return _not_found("Response", rid)
    return _json(_page(stored.input_items, request.query, "desc"))


async def cancel_response(request: web.Request) -> web.StreamResponse:
    stored = request.app[STATE].responses.get(rid := request.match_info["id"])
    if stored is None:
        return _not_found("Response", rid)
    if not stored.response["background"]:
        raise _BadRequest("Only responses created with background=true can be cancelled.")
    if stored.response["status"] in ("queued", "in_progress"):
        stored.response = {**stored.response, "status": "cancelled"}
    return _json(stored.response)


async def input_tokens(request: web.Request) -> web.StreamResponse:
    state, body = request.app[STATE], request[CTX].body
    model = body.get("model")
    previous = body.get("previous_response_id")
    missing = _missing_previous(state, body)
    if missing is not None:
        return missing
    if not isinstance(model, str) or not model:
        model = state.responses[previous].response["model"] if previous is not None else "gpt-4o-mini"
    counted = await state.counter.aresponses(
        body.get("input") or "", body.get("instructions"), body.get("tools"), model=model, encoding=_encoding_for(model)
    )
    return _json({"object": "response.input_tokens", "input_tokens": counted.tokens})


async def list_chat_completions(request: web.Request) -> web.StreamResponse:
    query = request.query
    metadata = {k[len("metadata[") : -1]: v for k, v in query.items() if k.startswith("metadata[") and k.endswith("]")}
    items = [
        c.completion
        for c in request.app[STATE].completions.values()
        if query.get("model") in (None, c.completion["model"])
        and all(c.completion["metadata"].get(k) == v for k, v in metadata.items())
    ]
    return _json(_page(items, query, "asc"))


async def get_chat_completion(request: web.Request) -> web.StreamResponse:
    stored = request.app[STATE].completions.get(cid := request.match_info["id"])
    return _json(stored.completion) if stored is not None else _not_found("Chat completion", cid)


async def update_chat_completion(request: web.Request) -> web.StreamResponse:
    stored = request.app[STATE].completions.get(cid := request.match_info["id"])
    if stored is None:
        return _not_found("Chat completion", cid)
    metadata = request[CTX].body.get("metadata")
    if not isinstance(metadata, dict):
        raise _BadRequest("Missing required parameter: 'metadata'.", "metadata")
    stored.completion = {**stored.completion, "metadata": metadata}
    return _json(stored.completion)


async def delete_chat_completion(request: web.Request) -> web.StreamResponse:
    if request.app[STATE].completions.pop(cid := request.match_info["id"], None) is None:
        return _not_found("Chat completion", cid)
    return _json({"id": cid, "object": "chat.completion.deleted", "deleted": True})


async def chat_completion_messages(request: web.Request) -> web.StreamResponse:
    stored = request.app[STATE].completions.get(cid := request.match_info["id"])
    if stored is None:
        return _not_found("Chat completion", cid)
    return _json(_page(stored.messages, request.query, "asc"))


def _conversation_at(request: web.Request) -> _Conversation:
    found = request.app[STATE].conversations.get(cid := request.match_info["id"])
    if found is None:
        raise _NotFound("Conversation", cid)
    return found


def _new_items(state: _State, body: Mapping[str, Any], required: bool) -> list[dict[str, Any]]:
    value = body.get("items")
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise _BadRequest("Invalid 'items': expected an array of input items.", "items")
    return _input_items(state, value)


async def create_conversation(request: web.Request) -> web.StreamResponse:
    state, body = request.app[STATE], request[CTX].body
    cid = _new_id(state, "conv_")
    conv = {"id": cid, "object": "conversation", "created_at": int(time.time()), "metadata": body.get("metadata") or {}}
    state.conversations[cid] = _Conversation(conv, _new_items(state, body, required=False))
    return _json(conv)


async def get_conversation(request: web.Request) -> web.StreamResponse:
    return _json(_conversation_at(request).conversation)


async def update_conversation(request: web.Request) -> web.StreamResponse:
    found = _conversation_at(request)
    metadata = request[CTX].body.get("metadata")
    if not isinstance(metadata, dict):
        raise _BadRequest("Missing required parameter: 'metadata'.", "metadata")
    found.conversation = {**found.conversation, "metadata": metadata}
    return _json(found.conversation)


async def delete_conversation(request: web.Request) -> web.StreamResponse:
    cid = _conversation_at(request).conversation["id"]
    del request.app[STATE].conversations[cid]
    return _json({"id": cid, "object": "conversation.deleted", "deleted": True})


async def conversation_items(request: web.Request) -> web.StreamResponse:
    return _json(_page(_conversation_at(request).items, request.query, "desc"))


async def add_conversation_items(request: web.Request) -> web.StreamResponse:
    found = _conversation_at(request)
    added = _new_items(request.app[STATE], request[CTX].body, required=True)
    found.items += added
    return _json(
        {
            "object": "list",
            "data": added,
            "first_id": added[0]["id"] if added else None,
            "last_id": added[-1]["id"] if added else None,
            "has_more": False,
        }
    )


def _item_at(request: web.Request) -> tuple[_Conversation, dict[str, Any]]:
    found = _conversation_at(request)
    item_id = request.match_info["item_id"]
    item = next((i for i in found.items if i.get("id") == item_id), None)
    if item is None:
        raise _NotFound("Item", item_id)
    return found, item


async def get_conversation_item(request: web.Request) -> web.StreamResponse:
    return _json(_item_at(request)[1])


async def delete_conversation_item(request: web.Request) -> web.StreamResponse:
    found, item = _item_at(request)
    found.items.remove(item)
    return _json(found.conversation)


def _model_entry(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 1700000000, "owned_by": "quotagate-mock"}


async def list_models(request: web.Request) -> web.StreamResponse:
    return _json({"object": "list", "data": [_model_entry(m) for m in MODELS]})


async def get_model(request: web.Request) -> web.StreamResponse:
    return _json(_model_entry(request.match_info["model"]))


async def delete_model(request: web.Request) -> web.StreamResponse:
    return _json({"id": request.match_info["model"], "object": "model", "deleted": True})


async def recorded_requests(request: web.Request) -> web.StreamResponse:
    return _json(list(request.app[STATE].requests))


async def clear_requests(request: web.Request) -> web.StreamResponse:
    recorded = request.app[STATE].requests
    count = len(recorded)
    recorded.clear()
    return _json({"deleted": count})


# ---------------------------------------------------------------- app and servers


def build_app(config: MockConfig) -> web.Application:
    app = web.Application(middlewares=[_gate], client_max_size=64 * 1024 * 1024)
    app[STATE] = _State(config)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/v1/responses", responses)
    app.router.add_post("/v1/responses/input_tokens", input_tokens)
    app.router.add_post("/v1/responses/compact", compact)
    app.router.add_get("/v1/responses/{id}", get_response)
    app.router.add_delete("/v1/responses/{id}", delete_response)
    app.router.add_get("/v1/responses/{id}/input_items", response_input_items)
    app.router.add_post("/v1/responses/{id}/cancel", cancel_response)
    app.router.add_get("/v1/chat/completions", list_chat_completions)
    app.router.add_get("/v1/chat/completions/{id}", get_chat_completion)
    app.router.add_post("/v1/chat/completions/{id}", update_chat_completion)
    app.router.add_delete("/v1/chat/completions/{id}", delete_chat_completion)
    app.router.add_get("/v1/chat/completions/{id}/messages", chat_completion_messages)
    app.router.add_get("/v1/models", list_models)
    app.router.add_get("/v1/models/{model:.+}", get_model)
    app.router.add_delete("/v1/models/{model:.+}", delete_model)
    app.router.add_post("/v1/conversations", create_conversation)
    app.router.add_get("/v1/conversations/{id}", get_conversation)
    app.router.add_post("/v1/conversations/{id}", update_conversation)
    app.router.add_delete("/v1/conversations/{id}", delete_conversation)
    app.router.add_get("/v1/conversations/{id}/items", conversation_items)
    app.router.add_post("/v1/conversations/{id}/items", add_conversation_items)
    app.router.add_get("/v1/conversations/{id}/items/{item_id}", get_conversation_item)
    app.router.add_delete("/v1/conversations/{id}/items/{item_id}", delete_conversation_item)
    app.router.add_get("/_mock/requests", recorded_requests)
    app.router.add_delete("/_mock/requests", clear_requests)
    return app


@dataclass(slots=True)
class MockServer:
    runner: web.AppRunner
    host: str
    port: int

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/v1"

    @property
    def app(self) -> web.Application:
        return self.runner.app

    async def close(self) -> None:
        await self.runner.cleanup()


async def start(host: str = "127.0.0.1", port: int = 0, config: MockConfig = MockConfig()) -> MockServer:
    """Serve the mock on the running loop; port 0 picks a free port (see `.url`)."""
    runner = web.AppRunner(build_app(config), access_log=None, handler_cancellation=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = runner.addresses[0][1]
    return MockServer(runner, host, int(bound))


def run(host: str, port: int, config: MockConfig) -> None:
    """Serve until interrupted (the `quotagate mock-upstream` CLI); uses uvloop when installed."""
    loop: asyncio.AbstractEventLoop | None = None
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:
        pass
    web.run_app(build_app(config), host=host, port=port, access_log=None, loop=loop)

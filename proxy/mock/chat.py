"""POST /v1/chat/completions: text or a tool call with fake arguments, as one body or one chunk per token."""

from __future__ import annotations

import time
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import orjson
from aiohttp import web

from proxy.encodings import get_encoding

from .config import Controls
from .state import CTX, STATE, State, StoredCompletion, new_id
from .stream import error_frame, send_stream, sleep, time_per_token, time_to_first_token
from .text import Plan, chat_usage, encoding_for, fingerprint, model_of, plan_text, served_tier, stream_flags
from .wire import DONE, BadRequest, data_frame, json_response


@lru_cache(maxsize=256)
def _tool_pieces(arguments: str, encoding: str) -> tuple[str, ...]:
    enc = get_encoding(encoding)
    return tuple(enc.decode([t]) for t in enc.encode(arguments))


def fake_value(schema: Any) -> Any:
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
    return orjson.dumps({k: fake_value(v) for k, v in props.items()}).decode()


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


def _plan(state: State, body: Mapping[str, Any], ctl: Controls, prompt: int, encoding: str) -> Plan:
    """The answer: text (capped by max_completion_tokens / max_tokens), or a call of the chosen tool."""
    function = _pick_function(body.get("tools"), body.get("tool_choice"))
    plan = plan_text(state, body, ctl, prompt, ("max_completion_tokens", "max_tokens"))
    if function is not None:
        pieces = _tool_pieces(_fake_arguments(function), encoding)
        call = (new_id(state, "call_"), str(function.get("name", "")))
        plan = Plan(pieces, "tool_calls", prompt, len(pieces) + ctl.reasoning_tokens, ctl.cached_tokens,
                    ctl.reasoning_tokens, call)  # fmt: skip
    return plan


def _message(plan: Plan) -> dict[str, Any]:
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
    return message


def store_completion(state: State, out: dict[str, Any], body: Mapping[str, Any], messages: list[Any]) -> None:
    stored = {**out, "metadata": body.get("metadata") or {}}
    listed = [{"id": f"{out['id']}-{i}", **m} for i, m in enumerate(messages) if isinstance(m, dict)]
    state.completions[out["id"]] = StoredCompletion(stored, listed)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state, ctx = request.app[STATE], request[CTX]
    body, ctl = ctx.body, ctx.controls
    model = model_of(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("'messages' must be a non-empty array.", "messages")
    stream, include_usage = stream_flags(body)
    encoding = encoding_for(model)
    estimate = await state.counter.achat(messages, body.get("tools"), model=model, encoding=encoding)
    prompt = estimate.tokens
    plan = _plan(state, body, ctl, prompt, encoding)
    base = {
        "id": new_id(state, "chatcmpl-"),
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": fingerprint(body),
        "service_tier": served_tier(body, ctl, "default"),
    }
    ttft, tpot = time_to_first_token(state.config, prompt), time_per_token(state.config, ctl)
    out = {
        **base,
        "object": "chat.completion",
        "choices": [{"index": 0, "message": _message(plan), "logprobs": None, "finish_reason": plan.finish}],
    }
    if not ctl.no_usage:
        out["usage"] = chat_usage(plan)
    if body.get("store") is True:
        store_completion(state, out, body, messages)
    if not stream:
        await sleep(ttft + tpot * len(plan.pieces))
        return json_response(out)
    with_usage = include_usage and not ctl.no_usage
    return await _send_chunks(request, ctl, ttft, tpot, base, plan, with_usage)


async def _send_chunks(
    request: web.Request, ctl: Controls, ttft: float, tpot: float, base: dict[str, Any], plan: Plan, with_usage: bool
) -> web.StreamResponse:
    head = {**base, "object": "chat.completion.chunk"}
    if with_usage:
        head["usage"] = None

    def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
        return data_frame(
            {**head, "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}
        )

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
        closing.append(data_frame({**head, "choices": [], "usage": chat_usage(plan)}))
    closing.append(DONE)
    return await send_stream(request, ctl, ttft, tpot, [chunk(first)], content, closing, error_frame)

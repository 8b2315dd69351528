"""POST /v1/messages and /v1/messages/count_tokens: the Anthropic Messages API, stream and not, with tools
and a prompt cache.

The mock's own "provider count" of a request is quotagate's local count of each element (a tool, a system
block, a message) times 1.17, rounded up: a tokenizer that disagrees with the bundled encoding the way
Claude's does, so that pre-count factors have something to learn. The prompt cache follows the API's rule
for the last ``cache_control`` breakpoint (tools, then system, then messages): the prefix up to it is read
from the cache when an identical prefix was written before (and has not expired), else written with the
breakpoint's ``ttl`` (``5m`` by default, or ``1h``). ``input_tokens`` is what is left after both.
"""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import dataclass
from typing import Any

import orjson
from aiohttp import web

from .chat import fake_value
from .config import Controls
from .state import CTX, STATE, State, new_id
from .stream import send_stream, sleep, time_per_token, time_to_first_token
from .text import Plan, int_field, model_of, plan_text, served_tier
from .wire import BadRequest, event_frame, json_response

TOKENIZER_RATIO = 1.17
_TTL_S = {"5m": 300.0, "1h": 3600.0}


@dataclass(frozen=True, slots=True)
class Prompt:
    total: int  # every input token
    read: int  # read from the cache
    write_5m: int
    write_1h: int

    @property
    def fresh(self) -> int:
        return self.total - self.read - self.write_5m - self.write_1h


def _elements(body: dict[str, Any]) -> list[tuple[Any, str]]:
    """The prompt in cache order: each tool, the system prompt's blocks, each message (with its kind)."""
    out: list[tuple[Any, str]] = []
    tools = body.get("tools")
    out += [(t, "tool") for t in tools] if isinstance(tools, list) else []
    system = body.get("system")
    if isinstance(system, list):
        out += [(b, "system") for b in system]
    elif system is not None:
        out.append((system, "system"))
    messages = body.get("messages")
    out += [(m, "message") for m in messages] if isinstance(messages, list) else []
    return out


def _tokens(state: State, element: Any, kind: str, model: str) -> int:
    """quotagate's local count of one element, then the disagreement of a different tokenizer."""
    c = state.counter
    if kind == "tool":
        local = c.anthropic(None, [], [element], model=model, encoding=None).tokens
    elif kind == "system":
        local = c.anthropic(
            [element] if isinstance(element, dict) else element, [], None, model=model, encoding=None
        ).tokens
    else:
        local = c.anthropic(None, [element], None, model=model, encoding=None).tokens
    return math.ceil(local * TOKENIZER_RATIO)


def _breakpoint(element: Any) -> str | None:
    """The ttl of a ``cache_control`` on the element or on one of its content blocks, if any."""
    blocks = [element]
    if isinstance(element, dict) and isinstance(element.get("content"), list):
        blocks += element["content"]
    ttl = None
    for block in blocks:
        cc = block.get("cache_control") if isinstance(block, dict) else None
        if isinstance(cc, dict):
            ttl = cc.get("ttl") if cc.get("ttl") in _TTL_S else "5m"
    return ttl


def prompt_of(state: State, body: dict[str, Any], model: str, *, cache: bool = True) -> Prompt:
    elements = _elements(body)
    counts = [_tokens(state, e, kind, model) for e, kind in elements]
    total = sum(counts)
    last, ttl = -1, "5m"
    for i, (e, _) in enumerate(elements):
        found = _breakpoint(e)
        if found is not None:
            last, ttl = i, found
    if last < 0 or not cache:
        return Prompt(total, 0, 0, 0)
    prefix = sum(counts[: last + 1])
    key = hashlib.sha256(model.encode() + orjson.dumps([e for e, _ in elements[: last + 1]])).hexdigest()
    now = time.monotonic()
    if state.prompt_cache.get(key, 0.0) > now:
        return Prompt(total, prefix, 0, 0)
    state.prompt_cache[key] = now + _TTL_S[ttl]
    return Prompt(total, 0, prefix if ttl == "5m" else 0, prefix if ttl == "1h" else 0)


def _usage(prompt: Prompt, output: int, tier: str) -> dict[str, Any]:
    return {
        "input_tokens": prompt.fresh,
        "cache_creation_input_tokens": prompt.write_5m + prompt.write_1h,
        "cache_read_input_tokens": prompt.read,
        "cache_creation": {"ephemeral_5m_input_tokens": prompt.write_5m, "ephemeral_1h_input_tokens": prompt.write_1h},
        "output_tokens": output,
        "service_tier": tier,
    }


def _tool(body: dict[str, Any]) -> dict[str, Any] | None:
    tools, choice = body.get("tools"), body.get("tool_choice")
    if not isinstance(tools, list) or (isinstance(choice, dict) and choice.get("type") == "none"):
        return None
    named = [t for t in tools if isinstance(t, dict) and isinstance(t.get("name"), str) and "input_schema" in t]
    if isinstance(choice, dict) and choice.get("type") == "tool":
        named = [t for t in named if t["name"] == choice.get("name")] or named
    return named[0] if named else None


def _plan(state: State, body: dict[str, Any], ctl: Controls, prompt: int) -> tuple[Plan, dict[str, Any] | None]:
    plan = plan_text(state, body, ctl, prompt, ("max_tokens",))
    tool = _tool(body)
    if tool is None:
        return plan, None
    schema = tool.get("input_schema")
    props = schema.get("properties") if isinstance(schema, dict) else None
    arguments = {k: fake_value(v) for k, v in props.items()} if isinstance(props, dict) else {}
    text = orjson.dumps(arguments).decode()
    pieces = (text,)
    call = {"type": "tool_use", "id": new_id(state, "toolu_"), "name": tool["name"], "input": arguments}
    n = max(1, len(text) // 4)
    return Plan(pieces, "tool_use", prompt, n, 0, 0), call


_STOP = {"stop": "end_turn", "length": "max_tokens", "tool_use": "tool_use"}


def _check(body: dict[str, Any]) -> str:
    model = model_of(body)
    if int_field(body, "max_tokens") is None:
        raise BadRequest("max_tokens: Field required", "max_tokens")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: at least one message is required", "messages")
    return model


async def messages(request: web.Request) -> web.StreamResponse:
    state, ctx = request.app[STATE], request[CTX]
    body, ctl = ctx.body, ctx.controls
    model = _check(body)
    prompt = prompt_of(state, body, model)
    plan, call = _plan(state, body, ctl, prompt.total)
    content: list[dict[str, Any]] = [call] if call is not None else [{"type": "text", "text": plan.text}]
    out: dict[str, Any] = {
        "id": new_id(state, "msg_"),
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": _STOP[plan.finish],
        "stop_sequence": None,
    }
    if not ctl.no_usage:
        out["usage"] = _usage(prompt, plan.completion, served_tier(body, ctl, "standard"))
    ttft, tpot = time_to_first_token(state.config, prompt.total), time_per_token(state.config, ctl)
    if body.get("stream") is not True:
        await sleep(ttft + tpot * len(plan.pieces))
        return json_response(out)
    return await _stream(request, ctl, ttft, tpot, out, plan, call is not None)


async def _stream(
    request: web.Request, ctl: Controls, ttft: float, tpot: float, out: dict[str, Any], plan: Plan, tool: bool
) -> web.StreamResponse:
    usage = out.get("usage")
    start_usage = {**usage, "output_tokens": 1} if usage is not None else {"input_tokens": 0, "output_tokens": 1}
    message = {**out, "content": [], "stop_reason": None, "usage": start_usage}
    block = {**out["content"][0], "input": {}} if tool else {"type": "text", "text": ""}
    opening = [
        event_frame({"type": "message_start", "message": message}),
        event_frame({"type": "content_block_start", "index": 0, "content_block": block}),
        event_frame({"type": "ping"}),
    ]
    kind, key = ("input_json_delta", "partial_json") if tool else ("text_delta", "text")
    content = [
        event_frame({"type": "content_block_delta", "index": 0, "delta": {"type": kind, key: p}}) for p in plan.pieces
    ]
    final: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": out["stop_reason"], "stop_sequence": None},
    }
    if usage is not None:  # running totals: the output, and the input fields again
        final["usage"] = {k: v for k, v in usage.items() if k not in ("cache_creation", "service_tier")}
    closing = [
        event_frame({"type": "content_block_stop", "index": 0}),
        event_frame(final),
        event_frame({"type": "message_stop"}),
    ]
    return await send_stream(request, ctl, ttft, tpot, opening, content, closing, _error_event)


def _error_event(after: int) -> bytes:
    message = f"mock: injected stream error after {after} chunks"
    return event_frame({"type": "error", "error": {"type": "overloaded_error", "message": message}})


async def count_tokens(request: web.Request) -> web.StreamResponse:
    state, body = request.app[STATE], request[CTX].body
    model = model_of(body)
    return json_response({"input_tokens": prompt_of(state, body, model, cache=False).total})

"""POST /v1/responses (body, background or event stream), /v1/responses/compact and /input_tokens."""

from __future__ import annotations

import base64
import itertools
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from .config import Controls
from .state import CTX, STATE, Conversation, State, StoredResponse, input_items, new_id
from .stream import send_stream, sleep, time_per_token, time_to_first_token
from .text import Plan, encoding_for, model_of, plan_text, responses_usage, served_tier
from .wire import BadRequest, event_frame, json_response, not_found, openai_error


def _response_object(
    rid: str, body: Mapping[str, Any], model: str, created: int, status: str, output: list[Any], usage: Any, tier: str
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
        "service_tier": tier,
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


@dataclass(frozen=True, slots=True)
class _Answer:
    """One response's output: a single assistant message with a single output_text part."""

    rid: str
    body: Mapping[str, Any]
    model: str
    created: int
    status: str  # completed | incomplete
    plan: Plan
    part: dict[str, Any]
    item: dict[str, Any]
    usage: Any
    tier: str  # the service tier it says served it

    def response(self, status: str | None = None) -> dict[str, Any]:
        """The response object: done (with the message and usage), or ``status`` with no output yet."""
        at, output, usage = (self.status, [self.item], self.usage) if status is None else (status, [], None)
        return _response_object(self.rid, self.body, self.model, self.created, at, output, usage, self.tier)

    def where(self) -> dict[str, Any]:
        return {"item_id": self.item["id"], "output_index": 0, "content_index": 0}


def _store_response(state: State, response: dict[str, Any], body: Mapping[str, Any]) -> None:
    if body.get("store") is not False:
        state.responses[response["id"]] = StoredResponse(response, input_items(state, body["input"]))


def missing_previous(state: State, body: Mapping[str, Any]) -> web.Response | None:
    """A ``previous_response_id`` this provider does not keep: 404 (400 when it is not a string at all)."""
    previous = body.get("previous_response_id")
    if previous is None:
        return None
    if not isinstance(previous, str):
        raise BadRequest("Invalid type for 'previous_response_id': expected a string.", "previous_response_id")
    if previous in state.responses:
        return None
    return json_response(
        openai_error(
            f"Previous response with id '{previous}' not found.",
            "invalid_request_error",
            "previous_response_not_found",
            "previous_response_id",
        ),
        404,
    )


def _conversation_of(state: State, value: Any) -> Conversation | web.Response | None:
    if value is None:
        return None
    cid = value.get("id") if isinstance(value, dict) else value
    if not isinstance(cid, str):
        raise BadRequest("Invalid type for 'conversation': expected a string or an object with an id.", "conversation")
    found = state.conversations.get(cid)
    return found if found is not None else not_found("Conversation", cid)


async def responses(request: web.Request) -> web.StreamResponse:
    state, ctx = request.app[STATE], request[CTX]
    body, ctl = ctx.body, ctx.controls
    model = model_of(body)
    if "input" not in body:
        raise BadRequest("you must provide an input parameter", "input")
    missing = missing_previous(state, body)
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
            encoding=encoding_for(model),
        )
    ).tokens
    plan = plan_text(state, body, ctl, prompt, ("max_output_tokens",))
    status = "incomplete" if plan.finish == "length" else "completed"
    rid, mid, created = new_id(state, "resp_"), new_id(state, "msg_"), int(time.time())
    usage = None if ctl.no_usage else responses_usage(plan)
    part = {"type": "output_text", "text": plan.text, "annotations": [], "logprobs": []}
    item = {"id": mid, "type": "message", "status": status, "role": "assistant", "content": [part]}
    answer = _Answer(rid, body, model, created, status, plan, part, item, usage, served_tier(body, ctl, "default"))
    ttft, tpot = time_to_first_token(state.config, prompt), time_per_token(state.config, ctl)
    if conversation is not None:
        conversation.items += [*input_items(state, body["input"]), item]
    if body.get("background") is True and not stream:  # queued; only ever cancelled (nothing runs it)
        queued = answer.response("queued")
        _store_response(state, queued, body)
        return json_response(queued)
    _store_response(state, answer.response(), body)
    if not stream:
        await sleep(ttft + tpot * len(plan.pieces))
        return json_response(answer.response())
    return await _send_events(request, ctl, ttft, tpot, answer)


def _opening(answer: _Answer, seq: Iterator[int]) -> list[bytes]:
    pending = answer.response("in_progress")
    return [
        event_frame({"type": "response.created", "sequence_number": next(seq), "response": pending}),
        event_frame({"type": "response.in_progress", "sequence_number": next(seq), "response": pending}),
        event_frame(
            {
                "type": "response.output_item.added",
                "sequence_number": next(seq),
                "output_index": 0,
                "item": {**answer.item, "status": "in_progress", "content": []},
            }
        ),
        event_frame(
            {
                "type": "response.content_part.added",
                "sequence_number": next(seq),
                **answer.where(),
                "part": {**answer.part, "text": ""},
            }
        ),
    ]


def _deltas(answer: _Answer, seq: Iterator[int]) -> list[bytes]:
    where = answer.where()
    return [
        event_frame(
            {
                "type": "response.output_text.delta",
                "sequence_number": next(seq),
                **where,
                "delta": p,
                "logprobs": [],
            }
        )
        for p in answer.plan.pieces
    ]


def _closing(answer: _Answer, seq: Iterator[int]) -> list[bytes]:
    where = answer.where()
    return [
        event_frame(
            {
                "type": "response.output_text.done",
                "sequence_number": next(seq),
                **where,
                "text": answer.plan.text,
                "logprobs": [],
            }
        ),
        event_frame({"type": "response.content_part.done", "sequence_number": next(seq), **where, "part": answer.part}),
        event_frame(
            {
                "type": "response.output_item.done",
                "sequence_number": next(seq),
                "output_index": 0,
                "item": answer.item,
            }
        ),
        event_frame(
            {
                "type": f"response.{answer.status}",
                "sequence_number": next(seq),
                "response": answer.response(),
            }
        ),
    ]


async def _send_events(
    request: web.Request, ctl: Controls, ttft: float, tpot: float, answer: _Answer
) -> web.StreamResponse:
    seq = itertools.count()
    opening = _opening(answer, seq)
    content = _deltas(answer, seq)
    closing = _closing(answer, seq)

    def error_event(n: int) -> bytes:
        return event_frame(
            {
                "type": "error",
                "sequence_number": len(opening) + n,
                "code": "server_error",
                "message": f"mock: injected stream error after {n} chunks",
                "param": None,
            }
        )

    return await send_stream(request, ctl, ttft, tpot, opening, content, closing, error_event)


async def compact(request: web.Request) -> web.StreamResponse:
    """POST /v1/responses/compact: the user messages of the input (or of the previous response's), then one
    compaction item; billed like a response (usage)."""
    state, ctx = request.app[STATE], request[CTX]
    body, ctl = ctx.body, ctx.controls
    model = model_of(body)
    missing = missing_previous(state, body)
    if missing is not None:
        return missing
    previous = body.get("previous_response_id")
    value = body.get("input")
    items = input_items(state, value) if value is not None else []
    if previous is not None:
        items = [*state.responses[previous].input_items, *items]
    prompt = (
        await state.counter.aresponses(
            value or "", body.get("instructions"), None, model=model, encoding=encoding_for(model)
        )
    ).tokens
    plan = plan_text(state, body, ctl, prompt, ())
    cid = new_id(state, "cmp_")
    summary = base64.b64encode(plan.text.encode()).decode()
    compaction = {"id": new_id(state, "cmp_item_"), "type": "compaction", "encrypted_content": summary}
    users = [i for i in items if i.get("role") == "user"]
    return json_response(
        {
            "id": cid,
            "object": "response.compaction",
            "output": [*users, compaction],
            "created_at": int(time.time()),
            "usage": None if ctl.no_usage else responses_usage(plan),
        }
    )


async def input_tokens(request: web.Request) -> web.StreamResponse:
    state, body = request.app[STATE], request[CTX].body
    model = body.get("model")
    previous = body.get("previous_response_id")
    missing = missing_previous(state, body)
    if missing is not None:
        return missing
    if not isinstance(model, str) or not model:
        model = state.responses[previous].response["model"] if previous is not None else "gpt-4o-mini"
    counted = await state.counter.aresponses(
        body.get("input") or "", body.get("instructions"), body.get("tools"), model=model, encoding=encoding_for(model)
    )
    return json_response({"object": "response.input_tokens", "input_tokens": counted.tokens})

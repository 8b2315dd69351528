"""POST /v1/completions (legacy text completions), as one body or one chunk per token."""

from __future__ import annotations

import time
from typing import Any

from aiohttp import web

from .state import CTX, STATE, new_id
from .stream import error_frame, send_stream, sleep, time_per_token, time_to_first_token
from .text import chat_usage, encoding_for, fingerprint, model_of, plan_text, stream_flags
from .wire import DONE, BadRequest, data_frame, json_response


async def completions(request: web.Request) -> web.StreamResponse:
    state, ctx = request.app[STATE], request[CTX]
    body, ctl = ctx.body, ctx.controls
    model = model_of(body)
    if "prompt" not in body:
        raise BadRequest("you must provide a prompt parameter", "prompt")
    stream, include_usage = stream_flags(body)
    estimate = await state.counter.acompletion(body["prompt"], model=model, encoding=encoding_for(model))
    prompt = estimate.tokens
    plan = plan_text(state, body, ctl, prompt, ("max_tokens",))
    head: dict[str, Any] = {
        "id": new_id(state, "cmpl-"),
        "object": "text_completion",
        "created": int(time.time()),
        "model": model,
        "system_fingerprint": fingerprint(body),
    }
    ttft, tpot = time_to_first_token(state.config, prompt), time_per_token(state.config, ctl)
    if not stream:
        await sleep(ttft + tpot * len(plan.pieces))
        out = {
            **head,
            "choices": [{"text": plan.text, "index": 0, "logprobs": None, "finish_reason": plan.finish}],
        }
        if not ctl.no_usage:
            out["usage"] = chat_usage(plan)
        return json_response(out)
    with_usage = include_usage and not ctl.no_usage
    if with_usage:
        head["usage"] = None

    def chunk(text: str, finish: str | None = None) -> bytes:
        return data_frame({**head, "choices": [{"text": text, "index": 0, "logprobs": None, "finish_reason": finish}]})

    closing = [chunk("", plan.finish)]
    if with_usage:
        closing.append(data_frame({**head, "choices": [], "usage": chat_usage(plan)}))
    closing.append(DONE)
    return await send_stream(request, ctl, ttft, tpot, [], [chunk(p) for p in plan.pieces], closing, error_frame)

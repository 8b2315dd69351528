"""POST /tokenize as vLLM answers it (conventions 5.3), with the tokenizer of ``--tokenizer PATH`` (404
without one): the chat form renders ``messages`` (and ``tools``) with the model's chat template
(``add_generation_prompt`` default true, ``add_special_tokens`` default false), the prompt form encodes
``prompt`` (``add_special_tokens`` default true); ``{"count", "max_model_len", "tokens", "token_strs"}``."""

from __future__ import annotations

from aiohttp import web

from proxy.count.template import TemplateFailure

from .state import CTX, STATE
from .wire import BadRequest, json_response

MAX_MODEL_LEN = 131_072


async def tokenize(request: web.Request) -> web.StreamResponse:
    hf, body = request.app[STATE].tokenizer, request[CTX].body
    if hf is None:
        return json_response({"detail": "Not Found"}, 404)
    if "messages" in body:
        try:
            text, _ = hf.render(
                body["messages"],
                body.get("tools"),
                add_generation_prompt=body.get("add_generation_prompt") is not False,
            )
        except TemplateFailure as e:
            raise BadRequest(f"the chat template failed: {e}", "messages") from None
        ids = hf.ids(text, special=body.get("add_special_tokens") is True)
    elif isinstance(body.get("prompt"), str):
        ids = hf.ids(body["prompt"], special=body.get("add_special_tokens") is not False)
    else:
        raise BadRequest("give `prompt` (a string) or `messages`", "prompt")
    return json_response({"count": len(ids), "max_model_len": MAX_MODEL_LEN, "tokens": ids, "token_strs": None})

"""Anthropic Messages (``POST /v1/messages``), native: ``system`` + ``messages`` + ``tools``, ``max_tokens``
as the output cap, usage normalised by ``proxy.usage.from_anthropic`` (cache reads and writes are input),
and errors in Anthropic's shape (``{"type":"error","error":{"type","message"}}``) with the statuses and
refusal reasons of the OpenAI routes.

Claude's tokenizer is not public: the input is counted with a bundled encoding and the pipeline scales it
by the model's learned pre-count factor (``precount_scaled``, proxy/precount.py). The conversation is not
trimmed to a team's context cap (a cut could split a tool_use from its tool_result): it is refused.
"""

from __future__ import annotations

from typing import Any

import orjson

from .. import attribution
from ..count import Counter, Estimate
from ..errors import ProxyError, UpstreamError
from ..parse import Endpoint, ParsedRequest, parse
from ..usage import Usage, from_anthropic
from .anthropic_stream import AnthropicTap
from .base import Adapter

# Anthropic's error types by status (conventions.md 5.1); a provider's error keeps its own type.
ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    502: "api_error",
    503: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_KNOWN = frozenset(ERROR_TYPES.values())


def error_body(err: ProxyError) -> dict[str, Any]:
    own = isinstance(err, UpstreamError) and err.type in _KNOWN
    kind = err.type if own else ERROR_TYPES.get(err.status, "api_error")
    return {"type": "error", "error": {"type": kind, "message": err.message}}


class AnthropicMessages(Adapter):
    precount_scaled = True

    def parse(self, endpoint: Endpoint, raw: bytes) -> ParsedRequest:
        req = parse(endpoint, raw, stream_options=False)
        req.cache_writes = b'"cache_control"' in raw
        return req

    async def count(self, counter: Counter, req: ParsedRequest, *, model: str, encoding: str | None) -> Estimate:
        b = req.body
        return await counter.aanthropic(
            b.get("system"), b.get("messages"), b.get("tools"), model=model, encoding=encoding
        )

    def apply(self, req: ParsedRequest, *, model: str | None, cap: int | None) -> None:
        if cap is not None:
            req.set("max_tokens", cap)
        if model is not None:
            req.set("model", model)

    def tap(self, req: ParsedRequest) -> AnthropicTap:
        return AnthropicTap()

    def read_answer(self, raw: bytes) -> tuple[Usage, str | None, Any]:
        try:
            obj = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return Usage(), None, None
        if not isinstance(obj, dict):
            return Usage(), None, None
        return from_anthropic(obj.get("usage")), None, obj

    def count_request(self, req: ParsedRequest, upstream_model: str) -> tuple[str, dict[str, Any]] | None:
        fields = ("messages", "system", "tools", "tool_choice", "thinking")
        body = {k: req.body[k] for k in fields if k in req.body}
        return "/messages/count_tokens", {"model": upstream_model, **body}

    def raw_usage(self, answer: Any) -> Any:
        return answer.get("usage") if isinstance(answer, dict) else None

    def output_text(self, answer: Any) -> str:
        out: list[str] = []
        for block in (answer.get("content") if isinstance(answer, dict) else None) or ():
            if not isinstance(block, dict):
                continue
            for key in ("text", "thinking"):
                if isinstance(block.get(key), str):
                    out.append(block[key])
            if block.get("type") == "tool_use":
                out.append(str(block.get("name", "")) + orjson.dumps(block.get("input")).decode())
        return "".join(out)

    def object_id(self, answer: Any) -> str | None:
        found = answer.get("id") if isinstance(answer, dict) else None
        return found if isinstance(found, str) else None

    def end_user(self, req: ParsedRequest) -> str | None:
        meta = req.body.get("metadata")
        return attribution.end_user(meta.get("user_id")) if isinstance(meta, dict) else None

    def render(self, err: ProxyError) -> tuple[int, dict[str, str], bytes]:
        return err.status, {"content-type": "application/json", **err.headers}, orjson.dumps(error_body(err))

    def stream_error(self, err: ProxyError) -> bytes:
        return b"event: error\ndata: " + orjson.dumps(error_body(err)) + b"\n\n"


MESSAGES = Endpoint("messages", "/messages", "chat", ("max_tokens",), "messages", protocol=AnthropicMessages())
ROUTES = {"/v1/messages": MESSAGES}

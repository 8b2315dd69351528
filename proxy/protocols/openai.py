"""What the OpenAI protocols share: the JSON body (proxy/parse.py), usage and output text as OpenAI reports
them (proxy/sse.py, proxy/usage.py), and OpenAI's error envelope (proxy/errors.py)."""

from __future__ import annotations

from typing import Any

from .. import errors, sse
from ..parse import Endpoint, ParsedRequest, parse
from ..usage import Usage
from .base import Adapter


class OpenAIAdapter(Adapter):
    # The stream reports usage only when asked (``stream_options.include_usage``): quotagate asks on every
    # stream, and drops the usage-only chunk from the client's stream when the client did not ask.
    stream_usage_option = False

    def parse(self, endpoint: Endpoint, raw: bytes) -> ParsedRequest:
        return parse(endpoint, raw, stream_options=self.stream_usage_option)

    def apply(self, req: ParsedRequest, *, model: str | None, cap: int | None) -> None:
        if cap is not None:  # into the cap fields the client used, else the preferred one
            fields = req.endpoint.cap_fields
            for name in [f for f in fields if req.body.get(f) is not None] or fields[:1]:
                req.set(name, cap)
        if model is not None:
            req.set("model", model)
        if self.stream_usage_option and req.stream and not req.wants_usage:
            req.set("stream_options", {**(req.body.get("stream_options") or {}), "include_usage": True})

    def tap(self, req: ParsedRequest) -> sse.StreamTap:
        return sse.StreamTap(strip_usage_chunk=self.stream_usage_option and not req.wants_usage)

    def read_answer(self, raw: bytes) -> tuple[Usage, str | None, Any]:
        return sse.read_body(raw)

    def output_text(self, answer: Any) -> str:
        return sse.body_output_text(answer)

    def object_id(self, answer: Any) -> str | None:
        return sse.object_id_of(answer)

    def render(self, err: errors.ProxyError) -> tuple[int, dict[str, str], bytes]:
        return errors.render(err)

    def stream_error(self, err: errors.ProxyError) -> bytes:
        return errors.sse_error(err)

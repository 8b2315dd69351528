"""OpenAI Responses: ``input`` items + ``instructions`` + ``tools``, part of it possibly stored upstream
(``previous_response_id``, ``conversation``, a stored ``prompt``: reserved up to a bound, not counted); the
stream always reports usage (``response.completed``) and names its errors (``event: error``). Compaction
(``/responses/compact``) is a model call of the same protocol, billed from its ``usage``, with no output cap.
"""

from __future__ import annotations

from ..count import Counter, Estimate
from ..errors import ProxyError
from ..parse import Endpoint, ParsedRequest
from .openai import OpenAIAdapter


class Responses(OpenAIAdapter):
    async def count(self, counter: Counter, req: ParsedRequest, *, model: str, encoding: str | None) -> Estimate:
        b = req.body
        return await counter.aresponses(
            b.get("input"), b.get("instructions"), b.get("tools"), model=model, encoding=encoding
        )

    def stored(self, req: ParsedRequest) -> bool:
        # OpenAI keeps a response unless told not to (`store: false`); a compaction only when asked to
        return req.body.get("store", req.endpoint is RESPONSES) is True

    def stream_error(self, err: ProxyError) -> bytes:
        return b"event: error\n" + super().stream_error(err)


_RESPONSES = Responses()
RESPONSES = Endpoint(
    "responses",
    "/responses",
    "responses",
    ("max_output_tokens",),
    "input",
    protocol=_RESPONSES,
    stored_context=("previous_response_id", "conversation", "prompt"),
)
COMPACT = Endpoint(
    "responses.compact",
    "/responses/compact",
    "responses",
    (),
    "input",
    protocol=_RESPONSES,
    stored_context=("previous_response_id",),
)
ROUTES = {"/v1/responses": RESPONSES, "/v1/responses/compact": COMPACT}

"""Raw request JSON -> a typed view of the governed fields, the rest left untouched.

Only the fields quotagate governs are read (model, stream, stream_options, the output caps, the prompt)
and only those are ever rewritten; ``body_bytes()`` returns the client's bytes unchanged when nothing
was patched.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from .errors import InvalidJSON, InvalidRequest


@dataclass(frozen=True, slots=True)
class Endpoint:
    name: str  # chat | completions | embeddings | responses
    path: str  # upstream path below the provider's base_url
    operation: str  # OpenTelemetry gen_ai.operation.name
    cap_fields: tuple[str, ...]  # output-cap fields, preferred first
    prompt_field: str
    has_output: bool = True
    default_cap: int | None = None  # what the API does when the client gives no cap


CHAT = Endpoint("chat", "/chat/completions", "chat", ("max_completion_tokens", "max_tokens"), "messages")
COMPLETIONS = Endpoint("completions", "/completions", "text_completion", ("max_tokens",), "prompt", default_cap=16)
EMBEDDINGS = Endpoint("embeddings", "/embeddings", "embeddings", (), "input", has_output=False)
RESPONSES = Endpoint("responses", "/responses", "responses", ("max_output_tokens",), "input")

ENDPOINTS: dict[str, Endpoint] = {
    "/v1/chat/completions": CHAT,
    "/v1/completions": COMPLETIONS,
    "/v1/embeddings": EMBEDDINGS,
    "/v1/responses": RESPONSES,
}


@dataclass(slots=True)
class ParsedRequest:
    endpoint: Endpoint
    body: dict[str, Any]
    raw: bytes
    model: str
    stream: bool
    wants_usage: bool  # the client asked for the usage chunk itself
    requested_cap: int | None  # the client's own output cap, if any
    patched: bool = field(default=False)

    def set(self, key: str, value: Any) -> None:
        self.body[key] = value
        self.patched = True

    def body_bytes(self) -> bytes:
        return orjson.dumps(self.body) if self.patched else self.raw


def _int_field(body: dict[str, Any], name: str) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise InvalidRequest(f"Invalid value for '{name}': expected a non-negative integer.", param=name)
    return v


def parse(endpoint: Endpoint, raw: bytes) -> ParsedRequest:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidJSON(
            f"We could not parse the JSON body of your request. ({e}) The OpenAI API expects a JSON payload."
        ) from None
    if not isinstance(body, dict):
        raise InvalidJSON("The request body must be a JSON object.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest("you must provide a model parameter", param="model")
    prompt = body.get(endpoint.prompt_field)
    if prompt is None:
        raise InvalidRequest(f"Missing required parameter: '{endpoint.prompt_field}'.", param=endpoint.prompt_field)
    if endpoint is CHAT and (not isinstance(prompt, list) or not prompt):
        raise InvalidRequest("'messages' must be a non-empty array.", param="messages")
    if endpoint is CHAT and not all(isinstance(m, dict) for m in prompt):
        raise InvalidRequest("Each entry of 'messages' must be an object.", param="messages")
    stream = body.get("stream") is True
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise InvalidRequest("Invalid type for 'stream_options': expected an object.", param="stream_options")
    if options is not None and not stream and endpoint is not RESPONSES:
        raise InvalidRequest(
            "The 'stream_options' parameter is only allowed when 'stream' is enabled.", param="stream_options"
        )
    wants_usage = bool(options and options.get("include_usage") is True)
    cap = None
    for name in endpoint.cap_fields:
        v = _int_field(body, name)
        if v is not None and cap is None:
            cap = v
    return ParsedRequest(endpoint, body, raw, model, stream, wants_usage, cap)

"""Raw request JSON -> a typed view of the governed fields (``ParsedRequest``), the rest left untouched.

Only the fields quotagate governs are read (model, stream, stream_options, the output caps, the prompt,
the service tier) and only those are ever rewritten; ``body_bytes()`` returns the client's bytes unchanged
when nothing was patched.

Validation is the provider's job: a body is refused here only when quotagate itself cannot govern it
(not JSON, not an object, no model to route and price by, an output cap that is not an integer, a
stream whose ``stream_options`` cannot take ``include_usage``). Everything else, including bodies the
provider will reject, is forwarded as it came (README, "What quotagate refuses on its own").
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from .errors import InvalidJSON, InvalidRequest
from .values import value

if TYPE_CHECKING:  # the adapters build on this module
    from .protocols.base import Adapter


@value
class Endpoint:
    """One governed route, and the adapter of its wire protocol (proxy/protocols/) that the pipeline asks."""

    name: str  # chat | completions | embeddings | responses | responses.compact | messages
    path: str  # upstream path below the provider's base_url
    operation: str  # OpenTelemetry gen_ai.operation.name
    cap_fields: tuple[str, ...]  # output-cap fields, preferred first
    prompt_field: str
    protocol: Adapter
    has_output: bool = True
    default_cap: int | None = None  # what the API does when the client gives no cap
    # fields that pull input the client does not send from the provider's storage (the ids are the caller
    # team's or 404, and that input is reserved, not counted)
    stored_context: tuple[str, ...] = ()

    def parse(self, raw: bytes) -> ParsedRequest:
        return self.protocol.parse(self, raw)


@dataclass(slots=True)
class ParsedRequest:
    """The request as quotagate governs it: the governed fields typed, the body as parsed, the client's bytes."""

    endpoint: Endpoint
    body: dict[str, Any]
    raw: bytes
    model: str
    stream: bool
    wants_usage: bool  # the client asked for the usage chunk itself
    requested_cap: int | None  # the client's own output cap, if any
    # Part of the input is out of sight: no prompt field at all, or context the provider stores
    # (previous_response_id, conversation, a stored prompt). It cannot be counted, only bounded.
    unseen_input: bool = False
    # the request marks content for the provider's prompt cache (Anthropic `cache_control`): its input may
    # be written to the cache, at a dearer rate than plain input
    cache_writes: bool = False
    # the service tier asked for (OpenAI auto | default | flex | priority | scale, Anthropic auto |
    # standard_only; None: absent or not a string): priced and reserved by proxy/tiers.py's rules
    service_tier: str | None = None
    patched: bool = field(default=False)

    def set(self, key: str, value: Any) -> None:
        self.body[key] = value
        self.patched = True

    def body_bytes(self) -> bytes:
        return orjson.dumps(self.body) if self.patched else self.raw


def _json_type(v: Any) -> str:
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, float):
        return "a decimal number"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "an object"
    return "null" if v is None else f"the number {v}"


def _int_field(body: dict[str, Any], name: str) -> int | None:
    v = body.get(name)
    if v is None:
        return None
    if not isinstance(v, int) or isinstance(v, bool) or v < 0:
        raise InvalidRequest(
            f"Invalid value for '{name}': expected a non-negative integer, but got {_json_type(v)} instead. "
            "quotagate reserves the output cap before forwarding the request, so it must be an integer.",
            param=name,
        )
    return v


def with_model(raw: bytes, model: str) -> bytes:
    """``raw`` with its ``model`` set to ``model`` (an Azure deployment path names it); a body that is not a
    JSON object is left for ``parse`` to refuse."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw
    if not isinstance(body, dict) or body.get("model") == model:
        return raw
    body["model"] = model
    return orjson.dumps(body)


def parse(endpoint: Endpoint, raw: bytes, *, stream_options: bool) -> ParsedRequest:
    """An OpenAI-shaped body; ``stream_options``: the protocol reports a stream's usage only when asked with
    ``stream_options.include_usage`` (quotagate asks), so that field must be an object on a stream."""
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as e:
        raise InvalidJSON(
            f"We could not parse the JSON body of your request. ({e}) The OpenAI API expects a JSON payload."
        ) from None
    if not isinstance(body, dict):
        raise InvalidJSON(f"The request body must be a JSON object, but got {_json_type(body)}.")
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise InvalidRequest(
            "you must provide a model parameter (a non-empty string): quotagate routes and prices every "
            "request by its model.",
            param="model",
        )
    stream = body.get("stream") is True
    options = body.get("stream_options")
    if stream and stream_options and options is not None and not isinstance(options, dict):
        raise InvalidRequest(
            f"Invalid type for 'stream_options': expected an object, but got {_json_type(options)} instead. "
            "quotagate sets stream_options.include_usage on every stream to meter it.",
            param="stream_options",
        )
    wants_usage = stream and isinstance(options, dict) and options.get("include_usage") is True
    cap = None
    for name in endpoint.cap_fields:
        v = _int_field(body, name)
        if v is not None and cap is None:
            cap = v
    unseen = body.get(endpoint.prompt_field) is None or any(body.get(k) is not None for k in endpoint.stored_context)
    tier = body.get("service_tier")
    tier = tier if isinstance(tier, str) else None
    return ParsedRequest(endpoint, body, raw, model, stream, wants_usage, cap, unseen, service_tier=tier)

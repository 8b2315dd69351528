"""The middleware in front of every /v1/ handler (and /tokenize): record the request, check the key, inject
faults."""

from __future__ import annotations

import asyncio
import hmac
from collections.abc import Awaitable, Callable
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

from .config import parse_controls
from .state import CTX, STATE, Ctx
from .wire import BadRequest, NotFound, json_response, not_found, openai_error

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

_ANTHROPIC_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    529: "overloaded_error",
}


def _phrase_type(status: int) -> str:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Unknown"
    return phrase.replace(" ", "").replace("-", "") + ("" if phrase.endswith("Error") else "Error")


def injected_error(status: int, shape: str) -> web.Response:
    """An error answer in one provider's wire shape."""
    message = f"mock: injected HTTP {status}"
    if shape == "text":
        return web.Response(text=message, status=status, content_type="text/plain")
    if shape == "vllm":
        body: Any = {"error": {"message": message, "type": _phrase_type(status), "param": None, "code": status}}
    elif shape == "sglang":
        body = {
            "object": "error",
            "message": message,
            "type": _phrase_type(status),
            "param": None,
            "code": status,
        }
    elif shape == "azure":  # a prompt refused by Azure's content filter
        body = {
            "error": {
                "message": message,
                "type": None,
                "param": "prompt",
                "code": "content_filter",
                "status": status,
                "innererror": {
                    "code": "ResponsibleAIPolicyViolation",
                    "content_filter_result": {"hate": {"filtered": True, "severity": "high"}},
                },
            }
        }
    elif shape == "anthropic":
        kind = _ANTHROPIC_TYPES.get(status, "api_error")
        body = {"type": "error", "error": {"type": kind, "message": message}}
    elif status == 429:
        body = openai_error(message, "requests", "rate_limit_exceeded")
    elif status >= 500:
        body = openai_error(message, "server_error")
    else:
        body = openai_error(message, "invalid_request_error")
    return json_response(body, status)


def _auth_error(header: str | None, key: str) -> web.Response | None:
    if header is None or not header.startswith("Bearer "):
        return json_response(
            openai_error(
                "You didn't provide an API key. You need to provide your API key in an Authorization header "
                "using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                "invalid_request_error",
            ),
            401,
        )
    given = header[len("Bearer ") :]
    if hmac.compare_digest(given.encode(), key.encode()):
        return None
    masked = given[:3] + "***" + given[-3:] if len(given) > 8 else "***"
    return json_response(
        openai_error(f"Incorrect API key provided: {masked}.", "invalid_request_error", "invalid_api_key"),
        401,
    )


def anthropic_error(message: str, status: int) -> web.Response:
    return json_response(
        {"type": "error", "error": {"type": _ANTHROPIC_TYPES.get(status, "api_error"), "message": message}}, status
    )


def _anthropic_auth_error(request: web.Request, key: str | None) -> web.Response | None:
    """Anthropic's own checks: the key in ``x-api-key`` and an ``anthropic-version`` header."""
    given = request.headers.get("x-api-key")
    if key is not None and (given is None or not hmac.compare_digest(given.encode(), key.encode())):
        return anthropic_error("invalid x-api-key", 401)
    if "anthropic-version" not in request.headers:
        return anthropic_error("anthropic-version: header is required", 400)
    return None


def _azure_error(request: web.Request, key: str | None) -> web.Response | None:
    """Azure OpenAI's own checks: the key in ``api-key``, and an ``api-version`` on deployment paths."""
    given = request.headers.get("api-key")
    if key is not None and (given is None or not hmac.compare_digest(given.encode(), key.encode())):
        message = "Access denied due to invalid subscription key or wrong API endpoint."
        return json_response({"error": {"code": "401", "message": message}}, 401)
    if request.path.startswith("/openai/deployments/") and "api-version" not in request.query:
        return json_response({"error": {"code": "404", "message": "Resource not found"}}, 404)
    return None


@web.middleware
async def gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    if not request.path.startswith(("/v1/", "/openai/")) and request.path != "/tokenize":
        return await handler(request)
    state = request.app[STATE]
    raw = await request.read() if request.body_exists else b""
    try:
        body: Any = orjson.loads(raw) if raw else {}
        parsed_ok = True
    except orjson.JSONDecodeError:
        body, parsed_ok = raw.decode("utf-8", "replace"), False
    state.requests.append(
        {
            "method": request.method,
            "path": request.path,
            "query": dict(request.query),
            "headers": {k.lower(): v for k, v in request.headers.items()},
            "body": body if raw else None,
        }
    )
    anthropic = request.path.startswith("/v1/messages")
    if anthropic:
        denied = _anthropic_auth_error(request, state.config.api_key)
    elif request.path.startswith("/openai/"):
        denied = _azure_error(request, state.config.api_key)
    else:
        denied = (
            _auth_error(request.headers.get("Authorization"), state.config.api_key) if state.config.api_key else None
        )
    if denied is not None:
        return denied
    try:
        return await _checked(request, handler, raw, body, parsed_ok)
    except BadRequest as exc:
        if anthropic:
            return anthropic_error(f"{exc.param}: {exc.message}" if exc.param else exc.message, 400)
        return json_response(openai_error(exc.message, "invalid_request_error", None, exc.param), 400)


async def _checked(
    request: web.Request, handler: Handler, raw: bytes, body: Any, parsed_ok: bool
) -> web.StreamResponse:
    """Controls, faults, then the handler; a ``BadRequest`` raised here is answered by ``gate``."""
    if not parsed_ok or not isinstance(body, dict):
        raise BadRequest("We could not parse the JSON body of your request.")
    controls = parse_controls(body.get("mock"), request.headers)
    if controls.delay_s > 0:
        await asyncio.sleep(controls.delay_s)
    if controls.status is not None:
        anthropic = request.path.startswith("/v1/messages") and controls.error_shape == "openai"
        return injected_error(controls.status, "anthropic" if anthropic else controls.error_shape)
    request[CTX] = Ctx(body, controls)
    try:
        return await handler(request)
    except NotFound as exc:
        return not_found(exc.what, exc.object_id)

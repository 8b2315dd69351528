"""Wire helpers: JSON answers, SSE frames, OpenAI error bodies and exceptions, cursor list pages."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from aiohttp import web

SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
DONE = b"data: [DONE]\n\n"


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class NotFound(Exception):
    def __init__(self, what: str, object_id: str) -> None:
        super().__init__(f"{what} with id '{object_id}' not found.")
        self.what, self.object_id = what, object_id


def json_response(obj: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(obj), status=status, content_type="application/json")


def data_frame(obj: Any) -> bytes:
    return b"data: " + orjson.dumps(obj) + b"\n\n"


def event_frame(obj: dict[str, Any]) -> bytes:
    kind: str = obj["type"]
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(obj) + b"\n\n"


def openai_error(message: str, type_: str, code: str | None = None, param: str | None = None) -> Any:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def not_found(what: str, object_id: str) -> web.Response:
    return json_response(openai_error(f"{what} with id '{object_id}' not found.", "invalid_request_error"), 404)


def page(items: list[dict[str, Any]], query: Mapping[str, str], default_order: str) -> dict[str, Any]:
    """One page of a cursor list (``limit``, ``after``, ``order``), as OpenAI's list endpoints answer."""
    try:
        limit = int(query.get("limit", "20"))
    except ValueError:
        raise BadRequest("Invalid 'limit': expected an integer.", "limit") from None
    if not 1 <= limit <= 100:
        raise BadRequest("Invalid 'limit': expected an integer between 1 and 100.", "limit")
    ordered = items if query.get("order", default_order) == "asc" else items[::-1]
    after = query.get("after")
    if after:
        at = next((i for i, item in enumerate(ordered) if item.get("id") == after), None)
        if at is None:
            raise BadRequest(f"Invalid 'after': no object with id '{after}'.", "after")
        ordered = ordered[at + 1 :]
    data = ordered[:limit]
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": len(ordered) > limit,
    }

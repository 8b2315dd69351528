"""The stored objects' endpoints: responses, chat completions (``store: true``) and conversations (retrieve,
list, update, cancel, delete, items), models, and the recorded requests at /_mock/requests."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from aiohttp import web

from .state import CTX, STATE, Conversation, State, input_items, new_id
from .wire import BadRequest, NotFound, json_response, not_found, page

MODELS = ("gpt-4o-mini", "gpt-4o", "gpt-4.1-mini", "gpt-5-mini", "o3-mini", "text-embedding-3-small")

# ---------------------------------------------------------------- stored responses


async def get_response(request: web.Request) -> web.StreamResponse:
    stored = request.app[STATE].responses.get(rid := request.match_info["id"])
    return json_response(stored.response) if stored is not None else not_found("Response", rid)


async def delete_response(request: web.Request) -> web.StreamResponse:
    if request.app[STATE].responses.pop(rid := request.match_info["id"], None) is None:
        return not_found("Response", rid)
    return json_response({"id": rid, "object": "response", "deleted": True})


async def response_input_items(request: web.Request) -> web.StreamResponse:
    stored = request.app[STATE].responses.get(rid := request.match_info["id"])
    if stored is None:
        return not_found("Response", rid)
    return json_response(page(stored.input_items, request.query, "desc"))


async def cancel_response(request: web.Request) -> web.StreamResponse:
    stored = request.app[STATE].responses.get(rid := request.match_info["id"])
    if stored is None:
        return not_found("Response", rid)
    if not stored.response["background"]:
        raise BadRequest("Only responses created with background=true can be cancelled.")
    if stored.response["status"] in ("queued", "in_progress"):
        stored.response = {**stored.response, "status": "cancelled"}
    return json_response(stored.response)


# ---------------------------------------------------------------- stored chat completions


async def list_chat_completions(request: web.Request) -> web.StreamResponse:
    query = request.query
    metadata = {k[len("metadata[") : -1]: v for k, v in query.items() if k.startswith("metadata[") and k.endswith("]")}
    items = [
        c.completion
        for c in request.app[STATE].completions.values()
        if query.get("model") in (None, c.completion["model"])
        and all(c.completion["metadata"].get(k) == v for k, v in metadata.items())
    ]
    return json_response(page(items, query, "asc"))


async def get_chat_completion(request: web.Request) -> web.StreamResponse:
    stored = request.app[STATE].completions.get(cid := request.match_info["id"])
    return json_response(stored.completion) if stored is not None else not_found("Chat completion", cid)


async def update_chat_completion(request: web.Request) -> web.StreamResponse:
    stored = request.app[STATE].completions.get(cid := request.match_info["id"])
    if stored is None:
        return not_found("Chat completion", cid)
    metadata = request[CTX].body.get("metadata")
    if not isinstance(metadata, dict):
        raise BadRequest("Missing required parameter: 'metadata'.", "metadata")
    stored.completion = {**stored.completion, "metadata": metadata}
    return json_response(stored.completion)


async def delete_chat_completion(request: web.Request) -> web.StreamResponse:
    if request.app[STATE].completions.pop(cid := request.match_info["id"], None) is None:
        return not_found("Chat completion", cid)
    return json_response({"id": cid, "object": "chat.completion.deleted", "deleted": True})


async def chat_completion_messages(request: web.Request) -> web.StreamResponse:
    stored = request.app[STATE].completions.get(cid := request.match_info["id"])
    if stored is None:
        return not_found("Chat completion", cid)
    return json_response(page(stored.messages, request.query, "asc"))


# ---------------------------------------------------------------- conversations


def _conversation_at(request: web.Request) -> Conversation:
    found = request.app[STATE].conversations.get(cid := request.match_info["id"])
    if found is None:
        raise NotFound("Conversation", cid)
    return found


def _new_items(state: State, body: Mapping[str, Any], required: bool) -> list[dict[str, Any]]:
    value = body.get("items")
    if value is None and not required:
        return []
    if not isinstance(value, list):
        raise BadRequest("Invalid 'items': expected an array of input items.", "items")
    return input_items(state, value)


async def create_conversation(request: web.Request) -> web.StreamResponse:
    state, body = request.app[STATE], request[CTX].body
    cid = new_id(state, "conv_")
    conv = {"id": cid, "object": "conversation", "created_at": int(time.time()), "metadata": body.get("metadata") or {}}
    state.conversations[cid] = Conversation(conv, _new_items(state, body, required=False))
    return json_response(conv)


async def get_conversation(request: web.Request) -> web.StreamResponse:
    return json_response(_conversation_at(request).conversation)


async def update_conversation(request: web.Request) -> web.StreamResponse:
    found = _conversation_at(request)
    metadata = request[CTX].body.get("metadata")
    if not isinstance(metadata, dict):
        raise BadRequest("Missing required parameter: 'metadata'.", "metadata")
    found.conversation = {**found.conversation, "metadata": metadata}
    return json_response(found.conversation)


async def delete_conversation(request: web.Request) -> web.StreamResponse:
    cid = _conversation_at(request).conversation["id"]
    del request.app[STATE].conversations[cid]
    return json_response({"id": cid, "object": "conversation.deleted", "deleted": True})


async def conversation_items(request: web.Request) -> web.StreamResponse:
    return json_response(page(_conversation_at(request).items, request.query, "desc"))


async def add_conversation_items(request: web.Request) -> web.StreamResponse:
    found = _conversation_at(request)
    added = _new_items(request.app[STATE], request[CTX].body, required=True)
    found.items += added
    return json_response(
        {
            "object": "list",
            "data": added,
            "first_id": added[0]["id"] if added else None,
            "last_id": added[-1]["id"] if added else None,
            "has_more": False,
        }
    )


def _item_at(request: web.Request) -> tuple[Conversation, dict[str, Any]]:
    found = _conversation_at(request)
    item_id = request.match_info["item_id"]
    item = next((i for i in found.items if i.get("id") == item_id), None)
    if item is None:
        raise NotFound("Item", item_id)
    return found, item


async def get_conversation_item(request: web.Request) -> web.StreamResponse:
    return json_response(_item_at(request)[1])


async def delete_conversation_item(request: web.Request) -> web.StreamResponse:
    found, item = _item_at(request)
    found.items.remove(item)
    return json_response(found.conversation)


# ---------------------------------------------------------------- models and recorded requests


def _model_entry(model_id: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": 1700000000, "owned_by": "quotagate-mock"}


async def list_models(request: web.Request) -> web.StreamResponse:
    return json_response({"object": "list", "data": [_model_entry(m) for m in MODELS]})


async def get_model(request: web.Request) -> web.StreamResponse:
    return json_response(_model_entry(request.match_info["model"]))


async def delete_model(request: web.Request) -> web.StreamResponse:
    return json_response({"id": request.match_info["model"], "object": "model", "deleted": True})


async def recorded_requests(request: web.Request) -> web.StreamResponse:
    return json_response(list(request.app[STATE].requests))


async def clear_requests(request: web.Request) -> web.StreamResponse:
    recorded = request.app[STATE].requests
    count = len(recorded)
    recorded.clear()
    return json_response({"deleted": count})

"""The stateful routes: which one a request's method and path name, the id (or model) in the path, and
what follows the id."""

from __future__ import annotations

from collections.abc import Callable

from ..errors import NotFound, ProxyError, render
from ..protocols.anthropic_messages import MESSAGES
from ..values import value

RESPONSE = "response"
COMPLETION = "chat.completion"
CONVERSATION = "conversation"
_NOUNS = {RESPONSE: "response", COMPLETION: "chat completion", CONVERSATION: "conversation"}
UPSTREAM = {RESPONSE: "/responses", COMPLETION: "/chat/completions", CONVERSATION: "/conversations"}
_PREFIXES = {f"/v1{path}/": kind for kind, path in UPSTREAM.items()}


@value
class Route:
    name: str  # the ledger's endpoint
    method: str
    kind: str | None = None  # the kind of object whose id the path names
    suffix: str = ""  # what follows the id, here and upstream; a trailing "/*" is one more path segment
    # its errors in the shape of its wire protocol (OpenAI's, unless the route is another protocol's)
    render: Callable[[ProxyError], tuple[int, dict[str, str], bytes]] = render


ROUTES = (
    Route("responses.get", "GET", RESPONSE),
    Route("responses.delete", "DELETE", RESPONSE),
    Route("responses.input_items", "GET", RESPONSE, "/input_items"),
    Route("responses.cancel", "POST", RESPONSE, "/cancel"),
    Route("chat.get", "GET", COMPLETION),
    Route("chat.update", "POST", COMPLETION),
    Route("chat.delete", "DELETE", COMPLETION),
    Route("chat.messages", "GET", COMPLETION, "/messages"),
    Route("conversations.get", "GET", CONVERSATION),
    Route("conversations.update", "POST", CONVERSATION),
    Route("conversations.delete", "DELETE", CONVERSATION),
    Route("conversations.items", "GET", CONVERSATION, "/items"),
    Route("conversations.add_items", "POST", CONVERSATION, "/items"),
    Route("conversations.item", "GET", CONVERSATION, "/items/*"),
    Route("conversations.delete_item", "DELETE", CONVERSATION, "/items/*"),
)
INPUT_TOKENS = Route("responses.input_tokens", "POST")
CHAT_LIST = Route("chat.list", "GET")
CONVERSATION_CREATE = Route("conversations.create", "POST")
MODEL = Route("models.get", "GET")
MODEL_DELETE = Route("models.delete", "DELETE")
COUNT_TOKENS = Route("messages.count_tokens", "POST", render=MESSAGES.protocol.render)  # Anthropic's
_FIXED = {
    ("POST", "/v1/messages/count_tokens"): COUNT_TOKENS,
    ("POST", "/v1/responses/input_tokens"): INPUT_TOKENS,
    ("GET", "/v1/chat/completions"): CHAT_LIST,
    ("POST", "/v1/conversations"): CONVERSATION_CREATE,
}


def match(method: str, path: str) -> tuple[Route, str, str] | None:
    """The stateful route of a request, the id (or model) its path names, and what follows the id."""
    fixed = _FIXED.get((method, path))
    if fixed is not None:
        return fixed, "", ""
    if path.startswith("/v1/models/") and len(path) > len("/v1/models/"):
        model = {"GET": MODEL, "DELETE": MODEL_DELETE}.get(method)
        return (model, path[len("/v1/models/") :], "") if model is not None else None
    for prefix, kind in _PREFIXES.items():
        if path.startswith(prefix):
            object_id, slash, rest = path[len(prefix) :].partition("/")
            suffix = slash + rest
            for route in ROUTES:
                if object_id and route.kind == kind and route.method == method and _fits(route.suffix, suffix):
                    return route, object_id, suffix
    return None


def _fits(pattern: str, suffix: str) -> bool:
    if pattern.endswith("/*"):
        head, _, last = suffix.rpartition("/")
        return bool(last) and head == pattern[:-2]
    return pattern == suffix


def not_found(kind: str, object_id: str) -> NotFound:
    return NotFound(f"No {_NOUNS[kind]} found with id '{object_id}'.")

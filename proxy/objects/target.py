"""Where a stateful request goes, once the caller's right to it is established: the provider that keeps
the object its path names, the model it names, or the team's home provider; 404 for anything else."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import orjson

from .. import policy
from ..asgi import Scope
from ..errors import InvalidJSON, InvalidRequest
from ..settings import Settings
from ..store.base import ObjectRecord
from ..values import value
from .ownership import Ownership
from .routes import CONVERSATION, CONVERSATION_CREATE, COUNT_TOKENS, MODEL_DELETE, UPSTREAM, Route, not_found


@value
class Target:
    """Where one stateful request goes, once the caller's right to it is established."""

    provider: str  # configured provider name
    model: str  # configured model name; "" when the request names none
    path: str  # below the provider's base_url, with the query string
    body: bytes | None = None
    record: ObjectRecord | None = None  # the object the path names
    creates: str | None = None  # the kind of object a 2xx answer's `id` names, recorded for ``team``
    team: str = ""


class Targets:
    def __init__(self, settings: Settings, ownership: Ownership) -> None:
        self._s = settings
        self._ownership = ownership

    async def of(self, route: Route, arg: str, sub: str, team: str, scope: Scope, raw: bytes) -> Target:
        """The target of ``route`` naming ``arg`` (an id or a model) then ``sub``, for ``team``."""
        query = scope.get("query_string", b"").decode("latin-1")
        query = f"?{query}" if query else ""
        body = raw or None if route.method == "POST" else None
        if route.kind is not None:
            record = await self._ownership.owned(route.kind, arg, team)
            if record.provider not in self._s.providers:  # the provider has left the config since
                raise not_found(route.kind, arg)
            rest = "/".join(quote(segment, safe="") for segment in sub.split("/"))
            return Target(
                record.provider, "", f"{UPSTREAM[route.kind]}/{quote(arg, safe='')}{rest}{query}", body, record
            )
        if route is MODEL_DELETE:  # a fine-tuned model: only one the team may use, under the provider's name
            model = policy.check_model(self._s, self._s.teams.get(team), arg)
            return Target(model.provider, arg, f"/models/{quote(model.upstream_model or arg, safe=':')}")
        if route is CONVERSATION_CREATE:
            return Target(self._home(team), "", f"/conversations{query}", body, creates=CONVERSATION, team=team)
        if route is COUNT_TOKENS:
            return self._count_tokens(team, raw)
        return await self._input_tokens(team, raw)

    def model(self, team: str, name: str) -> Target:
        """GET /v1/models/{model}: answered here, for a model the team may use."""
        model = policy.check_model(self._s, self._s.teams.get(team), name)
        return Target(model.provider, name, "")

    def providers(self, team: str, model: str | None) -> tuple[list[str], str | None]:
        """Providers to list from, in config order, and the ``model`` filter as the provider knows the model."""
        settings = self._s.teams.get(team)
        if model:
            m = policy.check_model(self._s, settings, model)
            return [m.provider], m.upstream_model or model
        allowed = settings.models if settings is not None and settings.models is not None else tuple(self._s.models)
        return list(dict.fromkeys(self._s.models[m].provider for m in allowed)), None

    def _home(self, team: str) -> str:
        """Where a team's conversations are kept: the provider of its first model, in config order (they
        carry no model to route by)."""
        providers, _ = self.providers(team, None)
        if not providers:
            raise InvalidRequest("This team may use no model, so no provider keeps its conversations.")
        return providers[0]

    def _count_tokens(self, team: str, raw: bytes) -> Target:
        """POST /v1/messages/count_tokens (Anthropic): for a model the team may use, under the provider's name;
        free, so not budgeted (the provider rate-limits it on its own)."""
        body = _object(raw)
        name = body.get("model")
        if not isinstance(name, str) or not name:
            raise InvalidRequest("model: Field required", param="model")
        model = policy.check_model(self._s, self._s.teams.get(team), name)
        if model.upstream_model and model.upstream_model != name:
            body["model"] = model.upstream_model
            raw = orjson.dumps(body)
        return Target(model.provider, name, "/messages/count_tokens", raw)

    async def _input_tokens(self, team: str, raw: bytes) -> Target:
        body = _object(raw)
        previous = await self._ownership.check_body(team, body)
        name = body.get("model")
        if isinstance(name, str) and name:
            model = policy.check_model(self._s, self._s.teams.get(team), name)
            if model.upstream_model and model.upstream_model != name:
                body["model"] = model.upstream_model
                raw = orjson.dumps(body)
            return Target(model.provider, name, "/responses/input_tokens", raw)
        if previous is not None:  # the model of the conversation so far
            return Target(previous.provider, "", "/responses/input_tokens", raw)
        raise InvalidRequest("you must provide a model parameter", param="model")


def _object(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidJSON("We could not parse the JSON body of your request.") from None
    if not isinstance(body, dict):
        raise InvalidJSON("The request body must be a JSON object.")
    return body

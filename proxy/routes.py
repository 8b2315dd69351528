"""Thin handlers. The governed /v1 endpoints go straight to the pipeline over raw ASGI; everything under
/admin is a FastAPI app (speed does not matter there, a typed OpenAPI does)."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import unquote

import orjson

from .admin import admin_app, usage_payload
from .asgi import DEPLOYMENT, Receive, Scope, Send, respond
from .auth import key_from_headers
from .errors import NotFound, ProxyError, render
from .gateway import Gateway
from .objects import Ownership, StatefulRoutes, match, model_entry
from .protocols import ENDPOINTS
from .usage_view import parse_usage_query


class Router:
    def __init__(self, gw: Gateway) -> None:
        self.gw = gw
        self.admin = admin_app(gw.admin)
        ownership = Ownership(gw.store, gw.clock)
        gw.pipeline.objects = ownership  # records the ids it creates, checks the ids it is given
        self.stateful = StatefulRoutes(gw.settings, gw.keyring, ownership, gw.ledger, gw.metrics, gw.clock)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await self._http(scope, receive, send)
        elif kind == "lifespan":
            await self._lifespan(receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                try:
                    await self.gw.start()
                    await self.stateful.start()
                except Exception as e:
                    await send({"type": "lifespan.startup.failed", "message": f"{e.__class__.__name__}: {e}"})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                await self.gw.stop()
                await self.stateful.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        method: str = scope["method"]
        azure = azure_path(path)
        if azure is not None:  # the AzureOpenAI client's paths: served as the /v1 routes they name
            path, deployment = azure
            scope = {**scope, "path": path, DEPLOYMENT: deployment}
        endpoint = ENDPOINTS.get(path)
        if endpoint is not None and method == "POST":
            return await self.gw.pipeline.handle(scope, receive, send, endpoint)
        stateful = match(method, path)
        if stateful is not None:
            return await self.stateful.handle(scope, receive, send, *stateful)
        if endpoint is not None:
            return await self._error(send, _method_not_allowed(method, path))
        if path.startswith("/admin"):
            return await self.admin(scope, receive, send)  # type: ignore[arg-type]
        try:
            if method == "GET" and path == "/v1/models":
                return await self._json(send, await self._models(scope))
            if method == "GET" and path == "/v1/usage":
                return await self._json(send, await self._usage(scope))
            if method == "GET" and path == "/healthz":
                return await self._json(send, {"status": "ok"})
            if method == "GET" and path == "/readyz":
                await self.gw.store.ping()
                return await self._json(send, {"status": "ready", "store": self.gw.settings.store.split(":")[0]})
            if method == "GET" and path == "/metrics":
                body, ctype = await self.gw.scrape()
                return await respond(send, 200, {"content-type": ctype}, body, "")
        except ProxyError as err:
            return await self._error(send, err)
        await self._error(send, NotFound(f"Invalid URL ({method} {path})", code="unknown_url"))

    async def _principal_team(self, scope: Scope) -> str:
        return (await self.gw.keyring.authenticate(key_from_headers(scope["headers"]))).team

    async def _models(self, scope: Scope) -> dict[str, Any]:
        team_name = await self._principal_team(scope)
        team = self.gw.settings.teams.get(team_name)
        allowed = team.models if team is not None and team.models is not None else tuple(self.gw.settings.models)
        created = int(time.time())
        return {
            "object": "list",
            "data": [model_entry(self.gw.settings, m, created) for m in allowed],
        }

    async def _usage(self, scope: Scope) -> dict[str, Any]:
        """The caller's team's usage and every level that applies to its key (a bad query: 400, after the key)."""
        who = await self.gw.keyring.authenticate(key_from_headers(scope["headers"]))
        query = parse_usage_query(scope.get("query_string", b""))
        since = time.time() - 30 * 86400
        return await usage_payload(self.gw.admin, who.team, since=since, query=query, caller=(who.key_name, who.digest))

    async def _json(self, send: Send, obj: Any, status: int = 200) -> None:
        await respond(send, status, {"content-type": "application/json"}, orjson.dumps(obj), "")

    async def _error(self, send: Send, err: ProxyError) -> None:
        status, headers, body = render(err)
        await respond(send, status, headers, body, "")


def azure_path(path: str) -> tuple[str, str | None] | None:
    """An Azure OpenAI path -> (the /v1 path it names, the deployment in it): the v1 form
    ``/openai/v1/...`` and the classic ``/openai/deployments/{deployment}/...`` (whose ``api-version`` query
    is the client's business: quotagate speaks to its own providers with their own)."""
    if path.startswith("/openai/v1/"):
        return path[len("/openai") :], None
    if path.startswith(_DEPLOYMENTS):
        deployment, slash, rest = path[len(_DEPLOYMENTS) :].partition("/")
        if deployment and slash and rest:
            return "/v1/" + rest, unquote(deployment)
    return None


_DEPLOYMENTS = "/openai/deployments/"


def _method_not_allowed(method: str, path: str) -> ProxyError:
    err = ProxyError(f"Invalid method for URL ({method} {path}): only POST is allowed.", code="method_not_allowed")
    err.status = 405
    err.type = "invalid_request_error"
    return err

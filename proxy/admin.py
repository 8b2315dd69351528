"""The admin HTTP API under /admin (FastAPI), guarded by ``admin_key``; off when none is configured.

Read usage and remaining budgets per team and key, override a team's budgets at runtime (persisted in the
store), create and revoke keys. Also builds the payload of the self-service ``GET /v1/usage``.
"""

from __future__ import annotations

import hmac
import secrets
import time
from typing import TYPE_CHECKING, Any

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from .errors import AuthenticationError, InvalidRequest, NotFound, ProxyError, render
from .settings import BudgetSettings, duplicate_budget, duplicate_budget_message, hash_key
from .store.base import KeyRecord
from .units import rfc3339, usd

if TYPE_CHECKING:
    from .app import Gateway


class NewKey(BaseModel):
    team: str
    name: str | None = None


class Budgets(BaseModel):
    """A team's budgets, each as in the config's ``budgets:`` (window, tokens | usd, warn_at, downgrade_to)."""

    budgets: list[dict[str, Any]]


def new_key() -> str:
    return "qg-" + secrets.token_urlsafe(32)


async def create_key(gw: Gateway, team: str, name: str | None) -> tuple[str, KeyRecord]:
    if team not in gw.settings.teams:
        raise NotFound(f"Unknown team '{team}'.", code="team_not_found")
    key = new_key()
    digest = hash_key(key)
    record = KeyRecord(digest, team, name or f"key-{digest[:8]}", time.time())
    await gw.store.put_key(record)
    gw.accountant.tags.add("{" + team + "}")
    return key, record


async def usage_payload(gw: Gateway, team: str, *, since: float) -> dict[str, Any]:
    rows = await gw.store.usage(since, team)
    keys = [k for k in gw.settings.keys if k.team == team]
    return {
        "team": team,
        "since": rfc3339(since),
        "usage": [
            {
                "model": r.model,
                "requests": r.requests,
                "input_tokens": r.input_tokens,
                "cached_input_tokens": r.cached_input_tokens,
                "output_tokens": r.output_tokens,
                "reasoning_tokens": r.reasoning_tokens,
                "cost_usd": usd(r.cost_micro_usd),
                "cost_micro_usd": r.cost_micro_usd,
            }
            for r in rows
        ],
        "budgets": await gw.accountant.budget_status(team),
        "keys": {
            k.display_name: [b for b in await gw.accountant.budget_status(team, k.digest) if b["scope"] == "key"]
            for k in keys
            if k.budgets
        },
    }


def admin_app(gw: Gateway) -> FastAPI:
    # No Swagger UI: it loads its assets from a CDN (nothing offline would render) and no installed package
    # ships them. The OpenAPI document is served below, behind the admin guard like everything here.
    app = FastAPI(title="quotagate admin", docs_url=None, redoc_url=None, openapi_url=None)

    @app.exception_handler(ProxyError)
    async def _proxy_error(_: Request, err: ProxyError) -> JSONResponse:
        status, headers, _body = render(err)
        return JSONResponse(
            content=err.body(),
            status_code=status,
            headers={k: v for k, v in headers.items() if k != "content-type"},
        )

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        first = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ())]
        where = ".".join(loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc)
        bad = InvalidRequest(f"{where}: {first.get('msg')}" if where else str(first.get("msg")), param=where or None)
        return await _proxy_error(request, bad)

    @app.exception_handler(HTTPException)
    async def _http(request: Request, err: HTTPException) -> JSONResponse:
        wrapped = ProxyError(str(err.detail), code="not_found" if err.status_code == 404 else None)
        wrapped.status, wrapped.type = err.status_code, "invalid_request_error"
        return await _proxy_error(request, wrapped)

    def guard(authorization: str | None = Header(default=None)) -> None:
        expected = gw.settings.admin_key
        if expected is None:
            raise NotFound("The admin API is off: no admin_key is configured.", code="admin_disabled")
        token = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(hash_key(token), hash_key(expected)):
            raise AuthenticationError("Invalid admin key.", code="invalid_api_key")

    def team_or_404(team: str) -> str:
        if team not in gw.settings.teams:
            raise NotFound(f"Unknown team '{team}'.", code="team_not_found")
        return team

    @app.get("/admin/openapi.json", dependencies=[Depends(guard)], include_in_schema=False)
    async def openapi() -> dict[str, Any]:
        return app.openapi()

    @app.get("/admin/usage", dependencies=[Depends(guard)])
    async def usage(team: str | None = None, since_seconds: float = 7 * 86400) -> dict[str, Any]:
        teams = [team_or_404(team)] if team else list(gw.settings.teams)
        since = time.time() - since_seconds
        return {"teams": [await usage_payload(gw, t, since=since) for t in teams]}

    @app.get("/admin/teams/{team}/budgets", dependencies=[Depends(guard)])
    async def get_budgets(team: str) -> dict[str, Any]:
        team_or_404(team)
        return {
            "team": team,
            "budgets": [b.model_dump(mode="json", exclude_none=True) for b in gw.accountant.team_budgets(team)],
            "status": await gw.accountant.budget_status(team),
        }

    @app.put("/admin/teams/{team}/budgets", dependencies=[Depends(guard)])
    async def put_budgets(team: str, body: Budgets | list[dict[str, Any]]) -> dict[str, Any]:
        team_or_404(team)
        given = body.budgets if isinstance(body, Budgets) else body  # {"budgets": [...]}, or the bare list
        try:
            budgets = [BudgetSettings.model_validate(b) for b in given]
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InvalidRequest(f"budgets.{where}: {first['msg']}", param="budgets") from None
        for b in budgets:
            if b.downgrade_to is not None and b.downgrade_to not in gw.settings.models:
                raise InvalidRequest(f"unknown model {b.downgrade_to!r} in downgrade_to", param="budgets")
        dup = duplicate_budget(budgets)
        if dup is not None:
            raise InvalidRequest(f"budgets.{dup[1]}: {duplicate_budget_message(budgets, dup)}", param="budgets")
        await gw.accountant.set_override(team, budgets)
        return await get_budgets(team)

    @app.post("/admin/keys", dependencies=[Depends(guard)], status_code=201)
    async def post_key(body: NewKey) -> dict[str, Any]:
        key, record = await create_key(gw, body.team, body.name)
        return {"key": key, "sha256": record.sha256, "team": record.team, "name": record.name}

    @app.get("/admin/keys", dependencies=[Depends(guard)])
    async def list_keys(team: str | None = None) -> dict[str, Any]:
        config = [
            {"sha256": k.digest, "team": k.team, "name": k.display_name, "source": "config", "revoked": False}
            for k in gw.settings.keys
            if team is None or k.team == team
        ]
        stored = [
            {"sha256": r.sha256, "team": r.team, "name": r.name, "source": "store", "revoked": r.revoked}
            for r in await gw.store.list_keys(team)
        ]
        return {"keys": config + stored}

    @app.delete("/admin/keys/{sha256}", dependencies=[Depends(guard)])
    async def revoke_key(sha256: str) -> dict[str, Any]:
        if not await gw.store.revoke_key(sha256):
            raise NotFound("No such runtime key (config keys are revoked by editing the config).", code="key_not_found")
        gw.keyring.forget(sha256)
        return {"sha256": sha256, "revoked": True}

    return app

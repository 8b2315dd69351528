"""The admin HTTP API under /admin (FastAPI), guarded by ``admin_key``; off when none is configured.

Read usage and remaining budgets per team and key, override a team's budgets at runtime (persisted in the
store), create and revoke keys. Also builds the payload of the self-service ``GET /v1/usage`` (its ``levels``:
proxy/usage_view.py).

It is given the few services it uses (``AdminServices``), never the gateway: nothing here reaches the
request path.
"""

from __future__ import annotations

import hmac
import secrets
import time
from collections.abc import Collection
from typing import Any, Literal, Protocol

from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException

from .auth import KeyRing
from .budgets import BudgetsInForce
from .errors import AuthenticationError, InvalidRequest, NotFound, ProxyError, render
from .settings import BudgetSettings, Settings, Window, duplicate_budget, duplicate_budget_message, hash_key
from .store.base import KeyRecord, UsageRow
from .units import rfc3339, usd
from .usage_view import TOP_DEFAULT, LevelsView, TopSpenders, UsageQuery, usage_query
from .values import value


class KeyStore(Protocol):
    """The runtime keys (the store)."""

    async def put_key(self, record: KeyRecord) -> None: ...
    async def revoke_key(self, sha256: str) -> bool: ...
    async def list_keys(self, team: str | None = None) -> list[KeyRecord]: ...


class UsageReads(TopSpenders, Protocol):
    """Ledger aggregates (the ledger sink): usage per model, the top end users."""

    async def usage(self, since: float, team: str | None = None) -> list[UsageRow]: ...


@value
class AdminServices:
    settings: Settings
    budgets: BudgetsInForce
    keys: KeyStore
    keyring: KeyRing  # forgets a revoked key's cached lookup at once
    usage: UsageReads


class NewKey(BaseModel):
    team: str
    name: str | None = None


class Budgets(BaseModel):
    """A team's budgets, each as in the config's ``budgets:`` (window, tokens | usd, warn_at, downgrade_to)."""

    budgets: list[dict[str, Any]]


class BudgetReset(BaseModel):
    """Which of a team's budgets to start over: every one on ``window``, or only that ``unit``'s."""

    window: Window
    unit: Literal["tokens", "usd"] | None = None


def new_key() -> str:
    return "qg-" + secrets.token_urlsafe(32)


async def create_key(svc: AdminServices, team: str, name: str | None) -> tuple[str, KeyRecord]:
    if team not in svc.settings.teams:
        raise NotFound(f"Unknown team '{team}'.", code="team_not_found")
    key = new_key()
    digest = hash_key(key)
    record = KeyRecord(digest, team, name or f"key-{digest[:8]}", time.time())
    await svc.keys.put_key(record)  # its leases are reaped with its team's, a configured team
    return key, record


async def usage_payload(
    svc: AdminServices,
    team: str,
    *,
    since: float,
    query: UsageQuery = UsageQuery(),
    caller: tuple[str, str] | None = None,
) -> dict[str, Any]:
    """A team's usage per model since ``since`` and its budgets (``budgets``, ``keys``: the first fields, kept
    as they were), then every level that applies (proxy/usage_view.py); ``caller``: the calling key's (name,
    digest) on ``GET /v1/usage``."""
    rows = await svc.usage.usage(since, team)
    keys = [k for k in svc.settings.keys if k.team == team]
    levels = await LevelsView(svc.settings, svc.budgets, svc.usage).levels(team, query, caller)
    return {
        "team": team,
        "since": rfc3339(since),
        "usage": [_usage_row(r) for r in rows],
        "budgets": [b.to_json() for b in await svc.budgets.budget_status(team)],
        "keys": {
            k.display_name: [b.to_json() for b in await svc.budgets.budget_status(team, k.digest) if b.scope == "key"]
            for k in keys
            if k.budgets
        },
        **levels,
    }


def _usage_row(r: UsageRow) -> dict[str, Any]:
    return {
        "model": r.model,
        "requests": r.requests,
        "input_tokens": r.input_tokens,
        "cached_input_tokens": r.cached_input_tokens,
        "output_tokens": r.output_tokens,
        "reasoning_tokens": r.reasoning_tokens,
        "cost_usd": usd(r.cost_micro_usd),
        "cost_micro_usd": r.cost_micro_usd,
    }


# ---- errors in the OpenAI envelope --------------------------------------------------------------------
async def _proxy_error(_: Request, err: ProxyError) -> JSONResponse:
    status, headers, _body = render(err)
    return JSONResponse(
        content=err.body(),
        status_code=status,
        headers={k: v for k, v in headers.items() if k != "content-type"},
    )


async def _invalid(request: Request, err: RequestValidationError) -> JSONResponse:
    first = err.errors()[0] if err.errors() else {"loc": (), "msg": "invalid request"}
    loc = [str(p) for p in first.get("loc", ())]
    where = ".".join(loc[1:] if loc and loc[0] in ("body", "query", "path", "header") else loc)
    bad = InvalidRequest(f"{where}: {first.get('msg')}" if where else str(first.get("msg")), param=where or None)
    return await _proxy_error(request, bad)


async def _http(request: Request, err: HTTPException) -> JSONResponse:
    wrapped = ProxyError(str(err.detail), code="not_found" if err.status_code == 404 else None)
    wrapped.status, wrapped.type = err.status_code, "invalid_request_error"
    return await _proxy_error(request, wrapped)


async def _openapi(request: Request) -> dict[str, Any]:
    spec: dict[str, Any] = request.app.openapi()
    return spec


def _budgets_given(body: Budgets | list[dict[str, Any]], models: Collection[str]) -> list[BudgetSettings]:
    """The PUT body's budgets, validated as the config's are (one per window and unit, known models)."""
    given = body.budgets if isinstance(body, Budgets) else body  # {"budgets": [...]}, or the bare list
    budgets: list[BudgetSettings] = []
    for i, raw in enumerate(given):  # errors name the budget's index, as config errors do
        try:
            budgets.append(BudgetSettings.model_validate(raw))
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(str(p) for p in (i, *first["loc"]))
            raise InvalidRequest(f"budgets.{where}: {first['msg']}", param="budgets") from None
    for i, budget in enumerate(budgets):
        if budget.downgrade_to is not None and budget.downgrade_to not in models:
            raise InvalidRequest(f"budgets.{i}.downgrade_to: unknown model {budget.downgrade_to!r}", param="budgets")
    dup = duplicate_budget(budgets)
    if dup is not None:
        raise InvalidRequest(f"budgets.{dup[1]}: {duplicate_budget_message(budgets, dup)}", param="budgets")
    return budgets


# ---- routes -------------------------------------------------------------------------------------------
class _Routes:
    """The handlers; their names are the OpenAPI operation ids."""

    def __init__(self, svc: AdminServices) -> None:
        self.svc = svc

    def guard(self, authorization: str | None = Header(default=None)) -> None:
        expected = self.svc.settings.admin_key
        if expected is None:
            raise NotFound("The admin API is off: no admin_key is configured.", code="admin_disabled")
        token = (authorization or "").removeprefix("Bearer ").strip()
        if not hmac.compare_digest(hash_key(token), hash_key(expected)):
            raise AuthenticationError("Invalid admin key.", code="invalid_api_key")

    def team_or_404(self, team: str) -> str:
        if team not in self.svc.settings.teams:
            raise NotFound(f"Unknown team '{team}'.", code="team_not_found")
        return team

    async def usage(
        self,
        team: str | None = None,
        since_seconds: float = 7 * 86400,
        end_user: str | None = None,
        tag: str | None = None,
        session: str | None = None,
        top: int = TOP_DEFAULT,
    ) -> dict[str, Any]:
        """Every team's usage and levels (``team``: one team's); ``end_user`` / ``tag`` / ``session``: one
        entity's status, within ``team`` (required with them)."""
        query = usage_query(end_user, tag, session, top)
        if team is None and query != UsageQuery(top=query.top):
            raise InvalidRequest("end_user, tag and session name an entity of one team: give `team` too", param="team")
        teams = [self.team_or_404(team)] if team else list(self.svc.settings.teams)
        since = time.time() - since_seconds
        return {"teams": [await usage_payload(self.svc, t, since=since, query=query) for t in teams]}

    async def get_budgets(self, team: str) -> dict[str, Any]:
        self.team_or_404(team)
        budgets = self.svc.budgets
        return {
            "team": team,
            "budgets": [b.model_dump(mode="json", exclude_defaults=True) for b in budgets.team_budgets(team)],
            "status": [b.to_json() for b in await budgets.budget_status(team)],
        }

    async def put_budgets(self, team: str, body: Budgets | list[dict[str, Any]]) -> dict[str, Any]:
        self.team_or_404(team)
        await self.svc.budgets.set_override(team, _budgets_given(body, self.svc.settings.models))
        return await self.get_budgets(team)

    async def reset_budgets(self, team: str, body: BudgetReset) -> dict[str, Any]:
        """Start the team's budgets on a window (and unit) over, without moving the window."""
        self.team_or_404(team)
        if not await self.svc.budgets.reset(team, body.window, body.unit):
            what = f"{body.window} {body.unit}" if body.unit else body.window
            raise InvalidRequest(f"team {team!r} has no {what} budget in force", param="window")
        return await self.get_budgets(team)

    async def post_key(self, body: NewKey) -> dict[str, Any]:
        key, record = await create_key(self.svc, body.team, body.name)
        return {"key": key, "sha256": record.sha256, "team": record.team, "name": record.name}

    async def list_keys(self, team: str | None = None) -> dict[str, Any]:
        config = [
            {"sha256": k.digest, "team": k.team, "name": k.display_name, "source": "config", "revoked": False}
            for k in self.svc.settings.keys
            if team is None or k.team == team
        ]
        stored = [
            {"sha256": r.sha256, "team": r.team, "name": r.name, "source": "store", "revoked": r.revoked}
            for r in await self.svc.keys.list_keys(team)
        ]
        return {"keys": config + stored}

    async def revoke_key(self, sha256: str) -> dict[str, Any]:
        if not await self.svc.keys.revoke_key(sha256):
            raise NotFound("No such runtime key (config keys are revoked by editing the config).", code="key_not_found")
        self.svc.keyring.forget(sha256)
        return {"sha256": sha256, "revoked": True}


def admin_app(svc: AdminServices) -> FastAPI:
    # No Swagger UI: it loads its assets from a CDN (nothing offline would render) and no installed package
    # ships them. The OpenAPI document is served below, behind the admin guard like everything here.
    app = FastAPI(title="quotagate admin", docs_url=None, redoc_url=None, openapi_url=None)
    app.exception_handler(ProxyError)(_proxy_error)
    app.exception_handler(RequestValidationError)(_invalid)
    app.exception_handler(HTTPException)(_http)
    r = _Routes(svc)
    guarded = [Depends(r.guard)]
    app.add_api_route("/admin/openapi.json", _openapi, methods=["GET"], dependencies=guarded, include_in_schema=False)
    app.add_api_route("/admin/usage", r.usage, methods=["GET"], dependencies=guarded)
    app.add_api_route("/admin/teams/{team}/budgets", r.get_budgets, methods=["GET"], dependencies=guarded)
    app.add_api_route("/admin/teams/{team}/budgets", r.put_budgets, methods=["PUT"], dependencies=guarded)
    app.add_api_route("/admin/teams/{team}/budgets/reset", r.reset_budgets, methods=["POST"], dependencies=guarded)
    app.add_api_route("/admin/keys", r.post_key, methods=["POST"], dependencies=guarded, status_code=201)
    app.add_api_route("/admin/keys", r.list_keys, methods=["GET"], dependencies=guarded)
    app.add_api_route("/admin/keys/{sha256}", r.revoke_key, methods=["DELETE"], dependencies=guarded)
    return app

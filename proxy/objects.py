"""The stateful OpenAI endpoints, isolated by team: reading, listing, cancelling and deleting the responses,
chat completions and conversations that requests through quotagate created, counting input tokens,
reading and deleting one model.

Every id a provider creates for a request (a response's, a chat completion's, stored or not: only the
provider knows; a conversation's, from POST /v1/conversations) is recorded with the caller's team and the
provider (``Ownership.created``). A request naming an id goes to that provider only if the id is the caller
team's; another team's id and one quotagate never saw get the same 404 and no upstream call, so a team
cannot even learn that someone else's id exists. ``previous_response_id`` and ``conversation`` on POST
/v1/responses (and ``previous_response_id`` on /v1/responses/compact and input_tokens) are checked the same
way before anything is forwarded. A deleted id stays its team's: whether it still exists is the provider's
to say, so later requests naming it are forwarded (the list skips it). The list of stored chat completions
is the provider's list with only the caller team's entries kept.

None of this is budgeted (no tokens): each request is counted in ``quotagate_requests`` (operation
``stateful``) and written to the ledger as its own endpoint (``responses.get``, ...), cost 0, not charged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import aiohttp
import orjson

from . import policy
from .auth import KeyRing, key_from_headers
from .errors import (
    InvalidJSON,
    InvalidRequest,
    NotFound,
    ProxyError,
    StoreUnavailable,
    UpstreamError,
    UpstreamTimeout,
    UpstreamUnreachable,
    normalise_upstream_error,
    render,
    sse_error,
)
from .ledger import Ledger
from .metrics import Metrics, RequestOutcome
from .parse import Endpoint, ParsedRequest
from .pipeline import Receive, Scope, Send, _read_body, _relayed, _respond, outcome_of
from .settings import ProviderSettings, Settings
from .settle import ids
from .sse import object_id_of
from .store.base import LedgerRecord, ObjectRecord, Store

log = logging.getLogger("quotagate.objects")

RESPONSE = "response"
COMPLETION = "chat.completion"
CONVERSATION = "conversation"
_NOUNS = {RESPONSE: "response", COMPLETION: "chat completion", CONVERSATION: "conversation"}
_CREATED_BY = {"responses": RESPONSE, "chat": COMPLETION}  # governed endpoint -> what it creates
_UPSTREAM = {RESPONSE: "/responses", COMPLETION: "/chat/completions", CONVERSATION: "/conversations"}
_PREFIXES = {f"/v1{path}/": kind for kind, path in _UPSTREAM.items()}
# Client headers these endpoints pass on (nothing else: there is no body to govern, only ids to guard).
_PASSED = frozenset({b"accept", b"openai-beta", b"user-agent", b"x-request-id"})
LIST_PAGE = 100  # provider list entries read per upstream page when filtering stored chat completions
LIST_PAGES = 10  # upstream pages read at most for one list request


@dataclass(frozen=True, slots=True)
class Route:
    name: str  # the ledger's endpoint
    method: str
    kind: str | None = None  # the kind of object whose id the path names
    suffix: str = ""  # what follows the id, here and upstream; a trailing "/*" is one more path segment


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
_FIXED = {
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


def model_entry(settings: Settings, name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": settings.models[name].provider}


def not_found(kind: str, object_id: str) -> NotFound:
    return NotFound(f"No {_NOUNS[kind]} found with id '{object_id}'.")


class Ownership:
    """Which team each object created through quotagate belongs to: the one place that says yes or 404."""

    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self._store = store
        self._clock = clock
        # Recorded here, the store write still under way: a client that names an id right after receiving
        # it must not get 404 because the write is a little late.
        self._fresh: dict[tuple[str, str], ObjectRecord] = {}

    def created(self, endpoint: Endpoint | str, object_id: str, team: str | None, provider: str) -> Awaitable[None]:
        """Record an id the provider created for ``team``'s request (a governed endpoint's, or a kind): known
        in this process at once, in the store once the returned awaitable has run (a store outage only logs)."""
        kind = _CREATED_BY.get(endpoint.name) if isinstance(endpoint, Endpoint) else endpoint
        if kind is None or not team:
            return self._save(None)
        record = ObjectRecord(kind, object_id, team, provider, self._clock())
        self._fresh[(kind, object_id)] = record
        return self._save(record)

    async def _save(self, record: ObjectRecord | None) -> None:
        if record is None:
            return
        try:
            await self._store.put_object(record)
        except StoreUnavailable as e:  # the owner's later requests naming it get 404
            log.warning("%s %s of team %s not recorded: %s", record.kind, record.object_id, record.team, e.message)
        finally:
            self._fresh.pop((record.kind, record.object_id), None)

    async def owned(self, kind: str, object_id: str, team: str, refusal: ProxyError | None = None) -> ObjectRecord:
        """The record of ``team``'s object ``object_id`` (deleted or not: the provider says whether it is still
        there), else ``refusal`` (a 404) is raised."""
        record = self._fresh.get((kind, object_id))
        if record is None:
            record = (await self._store.find_objects(kind, [object_id])).get(object_id)
        if record is None or record.team != team:
            raise refusal or not_found(kind, object_id)
        return record

    async def owned_ids(self, kind: str, team: str, object_ids: Sequence[str]) -> set[str]:
        found = await self._store.find_objects(kind, object_ids)
        found.update({i: r for (k, i), r in self._fresh.items() if k == kind and i in object_ids})
        return {i for i, r in found.items() if r.team == team and not r.deleted}

    async def deleted(self, record: ObjectRecord) -> None:
        try:
            await self._store.delete_object(record.kind, record.object_id)
        except StoreUnavailable as e:  # only the list reads the mark; the provider no longer lists it anyway
            log.warning("%s %s deleted upstream, not marked: %s", record.kind, record.object_id, e.message)

    async def check_references(self, team: str, req: ParsedRequest) -> None:
        """POST /v1/responses (and /compact) may continue only the caller team's response or conversation."""
        if req.endpoint.stored_context:
            await self.check_body(team, req.body)

    async def check_body(self, team: str, body: dict[str, Any]) -> ObjectRecord | None:
        """Check ``previous_response_id`` and ``conversation``; the previous response's record, if any."""
        previous = body.get("previous_response_id")
        record = None
        if isinstance(previous, str):
            refusal = NotFound(
                f"Previous response with id '{previous}' not found.",
                code="previous_response_not_found",
                param="previous_response_id",
            )
            record = await self.owned(RESPONSE, previous, team, refusal)
        conversation = body.get("conversation")
        if isinstance(conversation, dict):
            conversation = conversation.get("id")
        if isinstance(conversation, str):
            refusal = NotFound(f"Conversation with id '{conversation}' not found.", param="conversation")
            await self.owned(CONVERSATION, conversation, team, refusal)
        return record


@dataclass(frozen=True, slots=True)
class Target:
    """Where one stateful request goes, once the caller's right to it is established."""

    provider: str  # configured provider name
    model: str  # configured model name; "" when the request names none
    path: str  # below the provider's base_url, with the query string
    body: bytes | None = None
    record: ObjectRecord | None = None  # the object the path names
    creates: str | None = None  # the kind of object a 2xx answer's `id` names, recorded for ``team``
    team: str = ""


@dataclass(frozen=True, slots=True)
class Relayed:
    status: int
    upstream_s: float
    error: ProxyError | None = None
    streamed: bool = False  # the status and some of the body were already sent
    left: bool = False  # the client went away mid-stream


class StatefulRoutes:
    """The handlers: authenticate, check ownership, forward with the provider's key, count, record."""

    def __init__(
        self,
        settings: Settings,
        keyring: KeyRing,
        ownership: Ownership,
        ledger: Ledger,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._s = settings
        self._keyring = keyring
        self.ownership = ownership
        self._ledger = ledger
        self._metrics = metrics
        self._clock = clock
        self._ids = ids("qg-")
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        timeout = aiohttp.ClientTimeout(
            total=None, connect=self._s.upstream_connect_timeout_s, sock_read=self._s.upstream_timeout_s
        )
        self._session = aiohttp.ClientSession(
            timeout=timeout, auto_decompress=False, skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type")
        )

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def handle(self, scope: Scope, receive: Receive, send: Send, route: Route, arg: str, sub: str = "") -> None:
        rid, ts, t0 = next(self._ids), self._clock(), time.perf_counter()
        team: str | None = None
        key_name = ""
        target: Target | None = None
        done = Relayed(0, 0.0)
        try:
            principal = await self._keyring.authenticate(key_from_headers(scope["headers"]))
            team, key_name = principal.team, principal.key_name
            raw = await _read_body(receive, self._s.max_body_bytes)
            if route is MODEL:
                model = policy.check_model(self._s, self._s.teams.get(team), arg)
                target = Target(model.provider, arg, "")
                body = orjson.dumps(model_entry(self._s, arg, int(time.time())))
                await _respond(send, 200, {"content-type": "application/json"}, body, rid)
                done = Relayed(200, 0.0)
            elif route is CHAT_LIST:
                done = await self._list(scope, send, team, rid)
            else:
                target = await self._target(route, arg, sub, team, scope, raw)
                done = await self._forward(scope, receive, send, target, rid)
                if done.error is None and target.record is not None and route.method == "DELETE" and not sub:
                    await self.ownership.deleted(target.record)
        except ProxyError as err:
            done = Relayed(err.status, done.upstream_s, err)
        if done.error is not None and not done.streamed:
            status, headers, body = render(done.error)
            await _respond(send, status, headers, body, rid)
        self._record(route, rid, ts, t0, team, key_name, target, done)

    async def _target(self, route: Route, arg: str, sub: str, team: str, scope: Scope, raw: bytes) -> Target:
        query = scope.get("query_string", b"").decode("latin-1")
        query = f"?{query}" if query else ""
        body = raw or None if route.method == "POST" else None
        if route.kind is not None:
            record = await self.ownership.owned(route.kind, arg, team)
            if record.provider not in self._s.providers:  # the provider has left the config since
                raise not_found(route.kind, arg)
            rest = "/".join(quote(segment, safe="") for segment in sub.split("/"))
            return Target(
                record.provider, "", f"{_UPSTREAM[route.kind]}/{quote(arg, safe='')}{rest}{query}", body, record
            )
        if route is MODEL_DELETE:  # a fine-tuned model: only one the team may use, under the provider's name
            model = policy.check_model(self._s, self._s.teams.get(team), arg)
            return Target(model.provider, arg, f"/models/{quote(model.upstream_model or arg, safe=':')}")
        if route is CONVERSATION_CREATE:
            return Target(self._home(team), "", f"/conversations{query}", body, creates=CONVERSATION, team=team)
        return await self._input_tokens(team, raw)

    def _home(self, team: str) -> str:
        """Where a team's conversations are kept: the provider of its first model, in config order (they
        carry no model to route by)."""
        providers, _ = self._list_providers(team, None)
        if not providers:
            raise InvalidRequest("This team may use no model, so no provider keeps its conversations.")
        return providers[0]

    async def _input_tokens(self, team: str, raw: bytes) -> Target:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            raise InvalidJSON("We could not parse the JSON body of your request.") from None
        if not isinstance(body, dict):
            raise InvalidJSON("The request body must be a JSON object.")
        previous = await self.ownership.check_body(team, body)
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

    # ---- upstream --------------------------------------------------------------------------------------
    async def _request(
        self, scope: Scope, provider: ProviderSettings, method: str, path: str, body: bytes | None, rid: str
    ) -> aiohttp.ClientResponse:
        assert self._session is not None, "StatefulRoutes.start() was not awaited"
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in _PASSED}
        headers.setdefault("x-request-id", rid)
        headers["accept-encoding"] = "identity"
        if body is not None:
            headers["content-type"] = "application/json"
        headers.update(provider.headers)
        if provider.api_key and provider.kind == "azure":
            headers["api-key"] = provider.api_key
        elif provider.api_key:
            headers["authorization"] = f"Bearer {provider.api_key}"
        try:
            return await self._session.request(method, _url(provider, path), data=body, headers=headers)
        except TimeoutError:
            raise UpstreamTimeout("The upstream provider did not answer in time.") from None
        except aiohttp.ClientError as e:
            raise UpstreamUnreachable(f"Could not reach the upstream provider: {e.__class__.__name__}.") from None

    async def _forward(self, scope: Scope, receive: Receive, send: Send, target: Target, rid: str) -> Relayed:
        provider = self._s.providers[target.provider]
        t_up = time.perf_counter()
        try:
            resp = await self._request(scope, provider, scope["method"], target.path, target.body, rid)
        except ProxyError as err:
            return Relayed(err.status, time.perf_counter() - t_up, err)
        try:
            if resp.status >= 400:
                raw = await resp.read()
                return Relayed(resp.status, time.perf_counter() - t_up, normalise_upstream_error(resp.status, raw))
            if resp.headers.get("content-type", "").startswith("text/event-stream"):
                return await self._relay_stream(receive, send, resp, rid, t_up)
            raw = await resp.read()
            saving = self._created(target, raw)  # known before the client can name it
            await _respond(send, resp.status, _relayed(resp), raw, rid)
            if saving is not None:
                await saving
            return Relayed(resp.status, time.perf_counter() - t_up)
        except (aiohttp.ClientError, TimeoutError) as e:
            return Relayed(502, time.perf_counter() - t_up, _broken(e))
        finally:
            resp.release()

    def _created(self, target: Target, raw: bytes) -> Awaitable[None] | None:
        if target.creates is None:
            return None
        try:
            found = object_id_of(orjson.loads(raw))
        except orjson.JSONDecodeError:
            return None
        return self.ownership.created(target.creates, found, target.team, target.provider) if found else None

    async def _relay_stream(
        self, receive: Receive, send: Send, resp: aiohttp.ClientResponse, rid: str, t_up: float
    ) -> Relayed:
        """A replayed response stream (GET /v1/responses/{id}?stream=true), passed on as it arrives."""
        headers = _relayed(resp)
        headers.setdefault("x-request-id", rid)
        headers["x-quotagate-request-id"] = rid
        raw_headers = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        await send({"type": "http.response.start", "status": resp.status, "headers": raw_headers})

        async def pump() -> None:
            async for chunk in resp.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})

        async def gone() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass

        relay, watch = asyncio.ensure_future(pump()), asyncio.ensure_future(gone())
        try:
            await asyncio.wait((relay, watch), return_when=asyncio.FIRST_COMPLETED)
        finally:
            relay.cancel()
            watch.cancel()
            await asyncio.gather(relay, watch, return_exceptions=True)
        if relay.cancelled():  # the client left first
            return Relayed(resp.status, time.perf_counter() - t_up, streamed=True, left=True)
        broke = relay.exception()
        if isinstance(broke, aiohttp.ClientError | TimeoutError):
            err = _broken(broke)
            await send({"type": "http.response.body", "body": b"event: error\n" + sse_error(err), "more_body": False})
            return Relayed(resp.status, time.perf_counter() - t_up, err, streamed=True)
        if broke is not None:
            raise broke
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return Relayed(resp.status, time.perf_counter() - t_up, streamed=True)

    # ---- GET /v1/chat/completions: the provider's list, only the caller team's entries -----------------
    async def _list(self, scope: Scope, send: Send, team: str, rid: str) -> Relayed:
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        asked = dict(query)
        limit, as_given = _limit(asked.get("limit"))
        params = [(k, v) for k, v in query if k not in ("limit", "after", "model")]
        providers, model = self._list_providers(team, asked.get("model"))
        if model is not None:
            params.append(("model", model))
        after = asked.get("after") or None
        if after is not None:  # continue where the caller's last page ended, at that entry's provider
            at = (await self.ownership.owned(COMPLETION, after, team)).provider
            providers = providers[providers.index(at) :] if at in providers else [at]
        data: list[dict[str, Any]] = []
        more, pages, t_up = False, 0, time.perf_counter()
        for i, name in enumerate(providers):
            cursor = after if i == 0 else None
            while True:
                if pages == LIST_PAGES:  # give up on filling the page: the rest is for the next one
                    more = True
                    break
                size = as_given if pages == 0 and as_given is not None else str(LIST_PAGE)
                page = [*params, ("limit", size), *([("after", cursor)] if cursor else [])]
                listed = await self._upstream_list(scope, name, page, rid)
                pages += 1
                if listed is None:  # this provider keeps no stored completions
                    break
                items, upstream_more = listed
                owned = await self.ownership.owned_ids(COMPLETION, team, [item["id"] for item in items])
                mine = [item for item in items if item["id"] in owned]
                taken = mine[: limit - len(data)]
                data += taken
                if len(data) == limit:
                    more = len(mine) > len(taken) or upstream_more or i + 1 < len(providers)
                    break
                if not upstream_more or not items:
                    break
                cursor = items[-1]["id"]
            if len(data) == limit or pages == LIST_PAGES:
                break
        body = {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": more,
        }
        await _respond(send, 200, {"content-type": "application/json"}, orjson.dumps(body), rid)
        return Relayed(200, time.perf_counter() - t_up)

    def _list_providers(self, team: str, model: str | None) -> tuple[list[str], str | None]:
        """Providers to list from, in config order, and the ``model`` filter as the provider knows the model."""
        settings = self._s.teams.get(team)
        if model:
            m = policy.check_model(self._s, settings, model)
            return [m.provider], m.upstream_model or model
        allowed = settings.models if settings is not None and settings.models is not None else tuple(self._s.models)
        return list(dict.fromkeys(self._s.models[m].provider for m in allowed)), None

    async def _upstream_list(
        self, scope: Scope, name: str, params: list[tuple[str, str]], rid: str
    ) -> tuple[list[dict[str, Any]], bool] | None:
        resp = await self._request(
            scope, self._s.providers[name], "GET", f"/chat/completions?{urlencode(params)}", None, rid
        )
        try:
            raw = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as e:
            raise _broken(e) from None
        finally:
            resp.release()
        if resp.status in (404, 405):
            return None
        if resp.status >= 400:
            raise normalise_upstream_error(resp.status, raw)
        try:
            page = orjson.loads(raw)
        except orjson.JSONDecodeError:
            page = None
        if not isinstance(page, dict) or not isinstance(page.get("data"), list):
            raise UpstreamError(502, {"message": "The upstream provider answered an unreadable list."})
        items = [d for d in page["data"] if isinstance(d, dict) and isinstance(d.get("id"), str)]
        return items, page.get("has_more") is True

    # ---- count and record ------------------------------------------------------------------------------
    def _record(
        self,
        route: Route,
        rid: str,
        ts: float,
        t0: float,
        team: str | None,
        key_name: str,
        target: Target | None,
        done: Relayed,
    ) -> None:
        elapsed = time.perf_counter() - t0
        err = done.error
        outcome = outcome_of(err) if err is not None else "client_cancelled" if done.left else "ok"
        error_type = None
        if err is not None:
            error_type = f"upstream_{err.status}" if isinstance(err, UpstreamError) else (err.code or err.type)
        model = target.model if target is not None else ""
        provider = target.provider if target is not None else ""
        self._ledger.append(
            LedgerRecord(
                request_id=rid,
                ts=ts,
                team=team or "",
                key_name=key_name,
                model=model,
                provider=provider,
                endpoint=route.name,
                stream=done.streamed,
                status=done.status,
                outcome=outcome,
                counted_input=None,
                counted_output=None,
                input_tokens=None,
                cached_input_tokens=None,
                output_tokens=None,
                reasoning_tokens=None,
                cost_micro_usd=0,
                latency_ms=elapsed * 1000.0,
                ttft_ms=None,
                error=None if err is None else err.message,
                charged=False,
            )
        )
        self._metrics.record(
            RequestOutcome(
                team=team,
                model=model or "other",
                provider=provider,
                operation="stateful",
                outcome=outcome if outcome != "store_unavailable" else "upstream_error",
                status=done.status,
                error_type=error_type,
                stream=done.streamed,
                input_tokens=None,
                cached_input_tokens=None,
                output_tokens=None,
                reasoning_tokens=None,
                cost_micro_usd=0,
                duration_s=elapsed,
                ttft_s=None,
                overhead_s=max(elapsed - done.upstream_s, 0.0),
                parts=None,
                trimmed_tokens=0,
                counted_input=None,
                reported_input=None,
            )
        )


def _url(provider: ProviderSettings, path: str) -> str:
    if provider.kind == "azure" and provider.api_version:  # classic Azure: /openai/..., api-version in the query
        sep = "&" if "?" in path else "?"
        return f"{provider.base_url}/openai{path}{sep}api-version={provider.api_version}"
    return provider.base_url + path


def _limit(value: str | None) -> tuple[int, str | None]:
    """How many of the caller's entries to return, and the client's ``limit`` when it is one quotagate would
    not send itself: that goes upstream as given on the first page, for the provider to accept or refuse
    (validating it is the provider's job). An entry count quotagate cannot read is OpenAI's default, 20."""
    if value is None or value == "":
        return 20, None
    try:
        limit = int(value)
    except ValueError:
        return 20, value
    return min(max(limit, 1), 100), None if 1 <= limit <= 100 else value


def _broken(e: BaseException) -> ProxyError:
    if isinstance(e, TimeoutError):
        return UpstreamTimeout("The upstream provider stopped sending in time.")
    return UpstreamUnreachable(f"The upstream connection failed: {e.__class__.__name__}.")

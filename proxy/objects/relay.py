"""A stateful request sent to its provider with the provider's key, and the answer passed on: whole, or as
a replayed stream; the id of an object a 2xx answer creates is recorded for the caller's team."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable

import aiohttp
import orjson

from ..asgi import Receive, Scope, Send, relayed_headers, respond
from ..errors import ProxyError, normalise_upstream_error, sse_error
from ..settings import ProviderSettings, Settings
from ..sse import object_id_of
from ..upstream import add_credentials, transport_error
from ..values import value
from .ownership import Ownership
from .target import Target

# Client headers these endpoints pass on (nothing else: there is no body to govern, only ids to guard).
_PASSED = frozenset(
    {b"accept", b"openai-beta", b"user-agent", b"x-request-id", b"anthropic-version", b"anthropic-beta"}
)


@value
class Relayed:
    status: int
    upstream_s: float
    error: ProxyError | None = None
    streamed: bool = False  # the status and some of the body were already sent
    left: bool = False  # the client went away mid-stream


class Relay:
    """The stateful endpoints' own client session (no failover, no governed body)."""

    def __init__(self, settings: Settings, ownership: Ownership) -> None:
        self._s = settings
        self._ownership = ownership
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

    async def request(
        self, scope: Scope, provider: ProviderSettings, method: str, path: str, body: bytes | None, rid: str
    ) -> aiohttp.ClientResponse:
        assert self._session is not None, "StatefulRoutes.start() was not awaited"
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"] if k in _PASSED}
        headers.setdefault("x-request-id", rid)
        headers["accept-encoding"] = "identity"
        if body is not None:
            headers["content-type"] = "application/json"
        add_credentials(provider, headers)
        try:
            return await self._session.request(method, _url(provider, path), data=body, headers=headers)
        except (aiohttp.ClientError, TimeoutError) as e:
            raise transport_error(e) from None

    async def forward(self, scope: Scope, receive: Receive, send: Send, target: Target, rid: str) -> Relayed:
        provider = self._s.providers[target.provider]
        t_up = time.perf_counter()
        try:
            resp = await self.request(scope, provider, scope["method"], target.path, target.body, rid)
        except ProxyError as err:
            return Relayed(err.status, time.perf_counter() - t_up, err)
        try:
            if resp.status >= 400:
                raw = await resp.read()
                return Relayed(resp.status, time.perf_counter() - t_up, normalise_upstream_error(resp.status, raw))
            if resp.headers.get("content-type", "").startswith("text/event-stream"):
                return await self._stream(receive, send, resp, rid, t_up)
            raw = await resp.read()
            saving = self._created(target, raw)  # known before the client can name it
            await respond(send, resp.status, relayed_headers(resp), raw, rid)
            if saving is not None:
                await saving
            return Relayed(resp.status, time.perf_counter() - t_up)
        except (aiohttp.ClientError, TimeoutError) as e:
            broke = transport_error(e, "body")
            return Relayed(broke.status, time.perf_counter() - t_up, broke)
        finally:
            resp.release()

    def _created(self, target: Target, raw: bytes) -> Awaitable[None] | None:
        if target.creates is None:
            return None
        try:
            found = object_id_of(orjson.loads(raw))
        except orjson.JSONDecodeError:
            return None
        return self._ownership.created(target.creates, found, target.team, target.provider) if found else None

    async def _stream(
        self, receive: Receive, send: Send, resp: aiohttp.ClientResponse, rid: str, t_up: float
    ) -> Relayed:
        """A replayed response stream (GET /v1/responses/{id}?stream=true), passed on as it arrives."""
        headers = relayed_headers(resp)
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
            err = transport_error(broke, "stream")
            await send({"type": "http.response.body", "body": b"event: error\n" + sse_error(err), "more_body": False})
            return Relayed(resp.status, time.perf_counter() - t_up, err, streamed=True)
        if broke is not None:
            raise broke
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return Relayed(resp.status, time.perf_counter() - t_up, streamed=True)


def _url(provider: ProviderSettings, path: str) -> str:
    if provider.kind == "azure" and provider.api_version:  # classic Azure: /openai/..., api-version in the query
        sep = "&" if "?" in path else "?"
        return f"{provider.base_url}/openai{path}{sep}api-version={provider.api_version}"
    return provider.base_url + path

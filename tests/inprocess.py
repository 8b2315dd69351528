"""The gateway in process: ``create_app(...)`` driven through ``httpx.ASGITransport`` (its lifespan run by
hand, as uvicorn would), in front of a scripted provider.

The provider is not mocked with respx: quotagate's upstream client is aiohttp (proxy/upstream.py), which
respx cannot see. It is a real aiohttp server on a loopback port of the same event loop, answering from a
script per path (``Provider.on``) and recording every request it got (``Provider.calls``), so that what
the gateway sends and relays goes over a real HTTP connection: headers, chunked SSE, an aborted stream,
a read timeout. A connect error is a provider whose port nothing listens on (``closed_port``).

The clock is the gateway's own (``create_app(clock=...)``), fixed mid-minute so that the minute windows of
RPM/TPM never roll over during a test unless the test moves it (``Clock.advance``).
"""

from __future__ import annotations

import asyncio
import gc
import socket
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
from aiohttp import web
from aiohttp.test_utils import TestServer

from proxy.app import create_app
from proxy.gateway import Gateway
from proxy.settings import parse
from proxy.store.base import LedgerRecord

ADMIN_KEY = "qg-admin-7f3c"
UPSTREAM_KEY = "sk-upstream-secret"
# 2026-03-10 12:00:30 UTC: mid-minute, so a test's requests share one minute window
T0 = 1_773_144_030.0

KEYS = {
    "search-app": "sk-search-app-0001",
    "search-batch": "sk-search-batch-0002",  # its own day budget
    "research": "sk-research-0003",
    "interns": "sk-interns-0004",
}


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def config(upstream: str, store: str, down: str) -> dict[str, Any]:
    """A real team's config: several teams, day-token and month-USD budgets, RPM/TPM/concurrency, a key budget,
    context caps (reject and trim), model allow-lists; the price table's prices, one model priced here."""
    return {
        "store": store,
        "admin_key": ADMIN_KEY,
        "ledger_flush_seconds": 0.05,
        "providers": {
            "openai": {"base_url": upstream, "api_key": UPSTREAM_KEY},
            "down": {"base_url": down, "api_key": "sk-nobody-home"},
        },
        "models": {
            "gpt-4o-mini": {"provider": "openai"},  # 0.15 / 0.60 USD per 1M tokens (price table)
            "gpt-4o": {"provider": "openai"},  # 2.50 / 10.00
            "text-embedding-3-small": {"provider": "openai"},  # 0.02, mode embedding
            "instruct": {
                "provider": "openai",
                "mode": "completion",
                "upstream_model": "gpt-3.5-turbo-instruct",
                "price": {"input": 1.5, "output": 2.0},
            },
            "offline": {"provider": "down", "upstream_model": "gpt-4o-mini", "price": {"input": 1, "output": 1}},
            "resilient": {  # its first provider is down: served by the next one
                "provider": "down",
                "failover": ["openai"],
                "upstream_model": "gpt-4o-mini",
                "price": {"input": 1, "output": 4},
            },
        },
        "teams": {
            "search": {
                "max_input_tokens": 3000,
                "on_context_overflow": "reject",
                "max_output_tokens": 2000,
                "budgets": [{"window": "day", "tokens": 10_000_000}, {"window": "month", "usd": 100}],
                "rate_limits": {"rpm": 600, "tpm": 100_000, "concurrent": 20},
            },
            "research": {
                "max_input_tokens": 120,
                "on_context_overflow": "trim",
                "budgets": [{"window": "day", "tokens": 5000}, {"window": "month", "usd": 2}],
                "rate_limits": {"rpm": 3},
            },
            "interns": {
                "models": ["gpt-4o-mini", "text-embedding-3-small"],
                "budgets": [{"window": "month", "usd": 0.01}],
            },
        },
        "keys": [
            {"team": "search", "name": "search-app", "key": KEYS["search-app"]},
            {
                "team": "search",
                "name": "search-batch",
                "key": KEYS["search-batch"],
                "budgets": [{"window": "day", "tokens": 1500}],
            },
            {"team": "research", "name": "research", "key": KEYS["research"]},
            {"team": "interns", "name": "interns", "key": KEYS["interns"]},
        ],
    }


# ---- the scripted provider ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Call:
    method: str
    path: str
    headers: Mapping[str, str]
    body: Any  # the JSON body, or None


Reply = Callable[[web.Request, Any], Awaitable[web.StreamResponse]]


class Provider:
    """Answers each path from its script: the replies in order, the last one repeated."""

    def __init__(self) -> None:
        self.calls: list[Call] = []
        self._script: dict[str, list[Reply]] = {}
        self.release = asyncio.Event()  # set at teardown: replies that hang return

    def on(self, path: str, *replies: Reply) -> None:
        self._script[path] = list(replies)

    def bodies(self, path: str) -> list[Any]:
        return [c.body for c in self.calls if c.path == path]

    async def handle(self, request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        body = orjson.loads(raw) if raw else None
        self.calls.append(Call(request.method, request.path, {k.lower(): v for k, v in request.headers.items()}, body))
        script = self._script.get(request.path)
        if not script:
            return web.json_response({"error": {"message": f"unscripted {request.path}", "type": "test"}}, status=599)
        reply = script.pop(0) if len(script) > 1 else script[0]
        return await reply(request, body)


def json_reply(body: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> Reply:
    async def reply(request: web.Request, _: Any) -> web.StreamResponse:
        return web.Response(
            body=orjson.dumps(body), status=status, headers={"content-type": "application/json", **(headers or {})}
        )

    return reply


def raw_reply(text: str, status: int, content_type: str = "text/plain") -> Reply:
    async def reply(request: web.Request, _: Any) -> web.StreamResponse:
        return web.Response(text=text, status=status, content_type=content_type)

    return reply


def sse_frames(events: Sequence[Any], *, done: bool = True) -> bytes:
    out = b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events)
    return out + (b"data: [DONE]\n\n" if done else b"")


def sse_reply(events: Callable[[Any], Sequence[Any]], *, done: bool = True, cut: bool = False) -> Reply:
    """A stream of ``events(request body)``; ``cut``: the connection is aborted after them (no last chunk)."""

    async def reply(request: web.Request, body: Any) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"content-type": "text/event-stream", "x-provider-stream": "1"})
        await resp.prepare(request)
        for e in events(body):
            await resp.write(sse_frames([e], done=False))
        if cut:
            assert request.transport is not None
            request.transport.abort()
            resp.force_close()
            return resp
        if done:
            await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    return reply


def gated(gate: asyncio.Event, then: Reply) -> Reply:
    """``then``, once ``gate`` is set: the request is in flight (its reservation held) until the test says."""

    async def reply(request: web.Request, body: Any) -> web.StreamResponse:
        await gate.wait()
        return await then(request, body)

    return reply


async def arrived(provider: Provider, n: int) -> None:
    """Until the provider has received ``n`` requests."""
    for _ in range(500):
        if len(provider.calls) >= n:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"the provider got {len(provider.calls)} requests, not {n}")


def hang(provider: Provider, *, after_headers: bool = False) -> Reply:
    """No answer (or, ``after_headers``, a stream that starts and then goes silent) until teardown."""

    async def reply(request: web.Request, _: Any) -> web.StreamResponse:
        if after_headers:
            resp = web.StreamResponse(headers={"content-type": "text/event-stream"})
            await resp.prepare(request)
            await resp.write(sse_frames([chat_chunk("Hel")], done=False))
            await provider.release.wait()
            return resp
        await provider.release.wait()
        return web.Response(status=204)

    return reply


# ---- provider bodies, OpenAI-shaped ---------------------------------------------------------------------
def chat_answer(text: str, prompt: int, completion: int, *, cached: int = 0, model: str = "gpt-4o-mini") -> Any:
    return {
        "id": "chatcmpl-A1",
        "object": "chat.completion",
        "created": 1773144000,
        "model": f"{model}-2024-07-18",
        "system_fingerprint": "fp_a1",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached},
            "completion_tokens_details": {"reasoning_tokens": 0},
        },
    }


def chat_chunk(piece: str) -> Any:
    return {
        "id": "chatcmpl-S1",
        "object": "chat.completion.chunk",
        "created": 1773144000,
        "model": "gpt-4o-mini-2024-07-18",
        "system_fingerprint": "fp_s1",
        "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}],
    }


def chat_stream(pieces: Sequence[str], prompt: int, completion: int) -> Callable[[Any], list[Any]]:
    """As OpenAI streams: the usage chunk (empty ``choices``) only when the request asked for it."""

    def events(body: Any) -> list[Any]:
        out = [chat_chunk(p) for p in pieces]
        if ((body or {}).get("stream_options") or {}).get("include_usage") is True:
            usage = {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}
            out.append({**chat_chunk(""), "choices": [], "usage": usage})
        return out

    return events


# ---- the harness ----------------------------------------------------------------------------------------
@dataclass
class Harness:
    gw: Gateway
    client: httpx.AsyncClient
    provider: Provider
    clock: Clock
    store_url: str
    seen: set[str] = field(default_factory=set)

    async def post(
        self, path: str, body: Any, key: str | None = KEYS["search-app"], headers: Mapping[str, str] | None = None
    ) -> httpx.Response:
        h = dict(headers or {})
        if key is not None:
            h.setdefault("authorization", f"Bearer {key}")
        return await self.client.post(path, json=body, headers=h)

    async def admin(self, method: str, path: str, body: Any = None, key: str | None = ADMIN_KEY) -> httpx.Response:
        headers = {"authorization": f"Bearer {key}"} if key is not None else {}
        return await self.client.request(method, path, json=body, headers=headers)

    async def settled(self) -> None:
        """Every request's settlement has run and its ledger record is in the store."""
        for _ in range(100):
            if not self.gw.tasks:
                break
            await asyncio.wait(set(self.gw.tasks), timeout=5)
        assert not self.gw.tasks, "settlement tasks still running"
        await self.gw.ledger.flush()

    async def ledger(self) -> list[LedgerRecord]:
        """Every ledger record in the store, oldest first."""
        await self.settled()
        rows = await self.gw.store.ledger(0.0, limit=100_000)
        return sorted(rows, key=lambda r: (r.ts, r.request_id))

    async def new_rows(self) -> list[LedgerRecord]:
        """The ledger records written since the last call."""
        rows = [r for r in await self.ledger() if r.request_id not in self.seen]
        self.seen.update(r.request_id for r in rows)
        return rows


@asynccontextmanager
async def lifespan(app: Any) -> AsyncIterator[None]:
    """The ASGI lifespan startup/shutdown around the block, as a server runs it."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def send(msg: dict[str, Any]) -> None:
        await outbox.put(msg)

    task = asyncio.ensure_future(app({"type": "lifespan"}, inbox.get, send))
    await inbox.put({"type": "lifespan.startup"})
    started = await outbox.get()
    assert started["type"] == "lifespan.startup.complete", started
    try:
        yield
    finally:
        await inbox.put({"type": "lifespan.shutdown"})
        assert (await outbox.get())["type"] == "lifespan.shutdown.complete"
        await task


def store_url(kind: str, tmp: Path) -> str:
    return "memory://" if kind == "memory" else f"sqlite:///{tmp / 'quotagate.db'}"


@asynccontextmanager
async def running(
    tmp: Path, store: str = "sqlite", *, clock: Clock | None = None, provider: Provider | None = None, **top: Any
) -> AsyncIterator[Harness]:
    """The gateway on ``store`` (``sqlite``: a file in ``tmp``; ``memory``; or a store URL) in front of a
    scripted provider; ``top`` overrides top-level config keys (``admin_key``, ``upstream_timeout_s``...)."""
    provider = provider or Provider()
    server = TestServer(web.Application(), host="127.0.0.1")
    server.app.router.add_route("*", "/{tail:.*}", provider.handle)
    await server.start_server()
    url = store if "://" in store else store_url(store, tmp)
    raw = config(str(server.make_url("/v1")), url, f"http://127.0.0.1:{closed_port()}/v1")
    raw.update(top)
    clock = clock or Clock()
    threshold = gc.get_threshold()  # the gateway's startup tunes the collector for a server process
    app = create_app(parse(raw, env={}), clock=clock)
    try:
        async with lifespan(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://quotagate") as client:
                try:
                    yield Harness(app.gw, client, provider, clock, url)
                finally:
                    provider.release.set()
    finally:
        await server.close()
        gc.unfreeze()
        gc.set_threshold(*threshold)

"""The bare relay: the thinnest raw-ASGI forwarder on quotagate's own server and client stack.

uvicorn + uvloop + httptools in front, one aiohttp ClientSession behind, nothing else: no auth, no
parsing, no counting, no store. It forwards the body and streams the response back. Whatever quotagate
costs on top of this is the price of governance; this is the physical limit of the stack.

    python bench/relay.py --upstream http://127.0.0.1:9000 [--paced-upstream URL] --port 8081

Paths starting with ``/paced`` go (prefix stripped) to ``--paced-upstream``, so one relay serves both
the fast mock and the paced (time-to-first-token) mock.
"""

from __future__ import annotations

import argparse
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_HEALTH = b'{"status":"ok"}'


class Relay:
    def __init__(self, upstream: str, paced: str | None) -> None:
        self.upstream = upstream.rstrip("/")
        self.paced = (paced or upstream).rstrip("/")
        self.session: aiohttp.ClientSession | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self.lifespan(receive, send)

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "lifespan.startup":
                connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
                self.session = aiohttp.ClientSession(
                    connector=connector,
                    auto_decompress=False,
                    skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
                )
                await send({"type": "lifespan.startup.complete"})
            elif msg["type"] == "lifespan.shutdown":
                if self.session is not None:
                    await self.session.close()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        path: str = scope["path"]
        if scope["method"] == "GET":
            await send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
            )
            await send({"type": "http.response.body", "body": _HEALTH})
            return
        chunks = []
        while True:
            msg = await receive()
            chunks.append(msg.get("body", b""))
            if not msg.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        url = self.paced + path[6:] if path.startswith("/paced") else self.upstream + path
        assert self.session is not None
        async with self.session.post(url, data=body, headers={"content-type": "application/json"}) as resp:
            ctype = resp.headers.get("content-type", "application/json").encode("latin-1")
            if ctype.startswith(b"text/event-stream"):
                await send(
                    {"type": "http.response.start", "status": resp.status, "headers": [(b"content-type", ctype)]}
                )
                async for chunk in resp.content.iter_any():
                    await send({"type": "http.response.body", "body": chunk, "more_body": True})
                await send({"type": "http.response.body", "body": b"", "more_body": False})
            else:
                raw = await resp.read()
                await send(
                    {
                        "type": "http.response.start",
                        "status": resp.status,
                        "headers": [(b"content-type", ctype), (b"content-length", str(len(raw)).encode())],
                    }
                )
                await send({"type": "http.response.body", "body": raw})


def main(argv: list[str] | None = None) -> int:
    import uvicorn

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", required=True, help="base URL of the provider, e.g. http://127.0.0.1:9000")
    p.add_argument("--paced-upstream")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8081)
    args = p.parse_args(argv)
    uvicorn.run(
        Relay(args.upstream, args.paced_upstream),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=False,
        log_level="warning",
        backlog=4096,
        proxy_headers=False,  # the same server settings as `quotagate serve`
        server_header=False,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""A real HTTP webhook receiver for notification tests: an aiohttp server on a loopback port of the test's
event loop, recording every POST (path, headers, JSON body) and answering from a script of statuses
(then 200)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
from aiohttp import web

from tests.gateway import free_port


@dataclass
class Post:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class Receiver:
    port: int = field(default_factory=free_port)
    statuses: list[int] = field(default_factory=list)  # answered in order, then 200
    posts: list[Post] = field(default_factory=list)  # every POST, whatever was answered
    taken: list[Post] = field(default_factory=list)  # the POSTs answered 2xx
    _runner: web.AppRunner | None = None

    def url(self, path: str = "hook") -> str:
        return f"http://127.0.0.1:{self.port}/{path}"

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/{path:.*}", self._hook)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _hook(self, request: web.Request) -> web.Response:
        post = Post(request.path.lstrip("/"), {k.lower(): v for k, v in request.headers.items()}, {})
        post.body = orjson.loads(await request.read())
        self.posts.append(post)
        status = self.statuses.pop(0) if self.statuses else 200
        if 200 <= status < 300:
            self.taken.append(post)
        return web.Response(status=status, text="ok" if status < 300 else "no")

    def bodies(self, path: str = "hook") -> list[dict[str, Any]]:
        return [p.body for p in self.taken if p.path == path]

    async def wait_for(self, n: int, path: str = "hook", within: float = 10.0) -> list[dict[str, Any]]:
        """Until ``n`` POSTs to ``path`` were taken (then what they carried), or fail after ``within`` seconds."""
        deadline = asyncio.get_running_loop().time() + within
        while len(self.bodies(path)) < n:
            assert asyncio.get_running_loop().time() < deadline, f"{len(self.bodies(path))} of {n} posts to /{path}"
            await asyncio.sleep(0.02)
        return self.bodies(path)

"""The handlers: authenticate, check ownership, forward with the provider's key, count, record."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from ..asgi import Receive, Scope, Send, read_body, respond
from ..auth import KeyRing, key_from_headers
from ..errors import ProxyError
from ..ids import ids
from ..ledger import Ledger
from ..metrics import Metrics
from ..settings import Settings
from .listing import CompletionList
from .ownership import Ownership
from .record import Served, ledger_record, request_outcome
from .relay import Relay, Relayed
from .routes import CHAT_LIST, MODEL, Route
from .target import Target, Targets


def model_entry(settings: Settings, name: str, created: int) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": created, "owned_by": settings.models[name].provider}


class StatefulRoutes:
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
        self._targets = Targets(settings, ownership)
        self._relay = Relay(settings, ownership)
        self._list = CompletionList(settings, ownership, self._targets, self._relay)

    async def start(self) -> None:
        await self._relay.start()

    async def close(self) -> None:
        await self._relay.close()

    async def handle(self, scope: Scope, receive: Receive, send: Send, route: Route, arg: str, sub: str = "") -> None:
        rid, ts, t0 = next(self._ids), self._clock(), time.perf_counter()
        team: str | None = None
        key_name = ""
        target: Target | None = None
        done = Relayed(0, 0.0)
        try:
            principal = await self._keyring.authenticate(key_from_headers(scope["headers"]))
            team, key_name = principal.team, principal.key_name
            raw = await read_body(receive, self._s.max_body_bytes)
            if route is MODEL:
                target = self._targets.model(team, arg)
                body = orjson.dumps(model_entry(self._s, arg, int(time.time())))
                await respond(send, 200, {"content-type": "application/json"}, body, rid)
                done = Relayed(200, 0.0)
            elif route is CHAT_LIST:
                done = await self._list.serve(scope, send, team, rid)
            else:
                target = await self._targets.of(route, arg, sub, team, scope, raw)
                done = await self._relay.forward(scope, receive, send, target, rid)
                if done.error is None and target.record is not None and route.method == "DELETE" and not sub:
                    await self.ownership.deleted(target.record)
        except ProxyError as err:
            done = Relayed(err.status, done.upstream_s, err)
        if done.error is not None and not done.streamed:
            status, headers, body = route.render(done.error)
            await respond(send, status, headers, body, rid)
        served = Served(route, rid, ts, time.perf_counter() - t0, team, key_name, target, done)
        self._ledger.append(ledger_record(served))
        self._metrics.record(request_outcome(served))

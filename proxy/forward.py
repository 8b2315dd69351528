"""Forward an admitted request and relay the answer: failover while nothing has been relayed, then the
body or the stream passed on as it comes (read on the way only for usage), then a ``Relayed``.

A stream is relayed chunk by chunk as it arrives; a client that disconnects mid-stream cancels the relay
(``client_cancelled``, charged what was relayed). Long streams extend their lease every third of
``lease_seconds``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from typing import Any, NamedTuple

import aiohttp

from .admit import Admission, Outbound
from .asgi import Receive, Scope, Send, relayed_headers, respond
from .count import Counter
from .errors import ProxyError, normalise_upstream_error
from .outcomes import Outcome
from .settings import Settings
from .settle import Accountant
from .upstream import Upstream, transport_error
from .usage import Usage
from .values import value

_UNSET = Usage()


@value
class Relayed:
    """What the client was answered: the forward step's answer (or the refusal's, from the same fields)."""

    provider: str  # the provider that answered (or was tried last); the model's first one for a refusal
    status: int  # sent to the client (0: nothing was)
    t_end: float  # perf_counter() when the last byte was handed to the server
    outcome: Outcome = "ok"
    error: str | None = None
    error_type: str | None = None
    limit: str | None = None  # the refusing limit in a few words (log line only)
    usage: Usage = _UNSET  # as the provider reported it
    usage_raw: Any = None  # the provider's usage object, as it came
    counted_output: int | None = None  # quotagate's count of the output, when the provider reported no usage
    upstream_s: float = 0.0  # waiting on providers (excluded from the proxy's overhead)
    ttft: float | None = None  # since arrival
    fingerprint: str | None = None
    object_id: str | None = None  # what the provider created and keeps (recorded for the stateful endpoints)
    interrupted: bool = False  # a shutdown cancelled the stream: finish it, then let the cancellation go on

    @classmethod
    def failed(cls, err: ProxyError, provider: str, upstream_s: float = 0.0) -> Relayed:
        now = time.perf_counter()
        return cls(
            provider, err.status, now, err.outcome, err.message, err.error_type, err.limit, upstream_s=upstream_s
        )


async def answer_error(
    send: Send,
    adm: Admission,
    err: ProxyError,
    provider: str,
    upstream_s: float = 0.0,
    headers: dict[str, str] | None = None,
) -> Relayed:
    """Answer ``err`` in the endpoint's protocol (after ``headers``: the provider's, quotagate's own)."""
    status, own, body = adm.endpoint.protocol.render(err)
    await respond(send, status, {**headers, **own} if headers else own, body, adm.request_id)
    return Relayed.failed(err, provider, upstream_s)


class Connected(NamedTuple):
    resp: aiohttp.ClientResponse
    provider: str
    t_up: float  # perf_counter() when it was sent to this provider
    waited: float  # seconds spent on the providers that failed before

    def upstream_s(self) -> float:
        """Time spent waiting on providers, until now."""
        return self.waited + time.perf_counter() - self.t_up


class Forwarder:
    def __init__(
        self,
        settings: Settings,
        counter: Counter,
        accountant: Accountant,
        upstream: Upstream,
        failed: Callable[[Admission, Relayed], None],
    ) -> None:
        self._s = settings
        self._counter = counter
        self._accountant = accountant
        self._upstream = upstream
        self._failed = failed  # records a failed attempt (its own ledger row, metrics, log line)

    async def forward(self, scope: Scope, receive: Receive, send: Send, adm: Admission, out: Outbound) -> Relayed:
        connected = await self._connect(scope, send, adm, out)
        if isinstance(connected, Relayed):
            return connected  # every provider failed; the last one's error was sent
        resp, provider = connected.resp, connected.provider
        headers = {**out.headers, "x-quotagate-provider": provider}
        try:
            if resp.status >= 400:
                err = normalise_upstream_error(resp.status, await resp.read())
                relayed = {**relayed_headers(resp), **headers}
                return await answer_error(send, adm, err, provider, connected.upstream_s(), relayed)
            if out.req.stream and resp.headers.get("content-type", "").startswith("text/event-stream"):
                return await self._stream(receive, send, adm, out, connected, headers)
            return await self._body(send, adm, out, connected, headers)
        except (aiohttp.ClientError, TimeoutError) as e:
            broke = transport_error(e, "body")
            return await answer_error(send, adm, broke, provider, connected.upstream_s(), headers)
        finally:
            resp.release()

    async def _connect(self, scope: Scope, send: Send, adm: Admission, out: Outbound) -> Connected | Relayed:
        """Send to the model's provider, then down its failover list while nothing has been relayed: on a
        connection failure, no response headers in time, or an upstream 429/5xx. Each failed attempt is
        recorded (ledger row, metrics, log line) with its provider; the reservation stays the request's one."""
        model = out.model
        names = [model.provider, *model.failover][: self._s.failover_attempts]
        wait = self._s.failover_timeout_s if len(names) > 1 else None
        body = out.req.body_bytes()  # serialised once (if patched at all), whichever provider takes it
        upstream_model = adm.upstream_model or out.req.model
        waited = 0.0
        for attempt, name in enumerate(names, 1):
            last = attempt == len(names)
            t_up = time.perf_counter()
            err: ProxyError
            try:
                sending = self._upstream.send(
                    self._s.providers[name], adm.endpoint, upstream_model, body, scope["headers"], adm.request_id
                )
                resp = await (sending if wait is None or last else asyncio.wait_for(sending, wait))
            except TimeoutError as late:  # no response headers within failover_timeout_s
                err = transport_error(late)
            except ProxyError as transport_err:
                err = transport_err
            else:
                if last or not (resp.status == 429 or resp.status >= 500):
                    return Connected(resp, name, t_up, waited)
                err = await _refusal(resp)
            waited += time.perf_counter() - t_up
            if last:
                return await answer_error(send, adm, err, name, waited, {**out.headers, "x-quotagate-provider": name})
            # its own ledger row (``<id>.<n>``), metrics and log line; nothing charged (nothing was billed)
            attempted = dataclasses.replace(adm, request_id=f"{adm.request_id}.{attempt}")
            self._failed(attempted, Relayed.failed(err, name, waited))
        raise AssertionError("a model has at least one provider")

    async def _body(
        self, send: Send, adm: Admission, out: Outbound, connected: Connected, headers: dict[str, str]
    ) -> Relayed:
        """A whole answer: relayed as it came, then read for usage."""
        resp = connected.resp
        raw = await resp.read()
        waited = connected.upstream_s()
        answer = relayed_headers(resp)
        answer.update(headers)
        await respond(send, resp.status, answer, raw, adm.request_id)
        protocol = adm.endpoint.protocol
        usage, fingerprint, obj = protocol.read_answer(raw)
        counted = None
        if not usage.known and adm.endpoint.has_output:
            counted = self._counter.for_model(adm.model).text(protocol.output_text(obj), encoding=out.model.encoding)
        object_id = protocol.object_id(obj) if protocol.stored(out.req) else None
        return Relayed(
            connected.provider,
            resp.status,
            time.perf_counter(),
            usage=usage,
            usage_raw=protocol.raw_usage(obj),
            counted_output=counted,
            upstream_s=waited,
            fingerprint=fingerprint,
            object_id=object_id,
        )

    async def _stream(
        self, receive: Receive, send: Send, adm: Admission, out: Outbound, connected: Connected, headers: dict[str, str]
    ) -> Relayed:
        resp, protocol = connected.resp, adm.endpoint.protocol
        tap = protocol.tap(out.req)
        await _start(send, resp, headers, adm.request_id)
        watch = _Disconnect(receive)
        err: ProxyError | None = None
        left = interrupted = False
        ttft: float | None = None
        try:
            renew = self._accountant.renew_at(adm.reservation)
            async for chunk in resp.content.iter_any():
                if ttft is None:
                    ttft = time.perf_counter() - adm.t0
                if time.monotonic() >= renew and adm.reservation is not None:
                    renew = self._accountant.renew_at(adm.reservation)
                    await self._accountant.extend(adm.reservation)
                passed = tap.feed(chunk)
                if passed:
                    await send({"type": "http.response.body", "body": passed, "more_body": True})
            watch.relaying = False
            await send({"type": "http.response.body", "body": tap.finish(), "more_body": False})
        except asyncio.CancelledError:
            left = watch.uncancel()
            interrupted = not left  # a shutdown: finished all the same, then cancelled
        except (aiohttp.ClientError, TimeoutError) as e:
            watch.relaying = False
            err = transport_error(e, "stream")
            await send({"type": "http.response.body", "body": protocol.stream_error(err), "more_body": False})
        finally:
            watch.close()
        waited = connected.upstream_s()
        counted = None  # the output the provider did not report (a stream cut before its usage): counted
        if tap.usage is None or tap.usage.output is None:
            counted = self._counter.for_model(adm.model).text(tap.output_text(), encoding=out.model.encoding)
        return Relayed(
            connected.provider,
            resp.status,
            time.perf_counter(),
            *_ending(err, left),
            usage=tap.usage or _UNSET,
            usage_raw=tap.raw_usage,
            counted_output=counted,
            upstream_s=waited,
            ttft=ttft,
            fingerprint=tap.fingerprint,
            object_id=tap.object_id if protocol.stored(out.req) else None,
            interrupted=interrupted,
        )


def _ending(err: ProxyError | None, left: bool) -> tuple[Outcome, str | None, str | None]:
    """How a relayed stream ended: (outcome, error, error type)."""
    if err is not None:
        return err.outcome, err.message, err.error_type
    return ("client_cancelled", "client disconnected mid-stream", None) if left else ("ok", None, None)


async def _start(send: Send, resp: aiohttp.ClientResponse, headers: dict[str, str], request_id: str) -> None:
    answer = relayed_headers(resp)
    answer.update(headers)
    answer.setdefault("x-request-id", request_id)
    answer["x-quotagate-request-id"] = request_id
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in answer.items()]
    await send({"type": "http.response.start", "status": resp.status, "headers": raw})


async def _refusal(resp: aiohttp.ClientResponse) -> ProxyError:
    """A provider's 429/5xx, read to be recorded before the next provider is tried."""
    try:
        return normalise_upstream_error(resp.status, await resp.read())
    except (aiohttp.ClientError, TimeoutError) as e:
        return transport_error(e, "body")
    finally:
        resp.release()


class _Disconnect:
    """Watches the client while a stream is relayed: the server does not cancel the relay when the client
    leaves, so a disconnect cancels it here (only while relaying: not during the last send)."""

    __slots__ = ("_relay", "_watcher", "gone", "relaying")

    def __init__(self, receive: Receive) -> None:
        me = asyncio.current_task()
        assert me is not None
        self._relay = me
        self.gone = False
        self.relaying = True
        self._watcher = asyncio.create_task(self._watch(receive))

    async def _watch(self, receive: Receive) -> None:
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                self.gone = True
                if self.relaying:
                    self._relay.cancel()
                return

    def uncancel(self) -> bool:
        """After a CancelledError: True (and the relay's cancellation withdrawn) when the client left."""
        if self.gone:
            self._relay.uncancel()
        return self.gone

    def close(self) -> None:
        self.relaying = False
        self._watcher.cancel()

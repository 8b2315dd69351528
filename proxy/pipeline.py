"""One governed request, in order: auth -> parse -> count -> policy -> reserve -> forward -> settle -> record.

Raw ASGI on purpose: this is the hot path, and measured here a framework router costs about half the
throughput of a bare relay (1,750 vs 3,300 req/s). Whatever happens, exactly one ``finish`` runs per
request: it settles the reservation, queues the ledger record and records metrics, from an app-owned
task so that a client disconnect or a shutdown cannot skip it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import aiohttp

from . import policy
from .auth import KeyRing, Principal, key_from_headers
from .count import Counter, Estimate
from .errors import (
    BodyTooLarge,
    BudgetExceeded,
    InvalidRequest,
    ModelNotFound,
    ProxyError,
    UpstreamTimeout,
    UpstreamUnreachable,
    normalise_upstream_error,
    render,
    sse_error,
)
from .ledger import Ledger
from .logs import request_finished
from .metrics import Metrics, RequestOutcome
from .outcomes import Outcome, metric_outcome
from .parse import CHAT, COMPACT, COMPLETIONS, EMBEDDINGS, RESPONSES, Endpoint, ParsedRequest, parse
from .pricing import Price, price_of
from .settings import ModelSettings, Settings, TeamSettings
from .settle import Accountant, Reservation, ids
from .sse import StreamTap, body_output_text, object_id_of, read_body
from .store.base import LedgerRecord
from .upstream import DROP_RESPONSE, Upstream
from .usage import Usage

if TYPE_CHECKING:  # proxy.objects serves the stateful endpoints and imports this module
    from .objects import Ownership

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


def outcome_of(err: ProxyError) -> Outcome:
    return err.outcome


@dataclass(slots=True)
class Trace:
    """What is known about one request so far; becomes its ledger record and its metrics."""

    request_id: str
    ts: float
    t0: float
    endpoint: Endpoint
    team: str | None = None
    key_name: str = ""
    model: str = ""
    configured: bool = False  # model is a configured one (else it is labelled "other")
    provider: str = ""
    upstream_model: str | None = None
    stream: bool = False
    status: int = 0
    outcome: Outcome = "ok"
    error: str | None = None
    error_type: str | None = None
    limit: str | None = None  # the limit that refused it, in a few words (for the log line)
    estimate: Estimate | None = None
    counted_output: int | None = None
    usage: Usage = field(default_factory=Usage)
    cost: int = 0
    upstream_s: float = 0.0  # time spent waiting on the provider (excluded from proxy overhead)
    t_end: float | None = None  # when the last byte of the response was handed to the server
    ttft: float | None = None
    trimmed: int = 0
    seed: int | None = None
    fingerprint: str | None = None
    object_id: str | None = None  # the response or chat completion the provider created
    charged: bool = False  # reached the provider and is billed (usage reports add only these)


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        keyring: KeyRing,
        counter: Counter,
        accountant: Accountant,
        upstream: Upstream,
        ledger: Ledger,
        metrics: Metrics,
        spawn: Callable[[Awaitable[None]], None],
    ) -> None:
        self.s = settings
        self.keyring = keyring
        self.counter = counter
        self.accountant = accountant
        self.upstream = upstream
        self.ledger = ledger
        self.metrics = metrics
        self.spawn = spawn
        self.prices: dict[str, Price] = {name: price_of(m) for name, m in settings.models.items()}
        self._ids = ids("qg-")
        self.objects: Ownership | None = None  # set by routes.Router, which serves what it records

    # ---- the request -----------------------------------------------------------------------------------
    async def handle(self, scope: Scope, receive: Receive, send: Send, endpoint: Endpoint) -> None:
        trace = Trace(next(self._ids), time.time(), time.perf_counter(), endpoint)
        res: Reservation | None = None
        try:
            req, model, price, res, extra = await self._admit(scope, receive, trace)
        except ProxyError as err:
            await self._send_error(send, err, trace)
            self._finish(trace, None, None)
            return
        try:
            await self._forward(scope, receive, send, trace, req, model, extra, res)
        finally:
            self._finish(trace, res, price)

    async def _admit(
        self, scope: Scope, receive: Receive, trace: Trace
    ) -> tuple[ParsedRequest, ModelSettings, Price, Reservation | None, dict[str, str]]:
        principal = await self.keyring.authenticate(key_from_headers(scope["headers"]))
        trace.team, trace.key_name = principal.team, principal.key_name
        raw = await _read_body(receive, self.s.max_body_bytes)
        req = parse(trace.endpoint, raw)
        trace.model, trace.stream = req.model, req.stream
        if self.objects is not None:  # previous_response_id, conversation: the caller team's, or 404
            await self.objects.check_references(principal.team, req)
        team = self.s.teams.get(principal.team)
        policy.check_mode(req.model, policy.check_model(self.s, team, req.model), trace.endpoint)
        trace.configured = True
        extra: dict[str, str] = {}
        requested = req.model
        downgrade = self._downgrade(principal.team, principal.digest, requested)
        try:
            model, price, res = await self._reserve_for(
                downgrade or requested, requested, principal, team, req, trace, extra
            )
        except BudgetExceeded as refused:  # a budget with downgrade_to refused: the cheaper model may still fit
            cheaper = refused.downgrade_to
            downgrade = self._downgrade(principal.team, "", requested, cheaper) if cheaper and not downgrade else None
            if downgrade is None:
                raise
            model, price, res = await self._reserve_for(downgrade, requested, principal, team, req, trace, extra)
        else:  # the reserve's own answer shows a budget past warn_at (another process used it): swap models
            past = res.past_warn if res is not None and downgrade is None else None
            downgrade = self._downgrade(principal.team, "", requested, past.downgrade_to) if past else None
            if res is not None and downgrade is not None:
                await self.accountant.release(res)
                model, price, res = await self._reserve_for(downgrade, requested, principal, team, req, trace, extra)
        if res is not None:
            extra.update(res.headers)
        return req, model, price, res, extra

    async def _reserve_for(
        self,
        name: str,
        requested: str,
        principal: Principal,
        team: TeamSettings | None,
        req: ParsedRequest,
        trace: Trace,
        extra: dict[str, str],
    ) -> tuple[ModelSettings, Price, Reservation | None]:
        """Count, apply the team's caps and reserve the worst case for serving ``req`` with model ``name``."""
        model = self.s.models[name]
        downgrade = name if name != requested else None
        req.model = trace.model = name
        trace.trimmed = 0
        extra.pop("x-quotagate-trimmed-tokens", None)
        extra.pop("x-quotagate-downgraded-from", None)
        if downgrade is not None:
            extra["x-quotagate-downgraded-from"] = requested
        trace.provider = model.provider
        trace.upstream_model = model.upstream_model or req.model
        est = await self._count(req, model, team)
        tokens = est.tokens
        if req.endpoint is CHAT:
            messages = req.body.get("messages")
            kept, tokens, trimmed = policy.enforce_context(
                principal.team,
                team,
                tokens,
                messages if isinstance(messages, list) else None,  # only an array can be trimmed
                lambda msgs: self._count_messages(req, model, msgs),
            )
            if kept is not None:
                req.set("messages", kept)
                est = self.counter.chat(
                    kept, req.body.get("tools"), model=trace.upstream_model, encoding=model.encoding
                )
                trace.trimmed = trimmed
                extra["x-quotagate-trimmed-tokens"] = str(trimmed)
        else:
            policy.enforce_context(principal.team, team, tokens, None, lambda m: 0, param=req.endpoint.prompt_field)
        trace.estimate = est
        cap = policy.output_cap(
            req.requested_cap if req.endpoint.has_output else 0,
            team if req.endpoint.cap_fields else None,  # a team cap binds only what has a cap field
            model,
            trace.endpoint.default_cap,
            est.tokens,
        )
        if cap.send is not None:
            present = [f for f in req.endpoint.cap_fields if req.body.get(f) is not None]
            for f in present or req.endpoint.cap_fields[:1]:
                req.set(f, cap.send)
        if req.model != trace.upstream_model or downgrade is not None:
            req.set("model", trace.upstream_model)
        if req.stream and req.endpoint in (CHAT, COMPLETIONS) and not req.wants_usage:
            req.set("stream_options", {**(req.body.get("stream_options") or {}), "include_usage": True})
        price = self.prices[req.model]
        worst_usd = price.worst_case(est.tokens, cap.worst_case)
        seed = req.body.get("seed")
        trace.seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
        res = await self.accountant.reserve(
            principal.team,
            principal.digest,
            req.model,
            est.tokens + cap.worst_case,
            worst_usd,
            {
                "request_id": trace.request_id,
                "ts": trace.ts,
                "team": principal.team,
                "key_name": principal.key_name,
                "model": req.model,
                "provider": model.provider,
                "endpoint": req.endpoint.name,
                "stream": req.stream,
                "counted_input": est.tokens,
                "worst_tokens": est.tokens + cap.worst_case,
                "worst_micro_usd": worst_usd,
            },
        )
        return model, price, res

    def _downgrade(self, team: str, digest: str, model: str, target: str | None = None) -> str | None:
        """The cheaper model to serve with: ``target`` (the downgrade of a budget past ``warn_at``, or of the
        one that refused the reservation), else that of the first budget with ``downgrade_to`` this process
        last saw past ``warn_at``; only a model the team may use."""
        if target is None:
            budget = self.accountant.downgrade_target(team, digest, model)
            target = budget.downgrade_to if budget is not None else None
        if target is None or target == model:
            return None
        t = self.s.teams.get(team)
        return target if t is None or t.models is None or target in t.models else None

    async def _count(self, req: ParsedRequest, model: ModelSettings, team: TeamSettings | None) -> Estimate:
        """Whatever the body holds is counted (odd shapes as their JSON text, inexact); input out of sight
        (stored context, no prompt field) is reserved up to the policy's bound and settled from usage."""
        name, enc = model.upstream_model or req.model, model.encoding
        b = req.body
        if req.endpoint is CHAT:
            est = await self.counter.achat(b.get("messages"), b.get("tools"), model=name, encoding=enc)
        elif req.endpoint in (RESPONSES, COMPACT):
            est = await self.counter.aresponses(
                b.get("input"), b.get("instructions"), b.get("tools"), model=name, encoding=enc
            )
        elif req.endpoint is EMBEDDINGS:
            est = await self.counter.aembeddings(b.get("input"), model=name, encoding=enc)
        else:
            est = await self.counter.acompletion(b.get("prompt"), model=name, encoding=enc)
        return est.with_unseen(policy.unseen_input_bound(team, model)) if req.unseen_input else est

    def _count_messages(self, req: ParsedRequest, model: ModelSettings, messages: list[Any]) -> int:
        name = model.upstream_model or req.model
        return self.counter.chat(messages, req.body.get("tools"), model=name, encoding=model.encoding).tokens

    # ---- forward and relay --------------------------------------------------------------------------------
    async def _forward(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        trace: Trace,
        req: ParsedRequest,
        model: ModelSettings,
        extra: dict[str, str],
        res: Reservation | None,
    ) -> None:
        connected = await self._connect(send, trace, req, model, scope, extra)
        if connected is None:
            return  # every provider failed; the last one's error was sent
        resp, t_up = connected
        try:
            if resp.status >= 400:
                raw = await resp.read()
                trace.upstream_s += time.perf_counter() - t_up
                await self._send_error(
                    send, normalise_upstream_error(resp.status, raw), trace, {**_relayed(resp), **extra}
                )
                return
            ctype = resp.headers.get("content-type", "")
            if req.stream and ctype.startswith("text/event-stream"):
                await self._relay_stream(receive, send, trace, req, resp, extra, t_up, res)
            else:
                raw = await resp.read()
                trace.upstream_s += time.perf_counter() - t_up
                trace.status = resp.status
                headers = _relayed(resp)
                headers.update(extra)
                await _respond(send, resp.status, headers, raw, trace.request_id)
                usage, trace.fingerprint, obj = read_body(raw)
                trace.object_id = object_id_of(obj) if _stored(req) else None
                trace.usage = usage
                if not usage.known and req.endpoint.has_output:
                    trace.counted_output = self.counter.text(body_output_text(obj), encoding=model.encoding)
        except (aiohttp.ClientError, TimeoutError) as e:
            trace.upstream_s += time.perf_counter() - t_up
            broke: ProxyError = (
                UpstreamTimeout("The upstream provider did not answer in time.")
                if isinstance(e, TimeoutError)
                else UpstreamUnreachable(f"The upstream connection failed: {e.__class__.__name__}.")
            )
            await self._send_error(send, broke, trace, extra)
        finally:
            resp.release()

    async def _connect(
        self,
        send: Send,
        trace: Trace,
        req: ParsedRequest,
        model: ModelSettings,
        scope: Scope,
        extra: dict[str, str],
    ) -> tuple[aiohttp.ClientResponse, float] | None:
        """Send to the model's provider, then down its failover list while nothing has been relayed: on a
        connection failure, no response headers in time, or an upstream 429/5xx. Each failed attempt is
        recorded (ledger row, metrics, log line) with its provider; the reservation stays the request's one."""
        names = [model.provider, *model.failover][: self.s.failover_attempts]
        wait = self.s.failover_timeout_s if len(names) > 1 else None
        for attempt, name in enumerate(names, 1):
            last = attempt == len(names)
            trace.provider = name
            extra["x-quotagate-provider"] = name
            t_up = time.perf_counter()
            err: ProxyError | None = None
            try:
                sending = self.upstream.send(
                    self.s.providers[name],
                    req.endpoint,
                    trace.upstream_model or req.model,
                    req.body_bytes(),
                    scope["headers"],
                    trace.request_id,
                )
                resp = await (sending if wait is None or last else asyncio.wait_for(sending, wait))
            except TimeoutError:
                err = UpstreamTimeout("The upstream provider did not answer in time.")
            except ProxyError as transport_err:
                err = transport_err
            else:
                if last or not (resp.status == 429 or resp.status >= 500):
                    return resp, t_up
                try:
                    err = normalise_upstream_error(resp.status, await resp.read())
                except (aiohttp.ClientError, TimeoutError):
                    err = UpstreamUnreachable(f"The upstream connection failed (HTTP {resp.status}).")
                finally:
                    resp.release()
            trace.upstream_s += time.perf_counter() - t_up
            if last:
                await self._send_error(send, err, trace, extra)
                return None
            self._failed_attempt(trace, attempt, err)
        return None

    def _failed_attempt(self, trace: Trace, attempt: int, err: ProxyError) -> None:
        """A provider that failed before anything was relayed: its own ledger row (``<id>.<n>``), metrics
        and log line; nothing charged (the provider billed nothing)."""
        failed = dataclasses.replace(
            trace,
            request_id=f"{trace.request_id}.{attempt}",
            status=err.status,
            outcome=err.outcome,
            error=err.message,
            error_type=err.error_type,
            t_end=time.perf_counter(),
            charged=False,
            cost=0,
        )
        request_finished(failed, self.s.providers)
        self.ledger.append(_record(failed))
        self._observe(failed, Usage(0, 0, 0, 0))

    async def _relay_stream(
        self,
        receive: Receive,
        send: Send,
        trace: Trace,
        req: ParsedRequest,
        resp: aiohttp.ClientResponse,
        extra: dict[str, str],
        t_up: float,
        res: Reservation | None,
    ) -> None:
        tap = StreamTap(strip_usage_chunk=req.endpoint in (CHAT, COMPLETIONS) and not req.wants_usage)
        headers = _relayed(resp)
        headers.update(extra)
        headers.setdefault("x-request-id", trace.request_id)
        headers["x-quotagate-request-id"] = trace.request_id
        trace.status = resp.status
        await send(
            {
                "type": "http.response.start",
                "status": resp.status,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
            }
        )
        me = asyncio.current_task()
        assert me is not None
        gone = asyncio.Event()
        relaying = True

        async def watch() -> None:
            while True:
                msg = await receive()
                if msg["type"] == "http.disconnect":
                    gone.set()
                    if relaying:
                        me.cancel()
                    return

        watcher = asyncio.create_task(watch())
        try:
            renew = self.accountant.renew_at(res)
            async for chunk in resp.content.iter_any():
                if trace.ttft is None:
                    trace.ttft = time.perf_counter() - trace.t0
                if time.monotonic() >= renew and res is not None:
                    renew = self.accountant.renew_at(res)
                    await self.accountant.extend(res)
                out = tap.feed(chunk)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
            relaying = False
            tail = tap.finish()
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        except asyncio.CancelledError:
            if not gone.is_set():
                raise  # shutdown: settle in finish() all the same
            me.uncancel()
            trace.outcome, trace.error = "client_cancelled", "client disconnected mid-stream"
        except (aiohttp.ClientError, TimeoutError) as e:
            relaying = False
            timeout = isinstance(e, TimeoutError)
            err: ProxyError = (
                UpstreamTimeout("The upstream provider stopped sending in time.")
                if timeout
                else UpstreamUnreachable(f"The upstream stream broke: {e.__class__.__name__}.")
            )
            trace.outcome, trace.error, trace.error_type = err.outcome, err.message, err.error_type
            payload = sse_error(err)
            if req.endpoint is RESPONSES:
                payload = b"event: error\n" + payload
            await send({"type": "http.response.body", "body": payload, "more_body": False})
        finally:
            relaying = False
            watcher.cancel()
            trace.upstream_s += time.perf_counter() - t_up
            trace.usage = tap.usage or Usage()
            trace.fingerprint = tap.fingerprint
            trace.object_id = tap.object_id if _stored(req) else None
            if tap.usage is None:
                model = self.s.models[req.model]
                trace.counted_output = self.counter.text(tap.output_text(), encoding=model.encoding)

    # ---- errors, settlement, records ----------------------------------------------------------------------
    async def _send_error(self, send: Send, err: ProxyError, trace: Trace, extra: dict[str, str] | None = None) -> None:
        trace.status, trace.outcome, trace.error, trace.limit = err.status, err.outcome, err.message, err.limit
        trace.error_type = err.error_type
        status, headers, body = render(err)
        if extra:
            headers = {**extra, **headers}
        await _respond(send, status, headers, body, trace.request_id)

    def _finish(self, trace: Trace, res: Reservation | None, price: Price | None) -> None:
        trace.t_end = trace.t_end or time.perf_counter()  # duration as the client saw it, settlement excluded
        est = trace.estimate
        counted_in = est.tokens if est is not None else 0
        used = trace.usage.or_counted(counted_in, trace.counted_output or 0)
        forwarded = trace.outcome in ("ok", "client_cancelled") or (
            trace.outcome == "upstream_error" and trace.ttft is not None
        )
        trace.charged = forwarded
        if forwarded and price is not None:
            trace.cost = price.cost(used)
        elif not forwarded:
            used = Usage(0, 0, 0, 0)
        if self.objects is not None and trace.object_id is not None:  # known at once, before any next request
            self.spawn(self.objects.created(trace.endpoint, trace.object_id, trace.team, trace.provider))
        self.spawn(self._settle_and_record(trace, res, used))

    async def _settle_and_record(self, trace: Trace, res: Reservation | None, used: Usage) -> None:
        if res is not None:
            await self.accountant.settle(res, used.total, trace.cost)
        request_finished(trace, self.s.providers)
        self.ledger.append(_record(trace))
        self._observe(trace, used)

    def _observe(self, trace: Trace, used: Usage) -> None:
        elapsed = (trace.t_end or time.perf_counter()) - trace.t0
        est = trace.estimate
        parts = est.parts if est is not None else None
        outcome = metric_outcome(trace.outcome)
        assert outcome is not None
        self.metrics.record(
            RequestOutcome(
                team=trace.team,
                model=trace.model if trace.configured else (trace.model or "other"),
                provider=trace.provider,
                operation=trace.endpoint.operation,
                outcome=outcome,
                status=trace.status,
                error_type=trace.error_type if trace.outcome != "ok" else None,
                stream=trace.stream,
                input_tokens=used.input if trace.outcome in ("ok", "client_cancelled") else None,
                cached_input_tokens=used.cached_input,
                output_tokens=used.output if trace.outcome in ("ok", "client_cancelled") else None,
                reasoning_tokens=used.reasoning,
                cost_micro_usd=trace.cost,
                duration_s=elapsed,
                ttft_s=trace.ttft,
                overhead_s=max(elapsed - trace.upstream_s, 0.0),
                parts=None
                if parts is None
                else {
                    "system": parts.system,
                    "tools": parts.tools,
                    "history": parts.history,
                    "new": parts.new,
                },
                trimmed_tokens=trace.trimmed,
                # drift compares counts, not a bound reserved for stored context quotagate cannot see
                counted_input=est.tokens if est is not None and not est.unseen else None,
                reported_input=trace.usage.input,
            )
        )


def _record(t: Trace) -> LedgerRecord:
    est = t.estimate
    ms = 1000.0
    return LedgerRecord(
        request_id=t.request_id,
        ts=t.ts,
        team=t.team or "",
        key_name=t.key_name,
        model=t.model,
        provider=t.provider,
        endpoint=t.endpoint.name,
        stream=t.stream,
        status=t.status,
        outcome=t.outcome,
        counted_input=est.tokens if est is not None else None,
        counted_output=t.counted_output,
        input_tokens=t.usage.input,
        cached_input_tokens=t.usage.cached_input,
        output_tokens=t.usage.output,
        reasoning_tokens=t.usage.reasoning,
        cost_micro_usd=t.cost,
        latency_ms=((t.t_end or time.perf_counter()) - t.t0) * ms,
        ttft_ms=t.ttft * ms if t.ttft is not None else None,
        trimmed_tokens=t.trimmed,
        estimated=est is not None and not est.exact,
        seed=t.seed,
        system_fingerprint=t.fingerprint,
        upstream_model=t.upstream_model,
        error=t.error,
        charged=t.charged,
    )


def _stored(req: ParsedRequest) -> bool:
    """The provider keeps what this request creates, so it can be read back by id: responses unless
    ``store: false``, chat completions only with ``store: true`` (OpenAI's defaults). Only those are recorded."""
    return req.body.get("store", req.endpoint is RESPONSES) is True


def _relayed(resp: aiohttp.ClientResponse) -> dict[str, str]:
    return {k.lower(): v for k, v in resp.headers.items() if k.lower() not in DROP_RESPONSE}


async def _respond(send: Send, status: int, headers: dict[str, str], body: bytes, request_id: str) -> None:
    if request_id:
        headers.setdefault("x-request-id", request_id)
        headers["x-quotagate-request-id"] = request_id
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    raw.append((b"content-length", str(len(body)).encode()))
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body, "more_body": False})


async def _read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        msg = await receive()
        if msg["type"] == "http.disconnect":
            raise InvalidRequest("The client disconnected before sending the whole request.")
        body = msg.get("body", b"")
        size += len(body)
        if size > limit:
            raise BodyTooLarge(f"Request body too large: the limit is {limit} bytes.")
        chunks.append(body)
        if not msg.get("more_body", False):
            return b"".join(chunks) if len(chunks) != 1 else chunks[0]


__all__ = ["ModelNotFound", "Pipeline", "Trace"]

"""Admit one request: auth -> parse -> model access -> count -> context cap -> output cap -> reserve.

The answer is an ``Admission`` (who asked for which model, what was counted and reserved) and what to send
(``Outbound``). A refusal raises ``Refused`` with the error and an ``Admission`` of as much as was known by
then, so that its ledger row, metrics and log line say who was refused, for which model, after what count.

A budget with ``downgrade_to`` admits the cheaper model instead when it refuses the reservation, or when the
reservation's own answer shows it past ``warn_at``.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from . import attribution, policy
from .asgi import DEPLOYMENT, Receive, Scope, read_body
from .auth import KeyRing, Principal, key_from_headers
from .count import Counter, Estimate
from .errors import BudgetExceeded, ProxyError
from .ids import ids
from .limits import Subject
from .observed import Sizing
from .parse import Endpoint, ParsedRequest, with_model
from .precount import Precount
from .pricing import Price, price_of
from .reservations import LeaseMeta
from .settings import ModelSettings, Settings, TeamSettings
from .settle import Accountant, Reservation
from .values import value

if TYPE_CHECKING:  # proxy.objects serves the stateful endpoints; routes.Router hands its Ownership here
    from .objects import Ownership


@value
class Admission:
    """Who asked for which model, what was counted and reserved (on a refusal: what was known by then)."""

    request_id: str
    ts: float  # epoch seconds at arrival
    t0: float  # perf_counter() at arrival
    endpoint: Endpoint
    team: str | None = None
    key_name: str = ""
    model: str = ""  # the configured model served (after a downgrade), else as the client named it
    stream: bool = False
    provider: str = ""  # the model's first provider
    upstream_model: str | None = None
    estimate: Estimate | None = None
    trimmed: int = 0  # input tokens dropped to fit the team's context cap
    seed: int | None = None
    price: Price | None = None
    reservation: Reservation | None = None
    service_tier: str | None = None  # as the request asked (priced at it when the response names no tier)
    output_cap: int | None = None  # the output cap the request went out with (None: none)
    end_user: str | None = None  # as the client named them (proxy/attribution.py)
    tags: str | None = None
    session: str | None = None  # x-quotagate-session


@value
class Outbound:
    """What the forward step sends: the governed request, its model (providers, failover, encoding), and the
    headers quotagate adds to the answer (downgrade, trimming, rate limits)."""

    req: ParsedRequest
    model: ModelSettings
    headers: dict[str, str]


class Refused(Exception):
    def __init__(self, error: ProxyError, admission: Admission) -> None:
        super().__init__(error.message)
        self.error = error
        self.admission = admission


class Admitter:
    def __init__(
        self, settings: Settings, keyring: KeyRing, counter: Counter, accountant: Accountant, precount: Precount
    ) -> None:
        self._s = settings
        self._keyring = keyring
        self._counter = counter
        self._accountant = accountant
        self._precount = precount
        self._prices: dict[str, Price] = {name: price_of(m) for name, m in settings.models.items()}
        self._ids = ids("qg-")
        self.objects: Ownership | None = None  # set by routes.Router, which serves what it records

    async def admit(self, endpoint: Endpoint, scope: Scope, receive: Receive) -> tuple[Admission, Outbound]:
        rid, ts, t0 = next(self._ids), time.time(), time.perf_counter()
        tags = attribution.tags_from_headers(scope["headers"])  # and the body's, once it is parsed
        who: Principal | None = None
        req: ParsedRequest | None = None
        try:
            who = await self._keyring.authenticate(key_from_headers(scope["headers"]))
            raw = await read_body(receive, self._s.max_body_bytes)
            deployment = scope.get(DEPLOYMENT)  # Azure: the path names the model, whatever the body says
            req = endpoint.parse(raw if deployment is None else with_model(raw, deployment))
            if isinstance(req.body.get("metadata"), dict):
                tags = attribution.tags_from_headers(scope["headers"], req.body)
            if self.objects is not None:  # previous_response_id, conversation: the caller team's, or 404
                await self.objects.check_references(who.team, req)
            team = self._s.teams.get(who.team)
            policy.check_mode(req.model, policy.check_model(self._s, team, req.model), endpoint)
            policy.check_tags(who.team, team, tags)
        except ProxyError as err:
            known = Admission(
                rid,
                ts,
                t0,
                endpoint,
                who.team if who is not None else None,
                who.key_name if who is not None else "",
                req.model if req is not None else "",
                req is not None and req.stream,
                end_user=endpoint.protocol.end_user(req) if req is not None else None,
                tags=tags,
            )
            raise Refused(err, known) from None
        session = attribution.session_from_headers(scope["headers"])
        end_user = endpoint.protocol.end_user(req)
        arrival = Admission(rid, ts, t0, endpoint, end_user=end_user, tags=tags, session=session)
        return await self._reserve(arrival, who, team, req)

    async def _reserve(
        self, arrival: Admission, who: Principal, team: TeamSettings | None, req: ParsedRequest
    ) -> tuple[Admission, Outbound]:
        """The requested model, or the cheaper one a budget's ``downgrade_to`` names (``arrival``: only the
        request id, times, endpoint and who and what it is for are set)."""
        requested = req.model
        downgrade = self._downgrade(who.team, who.digest, requested)
        try:
            adm, out = await self._attempt(arrival, who, team, req, downgrade or requested, requested)
        except Refused as refused:  # a budget with downgrade_to refused: the cheaper model may still fit
            err = refused.error
            cheaper = err.downgrade_to if isinstance(err, BudgetExceeded) and not downgrade else None
            downgrade = self._downgrade(who.team, "", requested, cheaper) if cheaper else None
            if downgrade is None:
                raise
            return await self._attempt(arrival, who, team, req, downgrade, requested)
        # the reserve's own answer shows a budget past warn_at (another process used it): swap models
        past = adm.reservation.past_warn if adm.reservation is not None and downgrade is None else None
        downgrade = self._downgrade(who.team, "", requested, past.downgrade_to) if past else None
        if adm.reservation is None or downgrade is None:
            return adm, out
        await self._accountant.release(adm.reservation)
        return await self._attempt(arrival, who, team, req, downgrade, requested)

    def _downgrade(self, team: str, digest: str, model: str, target: str | None = None) -> str | None:
        """The cheaper model to serve with: ``target`` (the downgrade of a budget past ``warn_at``, or of the
        one that refused the reservation), else that of the first budget with ``downgrade_to`` this process
        last saw past ``warn_at``; only a model the team may use."""
        if target is None:
            budget = self._accountant.downgrade_target(team, digest, model)
            target = budget.downgrade_to if budget is not None else None
        if target is None or target == model:
            return None
        t = self._s.teams.get(team)
        return target if t is None or t.models is None or target in t.models else None

    async def _attempt(
        self,
        arrival: Admission,
        who: Principal,
        team: TeamSettings | None,
        req: ParsedRequest,
        name: str,
        requested: str,
    ) -> tuple[Admission, Outbound]:
        """Count, apply the team's caps and reserve the worst case (or, ``reserve: observed``, the observed
        amount) for serving ``req`` with model ``name``."""
        model = self._s.models[name]
        upstream = model.upstream_model or name
        req.model = name
        est: Estimate | None = None
        trimmed: int | None = None
        seed: int | None = None
        price: Price | None = None
        sent_cap: int | None = None
        try:
            est = await self._count(req, model, upstream, team)  # known to a refusal's ledger row from here
            est, trimmed = self._fit(req, model, upstream, who.team, team, est)
            endpoint = req.endpoint
            cap, sent_cap = _output_cap(req, team, model, est)
            endpoint.protocol.apply(
                req, model=upstream if upstream != name or name != requested else None, cap=cap.send
            )
            price = self._price(name, req, who)
            worst_tokens = est.tokens + cap.worst_case
            worst_usd = price.worst_case(
                est.tokens, cap.worst_case, cache_writes=req.cache_writes, service_tier=req.service_tier
            )
            seed = _seed(req.body.get("seed"))
            subject = _subject(arrival, name)
            meta = LeaseMeta(
                arrival.request_id, arrival.ts, who.team, who.key_name, name, model.provider, endpoint.name,
                req.stream, est.tokens, worst_tokens, worst_usd, subject.end_user, arrival.tags,
            )  # fmt: skip
            res = await self._accountant.reserve(
                who.team, who.digest, name, worst_tokens, worst_usd, meta, subject,
                sizing=_sizing(price, req, est.tokens, cap.worst_case) if self._observed() else None,
            )  # fmt: skip
        except ProxyError as err:
            raise Refused(
                err, _admission(arrival, who, req, model, est, trimmed, seed, price, None, sent_cap)
            ) from None
        headers = {"x-quotagate-downgraded-from": requested} if name != requested else {}
        if trimmed is not None:
            headers["x-quotagate-trimmed-tokens"] = str(trimmed)
        if res is not None:
            headers.update(res.headers)
            headers["x-quotagate-reserved-tokens"] = str(res.reserved_tokens)
        return _admission(arrival, who, req, model, est, trimmed, seed, price, res, sent_cap), Outbound(
            req, model, headers
        )

    def _observed(self) -> bool:
        """A team or budget in force reserves from observed output (``reserve: observed``)."""
        return self._accountant.budgets.observed

    def _price(self, name: str, req: ParsedRequest, who: Principal) -> Price:
        """The model's price; a service tier it has no price for is refused where a budget applies."""
        price = self._prices[name]
        budgeted = lambda: self._accountant.budgeted(who.team, who.digest)  # noqa: E731 (asked only when needed)
        policy.check_priced(name, price, budgeted)
        policy.check_service_tier(name, price, req.service_tier, budgeted)
        return price

    async def _count(
        self, req: ParsedRequest, model: ModelSettings, upstream: str, team: TeamSettings | None
    ) -> Estimate:
        """Whatever the body holds is counted (odd shapes as their JSON text, inexact); input out of sight
        (stored context, no prompt field) is reserved up to the policy's bound and settled from usage."""
        protocol, enc = req.endpoint.protocol, model.encoding
        counter = self._counter.for_model(req.model)  # a self-hosted model's own tokenizer (proxy/tokenize.py)
        est = await protocol.count(counter, req, model=upstream, encoding=enc)
        if protocol.precount_scaled:  # no public tokenizer: the provider's count, else the local bound
            counted = await self._precount.provider_count(req.model, req, upstream)
            est = (
                self._precount.bound(req.model, est) if counted is None else Precount.counted_by_provider(est, counted)
            )
        if req.unseen_input:
            est = est.with_unseen(policy.unseen_input_bound(team, model))
        return est

    def _fit(
        self,
        req: ParsedRequest,
        model: ModelSettings,
        upstream: str,
        team_name: str,
        team: TeamSettings | None,
        est: Estimate,
    ) -> tuple[Estimate, int | None]:
        """The team's context cap: refused, or trimmed where the protocol has a conversation to trim (the
        estimate of what is sent, and the tokens trimmed)."""
        protocol, enc, counter = req.endpoint.protocol, model.encoding, self._counter.for_model(req.model)

        def recount(messages: list[Any]) -> int:
            return protocol.count_messages(counter, req, messages, model=upstream, encoding=enc).tokens

        turns = protocol.messages(req)
        kept, _, trimmed = policy.enforce_context(
            team_name, team, est.tokens, turns, recount, param=req.endpoint.prompt_field
        )
        if kept is None:
            return est, None
        req.set(req.endpoint.prompt_field, kept)
        return protocol.count_messages(counter, req, kept, model=upstream, encoding=enc), trimmed


def _subject(arrival: Admission, model: str) -> Subject:
    """Who and what the request is for, for the end-user, tag and model limits of its team."""
    tags = tuple(arrival.tags.split(",")) if arrival.tags else ()
    return Subject(arrival.end_user, tags, model, arrival.session)


def _sizing(price: Price, req: ParsedRequest, input_tokens: int, output_cap: int) -> Sizing:
    """What ``reserve: observed`` sizes a hold from: the counted input, the cap, and the worst-case price with
    fewer output tokens (same tier and cache-write rules as the worst case: proxy/observed.py)."""

    def micro_usd(output_tokens: int) -> int:
        return price.worst_case(
            input_tokens, output_tokens, cache_writes=req.cache_writes, service_tier=req.service_tier
        )

    return Sizing(input_tokens, output_cap, micro_usd)


def _output_cap(
    req: ParsedRequest, team: TeamSettings | None, model: ModelSettings, est: Estimate
) -> tuple[policy.OutputCap, int | None]:
    """What to reserve and write into the body, and the cap the request goes out with (None: none)."""
    endpoint = req.endpoint
    requested = req.requested_cap if endpoint.has_output else None
    cap = policy.output_cap(
        requested if endpoint.has_output else 0,
        team if endpoint.cap_fields else None,  # a team cap binds only what has a cap field
        model,
        endpoint.default_cap,
        est.tokens,
    )
    return cap, cap.send if cap.send is not None else requested


def _admission(
    arrival: Admission,
    who: Principal,
    req: ParsedRequest,
    model: ModelSettings,
    est: Estimate | None,
    trimmed: int | None,
    seed: int | None,
    price: Price | None,
    res: Reservation | None,
    sent_cap: int | None,
) -> Admission:
    return Admission(
        arrival.request_id,
        arrival.ts,
        arrival.t0,
        arrival.endpoint,
        who.team,
        who.key_name,
        req.model,
        req.stream,
        model.provider,
        model.upstream_model or req.model,
        est,
        trimmed or 0,
        seed,
        price,
        res,
        req.service_tier,
        sent_cap,
        arrival.end_user,
        arrival.tags,
        arrival.session,
    )


def _seed(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None

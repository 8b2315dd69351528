"""Finish a request once, from its ``Admission`` and its ``Relayed``: settle the reservation with what was
used (the provider's usage, else quotagate's counts), then its ledger record, metrics and log line, each
built once here. Settlement runs in an app-owned task, so that a client disconnect or a shutdown cannot
skip it.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

import orjson

from . import tiers
from .admit import Admission
from .forward import Relayed
from .ledger import Ledger
from .logs import request_finished
from .metrics import Metrics, RequestOutcome
from .outcomes import metric_outcome
from .precount import Precount
from .settings import Settings
from .settle import Accountant
from .store.base import LedgerRecord
from .usage import Usage

if TYPE_CHECKING:  # proxy.objects serves the stateful endpoints; routes.Router hands its Ownership here
    from .objects import Ownership

log = logging.getLogger("quotagate")

_NOTHING = Usage(0, 0, 0, 0)
_SERVED = frozenset({"ok", "client_cancelled"})  # answered by the provider (the client may have left)


class Finisher:
    def __init__(
        self,
        settings: Settings,
        accountant: Accountant,
        ledger: Ledger,
        metrics: Metrics,
        spawn: Callable[[Awaitable[None]], None],
        precount: Precount,
    ) -> None:
        self._s = settings
        self._precount = precount
        self._unpriced_logged: set[tuple[str, str]] = set()
        self._accountant = accountant
        self._ledger = ledger
        self._metrics = metrics
        self._spawn = spawn
        self.objects: Ownership | None = None  # set by routes.Router, which serves what it records

    def finish(self, adm: Admission, relayed: Relayed) -> None:
        """What the request used and costs: billed when the provider served it (or broke off a stream it had
        started); the object it created is known at once, before the client can name it in a next request."""
        est = adm.estimate
        counted_in = est.tokens if est is not None else 0
        used = relayed.usage.or_counted(counted_in, relayed.counted_output or 0, tiers.explicit(adm.service_tier))
        charged = relayed.outcome in _SERVED or (relayed.outcome == "upstream_error" and relayed.ttft is not None)
        parts = adm.price.parts(used) if charged and adm.price is not None else None  # pico-USD by type
        cost = -(-sum(parts.values()) // 1_000_000) if parts is not None else 0  # Price.cost, priced once
        if not charged:
            used = _NOTHING
        else:
            self._learn(adm, relayed)
        if self.objects is not None and relayed.object_id is not None:
            self._spawn(self.objects.created(adm.endpoint, relayed.object_id, adm.team, relayed.provider))
        self._spawn(self._settle_and_record(adm, relayed, used, cost, charged, parts if cost else None))

    def _learn(self, adm: Admission, relayed: Relayed) -> None:
        """What a served request teaches: how far off a scaled local count was, and tokens without a price."""
        est, reported = adm.estimate, relayed.usage.input
        if est is not None and est.local is not None and reported and not est.unseen:
            self._precount.observe(adm.model, est.local, reported)
            self._metrics.set_precount(adm.model, self._precount.factor(adm.model).value)
        u = relayed.usage  # a dimension without a price can only be a cache write or a non-standard tier
        if adm.price is not None and (u.cache_write_5m or u.cache_write_1h or tiers.served(u.tier) is not None):
            for dimension, tokens in adm.price.unpriced_tokens(relayed.usage).items():
                self._metrics.count_unpriced(adm.model, dimension, tokens)
                if (adm.model, dimension) not in self._unpriced_logged:
                    self._unpriced_logged.add((adm.model, dimension))
                    tier = dimension.startswith("tiers.")
                    key = f"tiers.{relayed.usage.tier}" if tier else dimension  # the name, not the label
                    log.warning(
                        "model %s reports %s tokens but has no price for them: charged at %s (set models.%s.price.%s)",
                        adm.model,
                        key,
                        "its standard rates" if tier else "its input rate",
                        adm.model,
                        key,
                    )

    def attempt_failed(self, adm: Admission, relayed: Relayed) -> None:
        """A provider that failed before anything was relayed: recorded on its own, nothing charged."""
        request_finished(adm, relayed, 0, self._s.providers)
        self._ledger.append(_record(adm, relayed, 0, charged=False))
        self._metrics.record(_observed(adm, relayed, _NOTHING, 0))

    async def _settle_and_record(
        self, adm: Admission, relayed: Relayed, used: Usage, cost: int, charged: bool, parts: dict[str, int] | None
    ) -> None:
        if adm.reservation is not None:  # a whole answer's output teaches the observed reservations
            whole = used.output if relayed.outcome == "ok" else None
            await self._accountant.settle(adm.reservation, used.total, cost, whole)
        request_finished(adm, relayed, cost, self._s.providers)
        self._ledger.append(_record(adm, relayed, cost, charged=charged, charged_tokens=used.total))
        self._metrics.record(_observed(adm, relayed, used, cost, parts))


def _record(adm: Admission, r: Relayed, cost: int, *, charged: bool, charged_tokens: int = 0) -> LedgerRecord:
    est = adm.estimate
    parts = est.parts if est is not None else None
    ms = 1000.0
    return LedgerRecord(
        request_id=adm.request_id,
        ts=adm.ts,
        team=adm.team or "",
        key_name=adm.key_name,
        model=adm.model,
        provider=r.provider,
        endpoint=adm.endpoint.name,
        stream=adm.stream,
        status=r.status,
        outcome=r.outcome,
        counted_input=(est.tokens if est.local is None else est.local) if est is not None else None,
        counted_output=r.counted_output,
        input_tokens=r.usage.input,
        cached_input_tokens=r.usage.cached_input,
        output_tokens=r.usage.output,
        reasoning_tokens=r.usage.reasoning,
        cost_micro_usd=cost,
        latency_ms=(r.t_end - adm.t0) * ms,
        ttft_ms=r.ttft * ms if r.ttft is not None else None,
        trimmed_tokens=adm.trimmed,
        estimated=est is not None and not est.exact,
        seed=_int64(adm.seed),
        system_fingerprint=r.fingerprint,
        upstream_model=adm.upstream_model,
        error=r.error,
        charged=charged,
        cache_write_5m_tokens=r.usage.cache_write_5m,
        cache_write_1h_tokens=r.usage.cache_write_1h,
        usage_raw=orjson.dumps(r.usage_raw).decode() if r.usage_raw is not None else None,
        service_tier=r.usage.tier,
        input_system=parts.system if parts is not None else None,
        input_tools=parts.tools if parts is not None else None,
        input_history=parts.history if parts is not None else None,
        input_new=parts.new if parts is not None else None,
        history_messages=parts.history_messages if parts is not None and parts.history_messages else None,
        output_cap=_int64(adm.output_cap),
        price_version=adm.price.version if adm.price is not None else None,
        end_user=adm.end_user,
        tags=adm.tags,
        charged_tokens=charged_tokens,  # what settle charged the token counters: used.total
    )


_INT64 = 2**63 - 1


def _int64(v: int | None) -> int | None:
    """A client's integer as the ledger can hold it (SQLite and PostgreSQL: 64 bits); beyond: not recorded.
    A ``max_tokens`` or ``seed`` of 10**30 is forwarded as sent, and must not make its row unwritable."""
    return v if v is None or -_INT64 - 1 <= v <= _INT64 else None


def _observed(
    adm: Admission, r: Relayed, used: Usage, cost: int, spend: dict[str, int] | None = None
) -> RequestOutcome:
    elapsed = r.t_end - adm.t0
    est = adm.estimate
    parts = est.parts if est is not None else None
    served = r.outcome in _SERVED
    return RequestOutcome(
        team=adm.team,
        model=adm.model or "other",
        provider=r.provider,
        operation=adm.endpoint.operation,
        outcome=metric_outcome(r.outcome),
        status=r.status,
        error_type=r.error_type if r.outcome != "ok" else None,
        stream=adm.stream,
        input_tokens=used.input if served else None,
        cached_input_tokens=used.cached_input,
        output_tokens=used.output if served else None,
        reasoning_tokens=used.reasoning,
        cost_micro_usd=cost,
        duration_s=elapsed,
        ttft_s=r.ttft,
        overhead_s=max(elapsed - r.upstream_s, 0.0),
        parts=None
        if parts is None
        else {"system": parts.system, "tools": parts.tools, "history": parts.history, "new": parts.new},
        trimmed_tokens=adm.trimmed,
        # drift compares counts, not a bound reserved for stored context quotagate cannot see
        counted_input=est.tokens if est is not None and not est.unseen else None,
        reported_input=r.usage.input,
        cache_write_5m_tokens=used.cache_write_5m,
        cache_write_1h_tokens=used.cache_write_1h,
        spend_parts=spend,
    )

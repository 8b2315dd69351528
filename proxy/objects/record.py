"""What one stateful request leaves behind: a ledger row (its own endpoint, cost 0, not charged) and a
``quotagate_requests`` count (operation ``stateful``)."""

from __future__ import annotations

from ..metrics import RequestOutcome
from ..outcomes import Outcome
from ..store.base import LedgerRecord
from ..values import value
from .relay import Relayed
from .routes import Route
from .target import Target


@value
class Served:
    """One stateful request once answered: who asked, which route, where it went, what came back."""

    route: Route
    request_id: str
    ts: float  # wall clock at arrival
    elapsed: float  # seconds from arrival to the answer
    team: str | None
    key_name: str
    target: Target | None
    done: Relayed

    @property
    def outcome(self) -> Outcome:
        err = self.done.error
        return err.outcome if err is not None else "client_cancelled" if self.done.left else "ok"

    @property
    def model(self) -> str:
        return self.target.model if self.target is not None else ""

    @property
    def provider(self) -> str:
        return self.target.provider if self.target is not None else ""


def ledger_record(s: Served) -> LedgerRecord:
    err = s.done.error
    return LedgerRecord(
        request_id=s.request_id,
        ts=s.ts,
        team=s.team or "",
        key_name=s.key_name,
        model=s.model,
        provider=s.provider,
        endpoint=s.route.name,
        stream=s.done.streamed,
        status=s.done.status,
        outcome=s.outcome,
        counted_input=None,
        counted_output=None,
        input_tokens=None,
        cached_input_tokens=None,
        output_tokens=None,
        reasoning_tokens=None,
        cost_micro_usd=0,
        latency_ms=s.elapsed * 1000.0,
        ttft_ms=None,
        error=None if err is None else err.message,
        charged=False,
    )


def request_outcome(s: Served) -> RequestOutcome:
    err, outcome = s.done.error, s.outcome
    return RequestOutcome(
        team=s.team,
        model=s.model or "other",
        provider=s.provider,
        operation="stateful",
        outcome=outcome if outcome != "store_unavailable" else "upstream_error",
        status=s.done.status,
        error_type=None if err is None else err.error_type,  # by status for a provider's error
        stream=s.done.streamed,
        input_tokens=None,
        cached_input_tokens=None,
        output_tokens=None,
        reasoning_tokens=None,
        cost_micro_usd=0,
        duration_s=s.elapsed,
        ttft_s=None,
        overhead_s=max(s.elapsed - s.done.upstream_s, 0.0),
        parts=None,
        trimmed_tokens=0,
        counted_input=None,
        reported_input=None,
    )

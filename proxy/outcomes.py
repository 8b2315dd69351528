"""What became of a request, declared once: the ledger stores it, the request log and ``quotagate usage`` group
it into ok / refused / failed, the requests metric counts it.

Every refusal quotagate answers itself names its outcome on its error class (proxy/errors.py), so no step
maps error types or strings to outcomes.
"""

from __future__ import annotations

from typing import Literal, cast, get_args

Outcome = Literal[
    "ok",
    "client_cancelled",  # the client left mid-stream; what was relayed is charged
    "invalid_request",
    "unauthorized",
    "context_rejected",
    "budget_exceeded",
    "rate_limited",
    "upstream_error",
    "store_unavailable",
    "lease_expired",  # recorded by the reaper for a lease its process never settled
]
# The values of ``quotagate_requests_total{outcome}``: dashboards and alert rules query these.
MetricOutcome = Literal[
    "ok",
    "budget_exceeded",
    "rate_limited",
    "context_rejected",
    "upstream_error",
    "client_cancelled",
    "invalid_request",
    "unauthorized",
]
Verdict = Literal["ok", "refused", "failed"]

OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)
METRIC_OUTCOMES: tuple[MetricOutcome, ...] = get_args(MetricOutcome)

# outcome -> (what on-call calls it, how the requests metric counts it)
KINDS: dict[Outcome, tuple[Verdict, MetricOutcome | None]] = {
    "ok": ("ok", "ok"),
    "client_cancelled": ("ok", "client_cancelled"),
    "invalid_request": ("refused", "invalid_request"),
    "unauthorized": ("refused", "unauthorized"),
    "context_rejected": ("refused", "context_rejected"),
    "budget_exceeded": ("refused", "budget_exceeded"),
    "rate_limited": ("refused", "rate_limited"),
    "upstream_error": ("failed", "upstream_error"),
    # a request the gateway could not serve for want of its store: the failure-rate alert counts it with
    # the provider's failures (it is not the client's doing)
    "store_unavailable": ("failed", "upstream_error"),
    "lease_expired": ("failed", None),  # not a request the metrics saw finish
}


def verdict(outcome: str, status: int) -> Verdict:
    """ok / refused / failed; an outcome this version does not know (an older ledger row) by its status."""
    kind = KINDS.get(cast(Outcome, outcome))
    if kind is not None:
        return kind[0]
    return "failed" if status >= 500 or status == 0 else "refused"


def metric_outcome(outcome: Outcome) -> MetricOutcome:
    """The ``outcome`` label a finished request is counted under."""
    label = KINDS[outcome][1]
    if label is None:
        raise ValueError(f"{outcome!r} is not the outcome of a request the metrics count")
    return label

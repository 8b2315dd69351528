"""Outcomes are declared once (proxy/outcomes.py) and every refusal class names its own."""

from __future__ import annotations

import pytest

from proxy import errors
from proxy.metrics import OUTCOMES as METRIC_LABELS
from proxy.outcomes import KINDS, METRIC_OUTCOMES, OUTCOMES, metric_outcome, verdict


def _subclasses(cls: type[errors.ProxyError]) -> list[type[errors.ProxyError]]:
    out = [cls]
    for sub in cls.__subclasses__():
        out += _subclasses(sub)
    return out


def test_every_outcome_has_a_verdict_and_a_metric_label_or_none() -> None:
    assert set(KINDS) == set(OUTCOMES)
    assert {label for _, label in KINDS.values()} - {None} == set(METRIC_OUTCOMES) == set(METRIC_LABELS)
    with pytest.raises(ValueError, match="lease_expired"):
        metric_outcome("lease_expired")  # the reaper's: no request metric


@pytest.mark.parametrize("cls", _subclasses(errors.ProxyError))
def test_every_error_class_carries_a_known_outcome(cls: type[errors.ProxyError]) -> None:
    assert cls.outcome in OUTCOMES


def test_refusals_and_failures_by_class() -> None:
    assert errors.AuthenticationError("x").outcome == "unauthorized"
    assert errors.ContextLengthExceeded("x").outcome == "context_rejected"
    assert errors.BudgetExceeded("x").outcome == "budget_exceeded"
    assert errors.RateLimited("x", kind="tokens").outcome == "rate_limited"
    assert errors.InvalidJSON("x").outcome == errors.ModelNotFound("m").outcome == "invalid_request"
    upstream = errors.normalise_upstream_error(503, b"")
    assert (upstream.outcome, upstream.error_type) == ("upstream_error", "upstream_503")
    assert errors.UpstreamTimeout("x").error_type == "upstream_timeout"
    assert metric_outcome(errors.StoreUnavailable("x").outcome) == "upstream_error"


def test_verdict_of_an_unknown_outcome_goes_by_status() -> None:
    assert (verdict("ok", 200), verdict("rate_limited", 429), verdict("lease_expired", 0)) == (
        "ok",
        "refused",
        "failed",
    )
    assert (verdict("teapot", 418), verdict("teapot", 503), verdict("teapot", 0)) == ("refused", "failed", "failed")

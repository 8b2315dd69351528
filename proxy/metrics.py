"""Every quotagate metric, declared once on an injected registry, and the per-request recorder.

Names are a contract (dashboards/ and dashboards/alerts.yml query them):

* OTel GenAI histograms (conventions.md section 6, OTel bucket boundaries), labelled with
  ``gen_ai_operation_name``, ``gen_ai_provider_name``, ``gen_ai_request_model`` and ``team``:
  ``gen_ai_client_token_usage`` (+ ``gen_ai_token_type`` input|output),
  ``gen_ai_client_operation_duration_seconds`` (+ ``error_type``, always present, ``""`` on success, so
  every request lands in one family and ``error_type!=""`` selects failures),
  ``gen_ai_server_time_to_first_token_seconds`` and ``gen_ai_server_time_per_output_token_seconds`` (streams only).
* Governance, prefix ``quotagate_``, labelled ``team`` and ``model``: tokens, spend (USD), requests by
  outcome, input parts, trimmed tokens, count drift, proxy overhead, and per-budget limit/used gauges.

Labels are bounded: ``team`` is a configured team, ``other`` for anything else and ``unknown`` when the
caller is unauthenticated; ``model`` is a configured model or ``other``; provider, operation and outcome
come from fixed sets. No key, user or request id is ever a label.

Under ``uvicorn --workers N`` prometheus_client's multiprocess mode is used: ``prepare_multiprocess_dir``
runs in the parent before workers start, each worker writes its own mmap files, counters and histograms
are summed at scrape time. Budget gauges are not kept per worker at all: the scraping process reads every
team budget from the shared store when it is scraped, so they agree with ``/v1/usage`` at once.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client import multiprocess as _mp

from .metrics_budgets import BudgetCollector
from .outcomes import METRIC_OUTCOMES
from .pricing import SPEND_TYPES
from .values import value

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# The classic text format every Prometheus 2.x/3.x scrapes; all our names are legacy-valid, so the body is
# the same as for prometheus_client's newer "version=1.0.0" default.
CONTENT_TYPE_TEXT = "text/plain; version=0.0.4; charset=utf-8"

OUTCOMES = METRIC_OUTCOMES  # declared in proxy/outcomes.py
# "stateful": reading, listing, cancelling or deleting stored responses and chat completions, counting
# input tokens, reading one model (no tokens, no spend)
OPERATIONS = ("chat", "text_completion", "embeddings", "responses", "stateful")
TOKEN_TYPES = ("input", "cached_input", "cache_write_5m", "cache_write_1h", "output", "reasoning")
PARTS = ("system", "tools", "history", "new")
UNITS = ("tokens", "usd")
LEDGER_ERROR_CAUSES = ("store_unavailable", "busy", "disk_full", "constraint", "oom", "other", "rejected")
OTHER = "other"
UNKNOWN_TEAM = "unknown"

# OTel GenAI ExplicitBucketBoundaries (semantic-conventions model/gen-ai/metrics.yaml).
TOKEN_BUCKETS = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864)
DURATION_BUCKETS = (0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92)
TTFT_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)
TPOT_BUCKETS = (0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5)
# quotagate's own: time spent in the gateway is sub-millisecond to tens of ms; drift sits around 1.0.
OVERHEAD_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
DRIFT_BUCKETS = (0.5, 0.8, 0.9, 0.95, 0.98, 0.99, 1.0, 1.01, 1.02, 1.05, 1.1, 1.25, 1.5, 2.0)

_GENAI_LABELS = ("gen_ai_operation_name", "gen_ai_provider_name", "gen_ai_request_model", "team")
_ERROR_TYPE_UNSAFE = re.compile(r"[^a-z0-9_.]+")


@value
class RequestOutcome:
    """What one request did, handed to ``Metrics.record`` once, after settlement."""

    team: str | None  # None = unauthenticated
    model: str  # client-facing model name as requested; unknown -> "other"
    provider: str  # configured provider name ("" if unknown)
    operation: str  # one of OPERATIONS
    outcome: str  # one of OUTCOMES (proxy.outcomes.metric_outcome of the request's outcome)
    status: int
    error_type: str | None  # e.g. "rate_limit_exceeded", "upstream_502", "timeout"; None on success
    stream: bool
    input_tokens: int | None
    cached_input_tokens: int | None
    output_tokens: int | None
    reasoning_tokens: int | None
    cost_micro_usd: int
    duration_s: float
    ttft_s: float | None
    overhead_s: float
    parts: Mapping[str, int] | None  # {"system", "tools", "history", "new"} -> tokens
    trimmed_tokens: int
    counted_input: int | None  # quotagate's pre-count
    reported_input: int | None  # provider-reported input
    cache_write_5m_tokens: int | None = None
    cache_write_1h_tokens: int | None = None
    spend_parts: Mapping[str, int] | None = None  # pico-USD by SPEND_TYPES


class Metrics:
    """All metrics on one registry; ``record`` turns a RequestOutcome into observations."""

    def __init__(
        self,
        *,
        teams: Sequence[str],
        models: Mapping[str, str],
        registry: CollectorRegistry | None = None,
    ) -> None:
        # `_created` series double every counter/histogram for no query we need (and they are absent in
        # multiprocess mode anyway); prometheus_client only offers this as a process-wide switch.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self._teams = frozenset(teams)
        self._models = dict(models)
        self._providers = frozenset(models.values())
        self._registry = registry if registry is not None else CollectorRegistry()
        self._multiproc_dir = _multiproc_dir()
        self._declare_genai(self._registry)
        self._declare_governance(self._registry)
        self._declare_ledger(self._registry)
        self._declare_precount(self._registry)
        # Budget state lives in the shared store: the scraping process reads it at scrape time (one store
        # round trip, see Gateway.scrape), so the gauges never lag and no worker's stale value wins.
        self._budgets = BudgetCollector()
        if self._multiproc_dir is None:
            self._registry.register(self._budgets)
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._preinitialise()

    def _declare_genai(self, r: CollectorRegistry) -> None:
        """The OTel GenAI histograms."""
        self.token_usage = Histogram(
            "gen_ai_client_token_usage",
            "Number of input and output tokens used per request (OTel gen_ai.client.token.usage).",
            [*_GENAI_LABELS, "gen_ai_token_type"],
            buckets=TOKEN_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "gen_ai_client_operation_duration_seconds",
            "Duration of GenAI operations through the gateway; error_type is empty on success.",
            [*_GENAI_LABELS, "error_type"],
            buckets=DURATION_BUCKETS,
            registry=r,
        )
        self.ttft = Histogram(
            "gen_ai_server_time_to_first_token_seconds",
            "Time to the first streamed chunk carrying output, streams only.",
            _GENAI_LABELS,
            buckets=TTFT_BUCKETS,
            registry=r,
        )
        self.tpot = Histogram(
            "gen_ai_server_time_per_output_token_seconds",
            "(duration - time to first token) / (output tokens - 1), streams with over one output token.",
            _GENAI_LABELS,
            buckets=TPOT_BUCKETS,
            registry=r,
        )

    def _declare_governance(self, r: CollectorRegistry) -> None:
        """quotagate's own per team and model: tokens, spend, requests, input parts, trimming, drift, overhead."""
        self.tokens = Counter(
            "quotagate_tokens",
            "Tokens billed, by type (cached_input and the cache writes are part of input, reasoning is part of "
            "output).",
            ["team", "model", "type"],
            registry=r,
        )
        self.spend = Counter("quotagate_spend_usd", "Spend in US dollars.", ["team", "model"], registry=r)
        self.spend_by_type = Counter(
            "quotagate_spend_by_type_usd",
            "Spend in US dollars by what was bought: input, cache_read, cache_write, output (before each "
            "request's rounding up to a micro-dollar, so the types add up to quotagate_spend_usd within that).",
            ["team", "model", "provider", "type"],
            registry=r,
        )
        self.requests = Counter("quotagate_requests", "Requests by outcome.", ["team", "model", "outcome"], registry=r)
        self.parts = Counter(
            "quotagate_input_tokens_part",
            "Pre-counted input tokens by part of the prompt (system, tools, history, new).",
            ["team", "model", "part"],
            registry=r,
        )
        self.trimmed = Counter(
            "quotagate_context_trimmed_tokens",
            "Input tokens removed by the context policy before forwarding.",
            ["team", "model"],
            registry=r,
        )
        self.drift = Histogram(
            "quotagate_token_count_drift_ratio",
            "Provider-reported input tokens divided by quotagate's pre-count.",
            ["team", "model"],
            buckets=DRIFT_BUCKETS,
            registry=r,
        )
        self.overhead = Histogram(
            "quotagate_proxy_overhead_seconds",
            "Time spent in quotagate itself per request, upstream time excluded.",
            ["team", "model"],
            buckets=OVERHEAD_BUCKETS,
            registry=r,
        )

    def _declare_ledger(self, r: CollectorRegistry) -> None:
        """The ledger writer's queue and store write errors."""
        # Per process; a scrape sums the live workers' queues.
        self.ledger_queue_depth = Gauge(
            "quotagate_ledger_queue_depth",
            "Ledger records not yet in the store: queued in memory or in spill files.",
            multiprocess_mode="livesum",
            registry=r,
        )
        self.ledger_write_errors = Counter(
            "quotagate_ledger_write_errors",
            "Failed ledger writes by cause (retried, none dropped; rejected: a record set aside in a file).",
            ["cause"],
            registry=r,
        )
        for cause in LEDGER_ERROR_CAUSES:
            self.ledger_write_errors.labels(cause)

    def _declare_precount(self, r: CollectorRegistry) -> None:
        """Pre-count factors learned for models without a public tokenizer, and tokens without a price."""
        self.precount_factor = Gauge(
            "quotagate_precount_factor",
            "Factor applied to the local input count of a model without a public tokenizer (the reservation's "
            "bound), learned from provider counts; the highest of the live workers.",
            ["model"],
            multiprocess_mode="livemax",
            registry=r,
        )
        self.unpriced_tokens = Counter(
            "quotagate_unpriced_tokens",
            "Tokens in a usage dimension the model has no price for: cache writes, a service tier (tiers.<name>).",
            ["model", "dimension"],
            registry=r,
        )

    def set_precount(self, model: str, factor: float) -> None:
        self.precount_factor.labels(self.model_label(model)).set(factor)

    def count_unpriced(self, model: str, dimension: str, tokens: int) -> None:
        self.unpriced_tokens.labels(self.model_label(model), dimension).inc(tokens)

    def _preinitialise(self) -> None:
        """Known series start at 0 so rate() and absent-vs-zero behave from the first scrape."""
        for team in sorted(self._teams):
            for model in [*sorted(self._models), OTHER]:
                self.spend.labels(team, model)
                for outcome in OUTCOMES:
                    self.requests.labels(team, model, outcome)
                if model == OTHER:
                    continue
                self.trimmed.labels(team, model)
                for token_type in TOKEN_TYPES:
                    self.tokens.labels(team, model, token_type)
                for spend_type in SPEND_TYPES:
                    self.spend_by_type.labels(team, model, self._models[model], spend_type)

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, memoised: labels are bounded, and the lookup is per request hot."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    def team_label(self, team: str | None) -> str:
        if team is None:
            return UNKNOWN_TEAM
        return team if team in self._teams else OTHER

    def model_label(self, model: str) -> str:
        return model if model in self._models else OTHER

    def provider_label(self, provider: str, model: str) -> str:
        if provider in self._providers:
            return provider
        return self._models.get(model, OTHER)

    def record(self, o: RequestOutcome) -> None:
        """Record one finished request. Raises ValueError on an outcome outside OUTCOMES."""
        if o.outcome not in OUTCOMES:
            raise ValueError(f"unknown outcome {o.outcome!r}; expected one of {', '.join(OUTCOMES)}")
        team = self.team_label(o.team)
        model = self.model_label(o.model)
        genai = (
            o.operation if o.operation in OPERATIONS else OTHER,
            self.provider_label(o.provider, o.model),
            model,
            team,
        )
        self._child(self.requests, team, model, o.outcome).inc()
        self._child(self.duration, *genai, _error_type(o.error_type)).observe(max(o.duration_s, 0.0))
        self._child(self.overhead, team, model).observe(max(o.overhead_s, 0.0))
        if o.cost_micro_usd > 0:
            self._child(self.spend, team, model).inc(o.cost_micro_usd / 1e6)
            for spend_type, pico in (o.spend_parts or {}).items():
                if pico > 0:
                    self._child(self.spend_by_type, team, model, genai[1], spend_type).inc(pico / 1e12)
        self._record_tokens(o, team, model, genai)
        if o.stream and o.ttft_s is not None:
            self._child(self.ttft, *genai).observe(max(o.ttft_s, 0.0))
            if o.output_tokens is not None and o.output_tokens > 1:
                tpot = (o.duration_s - o.ttft_s) / (o.output_tokens - 1)
                self._child(self.tpot, *genai).observe(max(tpot, 0.0))
        if o.parts:
            for part in PARTS:
                if o.parts.get(part, 0) > 0:
                    self._child(self.parts, team, model, part).inc(o.parts[part])
        if o.trimmed_tokens > 0:
            self._child(self.trimmed, team, model).inc(o.trimmed_tokens)
        if o.counted_input and o.reported_input is not None:
            self._child(self.drift, team, model).observe(o.reported_input / o.counted_input)

    def _record_tokens(self, o: RequestOutcome, team: str, model: str, genai: tuple[str, ...]) -> None:
        by_type = {
            "input": o.input_tokens,
            "cached_input": o.cached_input_tokens,
            "cache_write_5m": o.cache_write_5m_tokens,
            "cache_write_1h": o.cache_write_1h_tokens,
            "output": o.output_tokens,
            "reasoning": o.reasoning_tokens,
        }
        for token_type, n in by_type.items():
            if n is not None and n > 0:
                self._child(self.tokens, team, model, token_type).inc(n)
        if o.input_tokens is not None:
            self._child(self.token_usage, *genai, "input").observe(o.input_tokens)
        if o.output_tokens is not None:
            self._child(self.token_usage, *genai, "output").observe(o.output_tokens)

    def set_budget(self, team: str, window: str, unit: str, limit: float, used: float, reserved: float = 0.0) -> None:
        """Publish one team budget's current window; ``usd`` values are float dollars."""
        if unit not in UNITS:
            raise ValueError(f"unknown budget unit {unit!r}; expected tokens or usd")
        self._budgets.put((self.team_label(team), window, unit), (limit, used, reserved))

    def set_budgets(self, samples: Iterable[tuple[str, str, str, float, float, float]]) -> None:
        """Replace every budget series with (team, window, unit, limit, used, reserved) read just now."""
        self._budgets.clear()
        for team, window, unit, limit, used, reserved in samples:
            self.set_budget(team, window, unit, limit, used, reserved)

    def render(self) -> tuple[bytes, str]:
        """The exposition body and its content type; all workers' values in multiprocess mode."""
        if self._multiproc_dir is None:
            return generate_latest(self._registry), CONTENT_TYPE_TEXT
        merged = CollectorRegistry()
        _mp.MultiProcessCollector(merged, path=self._multiproc_dir)  # type: ignore[no-untyped-call]
        merged.register(self._budgets)
        return generate_latest(merged), CONTENT_TYPE_TEXT


def _error_type(error_type: str | None) -> str:
    if not error_type:
        return ""
    return _ERROR_TYPE_UNSAFE.sub("_", error_type.lower())[:64]


def _multiproc_dir() -> str | None:
    path = os.environ.get(MULTIPROC_ENV)
    if not path:
        return None
    # prometheus_client picks its value class when it is first imported; if the variable was set later
    # this process keeps values in memory and a MultiProcessCollector would scrape nothing of ours.
    if not getattr(values.ValueClass, "_multiprocess", False):
        raise RuntimeError(
            f"{MULTIPROC_ENV} was set after prometheus_client was imported in this process; call "
            "prepare_multiprocess_dir() only in the parent that then starts the worker processes"
        )
    return path


def prepare_multiprocess_dir(path: str) -> None:
    """Create or empty ``path`` and point prometheus_client's multiprocess mode at it.

    Call in the parent before ``uvicorn --workers N`` starts its workers: they inherit the variable and
    write their mmap files there. Stale files from an earlier run would otherwise be summed in.
    """
    directory = Path(path)
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()
    os.environ[MULTIPROC_ENV] = str(directory)


def mark_process_dead(pid: int) -> None:
    """Drop a dead worker's live-gauge files (uvicorn/gunicorn child-exit hook); no-op single-process."""
    path = os.environ.get(MULTIPROC_ENV)
    if path:
        _mp.mark_process_dead(pid, path)  # type: ignore[no-untyped-call]

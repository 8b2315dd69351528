from __future__ import annotations

import dataclasses
import multiprocessing
import os
import random
import string
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from proxy.metrics import (
    MULTIPROC_ENV,
    OUTCOMES,
    Metrics,
    RequestOutcome,
    mark_process_dead,
    prepare_multiprocess_dir,
)
from tests import promtool

TEAMS = ("alpha", "beta")
MODELS = {"gpt-4o": "openai", "gpt-4o-mini": "openai", "claude-sonnet": "anthropic"}


def outcome(**changes: object) -> RequestOutcome:
    base = RequestOutcome(
        team="alpha",
        model="gpt-4o",
        provider="openai",
        operation="chat",
        outcome="ok",
        status=200,
        error_type=None,
        stream=False,
        input_tokens=1000,
        cached_input_tokens=200,
        output_tokens=50,
        reasoning_tokens=10,
        cost_micro_usd=1_234_567,
        duration_s=1.5,
        ttft_s=None,
        overhead_s=0.002,
        parts={"system": 100, "tools": 0, "history": 700, "new": 200},
        trimmed_tokens=0,
        counted_input=1000,
        reported_input=1000,
    )
    return dataclasses.replace(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def metrics(registry: CollectorRegistry) -> Metrics:
    return Metrics(teams=TEAMS, models=MODELS, registry=registry)


def value(registry: CollectorRegistry, name: str, **labels: str) -> float | None:
    return registry.get_sample_value(name, labels)


GENAI = {
    "gen_ai_operation_name": "chat",
    "gen_ai_provider_name": "openai",
    "gen_ai_request_model": "gpt-4o",
    "team": "alpha",
}


def test_counters_hold_exact_values(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.record(outcome())
    metrics.record(outcome(cost_micro_usd=765_433, input_tokens=500, output_tokens=5, cached_input_tokens=0))

    tok = "quotagate_tokens_total"
    assert value(registry, tok, team="alpha", model="gpt-4o", type="input") == 1500
    assert value(registry, tok, team="alpha", model="gpt-4o", type="cached_input") == 200
    assert value(registry, tok, team="alpha", model="gpt-4o", type="output") == 55
    assert value(registry, tok, team="alpha", model="gpt-4o", type="reasoning") == 20
    assert value(registry, "quotagate_spend_usd_total", team="alpha", model="gpt-4o") == pytest.approx(2.0)
    assert value(registry, "quotagate_requests_total", team="alpha", model="gpt-4o", outcome="ok") == 2
    part = "quotagate_input_tokens_part_total"
    assert value(registry, part, team="alpha", model="gpt-4o", part="history") == 1400
    assert value(registry, part, team="alpha", model="gpt-4o", part="tools") is None  # 0 is not recorded

    usage = "gen_ai_client_token_usage"
    assert value(registry, f"{usage}_count", **GENAI, gen_ai_token_type="input") == 2
    assert value(registry, f"{usage}_sum", **GENAI, gen_ai_token_type="input") == 1500
    assert value(registry, f"{usage}_sum", **GENAI, gen_ai_token_type="output") == 55
    assert value(registry, f"{usage}_bucket", **GENAI, gen_ai_token_type="input", le="1024.0") == 2
    assert value(registry, f"{usage}_bucket", **GENAI, gen_ai_token_type="output", le="4.0") == 0

    dur = "gen_ai_client_operation_duration_seconds"
    assert value(registry, f"{dur}_count", **GENAI, error_type="") == 2
    assert value(registry, f"{dur}_sum", **GENAI, error_type="") == pytest.approx(3.0)
    assert value(registry, "quotagate_proxy_overhead_seconds_count", team="alpha", model="gpt-4o") == 2
    # non-streamed requests have no TTFT/TPOT
    assert value(registry, "gen_ai_server_time_to_first_token_seconds_count", **GENAI) is None


def test_stream_records_ttft_and_time_per_output_token(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.record(outcome(stream=True, duration_s=2.0, ttft_s=0.5, output_tokens=11))
    metrics.record(outcome(stream=True, duration_s=1.0, ttft_s=0.9, output_tokens=1))  # no TPOT for 1 token
    assert value(registry, "gen_ai_server_time_to_first_token_seconds_count", **GENAI) == 2
    assert value(registry, "gen_ai_server_time_to_first_token_seconds_sum", **GENAI) == pytest.approx(1.4)
    assert value(registry, "gen_ai_server_time_per_output_token_seconds_count", **GENAI) == 1
    assert value(registry, "gen_ai_server_time_per_output_token_seconds_sum", **GENAI) == pytest.approx(0.15)


def test_errors_trimming_and_drift(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.record(
        outcome(
            outcome="upstream_error",
            status=502,
            error_type="Upstream 502",
            output_tokens=None,
            reasoning_tokens=None,
            cost_micro_usd=0,
        )
    )
    metrics.record(outcome(trimmed_tokens=300, counted_input=1000, reported_input=1100))
    metrics.record(outcome(counted_input=None, reported_input=900))  # no pre-count: no drift sample
    dur = "gen_ai_client_operation_duration_seconds_count"
    assert value(registry, dur, **GENAI, error_type="upstream_502") == 1
    assert value(registry, dur, **GENAI, error_type="") == 2
    req = "quotagate_requests_total"
    assert value(registry, req, team="alpha", model="gpt-4o", outcome="upstream_error") == 1
    assert value(registry, "gen_ai_client_token_usage_count", **GENAI, gen_ai_token_type="output") == 2
    trimmed = "quotagate_context_trimmed_tokens_total"
    assert value(registry, trimmed, team="alpha", model="gpt-4o") == 300
    drift = "quotagate_token_count_drift_ratio"
    assert value(registry, f"{drift}_count", team="alpha", model="gpt-4o") == 2
    assert value(registry, f"{drift}_sum", team="alpha", model="gpt-4o") == pytest.approx(2.1)
    assert value(registry, f"{drift}_bucket", team="alpha", model="gpt-4o", le="1.0") == 1


def test_labels_are_mapped_to_bounded_values(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.record(outcome(team=None, model="nope", provider="", outcome="unauthorized", status=401))
    metrics.record(outcome(team="intruder", model="claude-sonnet", provider="", operation="weird"))
    req = "quotagate_requests_total"
    assert value(registry, req, team="unknown", model="other", outcome="unauthorized") == 1
    assert value(registry, req, team="other", model="claude-sonnet", outcome="ok") == 1
    usage = "gen_ai_client_token_usage_count"
    other = {"gen_ai_operation_name": "other", "gen_ai_provider_name": "anthropic"}
    assert (
        value(
            registry,
            usage,
            **other,
            gen_ai_request_model="claude-sonnet",
            team="other",
            gen_ai_token_type="input",
        )
        == 1
    )
    unknown = {"gen_ai_operation_name": "chat", "gen_ai_provider_name": "other"}
    assert (
        value(
            registry,
            usage,
            **unknown,
            gen_ai_request_model="other",
            team="unknown",
            gen_ai_token_type="input",
        )
        == 1
    )


def test_known_series_start_at_zero(metrics: Metrics, registry: CollectorRegistry) -> None:
    for team in TEAMS:
        for model in [*MODELS, "other"]:
            for o in OUTCOMES:
                assert value(registry, "quotagate_requests_total", team=team, model=model, outcome=o) == 0
            assert value(registry, "quotagate_spend_usd_total", team=team, model=model) == 0
        assert value(registry, "quotagate_tokens_total", team=team, model="gpt-4o", type="reasoning") == 0
    body, _ = metrics.render()
    assert b"_created" not in body


def test_budget_gauges_and_contract_errors(metrics: Metrics, registry: CollectorRegistry) -> None:
    metrics.set_budget("alpha", "month", "usd", 100.0, 12.5)
    metrics.set_budget("alpha", "month", "usd", 100.0, 13.0)
    metrics.set_budget("beta", "day", "tokens", 1e6, 5e5)
    assert value(registry, "quotagate_budget_limit", team="alpha", window="month", unit="usd") == 100.0
    assert value(registry, "quotagate_budget_used", team="alpha", window="month", unit="usd") == 13.0
    assert value(registry, "quotagate_budget_used", team="beta", window="day", unit="tokens") == 5e5
    with pytest.raises(ValueError, match="unit"):
        metrics.set_budget("alpha", "month", "eur", 1.0, 0.0)
    with pytest.raises(ValueError, match="outcome"):
        metrics.record(outcome(outcome="teapot"))


def test_random_model_names_add_only_other(metrics: Metrics, registry: CollectorRegistry) -> None:
    rng = random.Random(7)
    for i in range(10_000):
        name = "".join(rng.choices(string.ascii_letters + string.digits + "-/.:", k=rng.randint(1, 40)))
        metrics.record(
            outcome(
                model=name,
                team="".join(rng.choices(string.ascii_lowercase, k=8)) if i % 2 else "beta",
                provider=rng.choice(["openai", "evil", ""]),
                stream=i % 3 == 0,
                ttft_s=0.1,
                trimmed_tokens=i % 5,
            )
        )
    allowed_models = {*MODELS, "other"}
    allowed_teams = {*TEAMS, "other", "unknown"}
    seen_models: set[str] = set()
    families = 0
    for family in registry.collect():
        families += 1
        for sample in family.samples:
            for key in ("model", "gen_ai_request_model"):
                if key in sample.labels:
                    seen_models.add(sample.labels[key])
            if "team" in sample.labels:
                assert sample.labels["team"] in allowed_teams, sample
            if "gen_ai_provider_name" in sample.labels:
                assert sample.labels["gen_ai_provider_name"] in {"openai", "anthropic", "other"}
    assert families >= 13
    assert seen_models <= allowed_models
    assert "other" in seen_models
    assert value(registry, "quotagate_requests_total", team="other", model="other", outcome="ok") == 5000


def test_render_passes_promtool_check_metrics(metrics: Metrics) -> None:
    metrics.record(outcome(stream=True, ttft_s=0.2, output_tokens=40, trimmed_tokens=10, reported_input=990))
    metrics.record(outcome(outcome="rate_limited", status=429, error_type="rate_limit_exceeded"))
    metrics.set_budget("alpha", "month", "usd", 50.0, 1.25)
    body, content_type = metrics.render()
    assert content_type.startswith("text/plain; version=0.0.4")
    assert b"quotagate_spend_usd_total" in body and b"gen_ai_client_token_usage_bucket" in body
    result = promtool.run("check", "metrics", stdin=body)
    assert result.returncode == 0, result.stdout + result.stderr


def test_metrics_refuses_multiproc_dir_set_after_import(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(MULTIPROC_ENV, str(tmp_path))
    with pytest.raises(RuntimeError, match="prepare_multiprocess_dir"):
        Metrics(teams=TEAMS, models=MODELS, registry=CollectorRegistry())


# --- multiprocess mode: each function below runs in a freshly spawned interpreter -----------------------


def _worker(requests: int, used: float) -> None:
    m = Metrics(teams=TEAMS, models=MODELS)
    for _ in range(requests):
        m.record(outcome(stream=True, ttft_s=0.5, duration_s=2.0, output_tokens=11))
    m.set_budget("alpha", "month", "usd", 100.0, used)


def _render(out: str) -> None:
    m = Metrics(teams=TEAMS, models=MODELS)
    m.set_budgets([("alpha", "month", "usd", 100.0, 12.5, 0.5)])  # read from the store by the scraping process
    body, _ = m.render()
    Path(out).write_bytes(body)


def _spawn(target: Callable[..., None], *args: object) -> None:
    proc = multiprocessing.get_context("spawn").Process(target=target, args=args)
    proc.start()
    proc.join(60)
    assert proc.exitcode == 0


@pytest.mark.slow
def test_multiprocess_render_sums_workers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    mp_dir = tmp_path / "mp"
    mp_dir.mkdir()
    (mp_dir / "counter_999999.db").write_bytes(b"stale")  # from a previous run: must be removed
    monkeypatch.delenv(MULTIPROC_ENV, raising=False)
    prepare_multiprocess_dir(str(mp_dir))
    try:
        assert os.environ[MULTIPROC_ENV] == str(mp_dir)
        assert not (mp_dir / "counter_999999.db").exists()
        _spawn(_worker, 3, 10.0)
        _spawn(_worker, 5, 12.5)  # runs last, so its budget value is the most recent
        out = tmp_path / "scrape.txt"
        _spawn(_render, str(out))
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
    body = out.read_bytes()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }

    def get(name: str, **labels: str) -> float:
        return samples[(name, tuple(sorted(labels.items())))]

    assert get("quotagate_requests_total", team="alpha", model="gpt-4o", outcome="ok") == 8
    assert get("quotagate_requests_total", team="beta", model="other", outcome="ok") == 0
    assert get("quotagate_tokens_total", team="alpha", model="gpt-4o", type="output") == 88
    assert get("quotagate_spend_usd_total", team="alpha", model="gpt-4o") == pytest.approx(8 * 1.234567)
    assert get("gen_ai_server_time_per_output_token_seconds_count", **GENAI) == 8
    assert get("gen_ai_client_operation_duration_seconds_bucket", **GENAI, error_type="", le="2.56") == 8
    # budget gauges are the scraping process's own reading, never a worker's stale value (10.0 above)
    assert get("quotagate_budget_used", team="alpha", window="month", unit="usd") == 12.5
    assert get("quotagate_budget_limit", team="alpha", window="month", unit="usd") == 100.0
    assert get("quotagate_budget_reserved", team="alpha", window="month", unit="usd") == 0.5
    assert len([k for k in samples if k[0] == "quotagate_budget_used"]) == 1
    assert not any("pid" in dict(labels) for _, labels in samples)
    result = promtool.run("check", "metrics", stdin=body)
    assert result.returncode == 0, result.stdout + result.stderr

    # Marking a pid dead is harmless; the workers' counter files stay to be summed.
    monkeypatch.setenv(MULTIPROC_ENV, str(mp_dir))
    mark_process_dead(os.getpid())
    assert len(list(mp_dir.glob("*.db"))) >= 2

"""A real Prometheus scrapes a real quotagate under a short mixed load; every dashboard and rule query works.

One module fixture starts the mock upstream, a gateway (SQLite store, one worker) and
``/usr/bin/prometheus`` (scrape and rule evaluation every second, ``dashboards/alerts.yml`` loaded),
drives ~10 s of traffic that exercises every metric (several teams and models, streams, trimming,
context rejections, rate limits, an exhausted budget, upstream 500s, embeddings, cached and reasoning
tokens), then the tests query Prometheus' HTTP API with every PromQL expression the dashboards and the
rule file contain.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests import promtool
from tests.gateway import Proc, base_config, free_port, start_gateway, start_mock, wait_ready

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "dashboards"
BOARD_FILES = ("spend.json", "tokens-context.json", "latency-upstream.json")
LOAD_SECONDS = 10.0
LOAD_WORKERS = 6
PAUSE_S = 0.08  # per worker between requests: ~60 requests/s in all, gentle on a shared 2-core box
# Grafana variables -> plain PromQL. $__range is short because the run is short.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m"}
ALL = {"$team": ".*", "$model": ".*"}
CONCRETE = {"$team": "alpha", "$model": "gpt-4o"}

# Expressions that legitimately return nothing after a ~15 s run. Each names why, and a "witness": the
# same expression without the part that empties it, which must return data (so the metrics behind it are
# there and only the threshold, offset or history is missing).
ALLOWED_EMPTY: dict[str, tuple[str, str]] = {
    "QuotagateInputTokensP95WeekOverWeek": (
        "divides by the same quantile `offset 1w`: there is no data from a week ago",
        "histogram_quantile(0.95, sum by (team, le) "
        '(rate(gen_ai_client_token_usage_bucket{gen_ai_token_type="input"}[1h])))',
    ),
    "QuotagateProxyOverheadHigh": (
        "fires above 100 ms p99 overhead; a healthy gateway on loopback stays far below",
        "histogram_quantile(0.99, sum by (instance, le) (rate(quotagate_proxy_overhead_seconds_bucket[5m])))",
    ),
    "QuotagateCounterDrift": (
        "fires when a budget counter at rest disagrees with the ledger; here every counter agrees (drift 0)",
        "quotagate_budget_drift_tokens == 0",
    ),
    "QuotagateDown": (
        "fires when the scrape fails; the gateway is up for the whole run",
        'up{job="quotagate"} == 1',
    ),
}
# The load is built to trip these three: they must be pending (all have a `for:`) or firing.
EXPECTED_ACTIVE = {"QuotagateRejectionRateHigh", "QuotagateUpstreamErrorRatioHigh", "QuotagateBudgetNearlyExhausted"}


# ---------------------------------------------------------------------------------------------- helpers


def prometheus_binary() -> str:
    """The prometheus server binary; Debian's `prometheus` package ships it with promtool."""
    found = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").is_file() else None)
    if found is None:
        promtool.promtool()  # installs Debian's package in CI or as root; fails in CI, skips elsewhere
        found = shutil.which("prometheus") or ("/usr/bin/prometheus" if Path("/usr/bin/prometheus").is_file() else None)
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("prometheus server binary not found; CI must run the end-to-end metrics test")
        pytest.skip("prometheus server binary not found")
    return found


def substitute(expr: str, variables: dict[str, str]) -> str:
    for var, value in {**GRAFANA_VARS, **variables}.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unsubstituted variable in {expr!r}"
    return expr


def dashboard_exprs() -> list[tuple[str, str]]:
    """(``board / panel / refId``, expr) for every target of every panel."""
    out = []
    for name in BOARD_FILES:
        board = json.loads((DASHBOARDS / name).read_text())
        for panel in board["panels"]:
            for target in panel["targets"]:
                out.append((f"{name} / {panel['title']} / {target['refId']}", target["expr"]))
    return out


def rules() -> list[dict[str, Any]]:
    data = yaml.safe_load((DASHBOARDS / "alerts.yml").read_text())
    return [r for g in data["groups"] for r in g["rules"]]


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen[bytes]
    log: Path

    def query(self, expr: str) -> list[dict[str, Any]]:
        r = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=10)
        body = r.json()
        assert r.status_code == 200 and body["status"] == "success", f"{expr}\n-> {r.status_code} {body}"
        result: list[dict[str, Any]] = body["data"]["result"]
        return result

    def value(self, expr: str) -> float:
        result = self.query(expr)
        assert len(result) == 1, (expr, result)
        return float(result[0]["value"][1])


def start_prometheus(tmp: Path, target: str) -> Prometheus:
    binary = prometheus_binary()
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
        "rule_files": [str(DASHBOARDS / "alerts.yml")],
        "scrape_configs": [{"job_name": "quotagate", "static_configs": [{"targets": [target]}]}],
    }
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    log = tmp / "prometheus.log"
    proc = subprocess.Popen(
        [
            binary,
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log.open("ab"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    prom = Prometheus(f"http://127.0.0.1:{port}", proc, log)
    try:
        wait_ready(proc, prom.url + "/-/ready", 30, lambda: log.read_text()[-3000:], ok=201)
    except RuntimeError:
        proc.kill()
        raise
    return prom


# ------------------------------------------------------------------------------------------------- load


def config(mock_url: str, store: str) -> dict[str, Any]:
    return base_config(
        mock_url,
        store,
        counters={"reconcile_seconds": 1},  # the drift gauges, for the drift alert's witness
        teams={
            # trims long conversations; plenty of budget in both units
            "alpha": {
                "max_input_tokens": 120,
                "on_context_overflow": "trim",
                "budgets": [{"window": "day", "usd": 5}, {"window": "month", "tokens": 10_000_000}],
            },
            # rejects long prompts; its day budget runs out after about five gpt-4o requests (over 90% used),
            # however slowly a loaded machine sends the load
            "beta": {
                "max_input_tokens": 120,
                "on_context_overflow": "reject",
                "budgets": [{"window": "day", "usd": 0.001}, {"window": "month", "tokens": 5_000_000}],
            },
            # 20 requests a minute, asked for several times that
            "gamma": {"rate_limits": {"rpm": 20}, "budgets": [{"window": "month", "tokens": 1_000_000}]},
        },
        keys=[{"team": t, "name": t, "key": f"sk-{t}"} for t in ("alpha", "beta", "gamma")],
    )


def turns(n: int) -> list[dict[str, str]]:
    """A conversation of ``n`` earlier exchanges (~40 tokens each) and a new question."""
    msgs = [{"role": "system", "content": "You are terse."}]
    for i in range(n):
        msgs.append({"role": "user", "content": f"question {i}: " + "tell me about foxes " * 8})
        msgs.append({"role": "assistant", "content": "foxes are small wild dogs " * 4})
    msgs.append({"role": "user", "content": "and dogs?"})
    return msgs


def chat(model: str, *, stream: bool = False, history: int = 0, **mock: int) -> tuple[str, dict[str, Any]]:
    body: dict[str, Any] = {"model": model, "messages": turns(history), "max_tokens": 16, "stream": stream}
    if mock:
        body["mock"] = mock
    return "/v1/chat/completions", body


# (key, path, body) in rotation: every scenario is hit every few requests.
SCENARIOS: list[tuple[str, str, dict[str, Any]]] = [
    ("sk-alpha", *chat("gpt-4o", cached_tokens=8, reasoning_tokens=4)),
    ("sk-alpha", *chat("gpt-4o-mini", stream=True, output_tokens=12)),
    ("sk-alpha", *chat("gpt-4o", history=6)),  # trimmed to fit 120 tokens
    ("sk-beta", *chat("gpt-4o")),  # burns the small budget -> later budget_exceeded
    ("sk-beta", *chat("gpt-4o-mini", history=6)),  # over 120 tokens -> context_rejected
    ("sk-gamma", *chat("gpt-4o-mini")),  # rpm 20 -> mostly rate_limited
    ("sk-alpha", *chat("gpt-4o-mini", status=500)),  # upstream_error
    ("sk-alpha", "/v1/embeddings", {"model": "text-embedding-3-small", "input": ["a fox", "a dog"]}),
    ("sk-beta", *chat("gpt-4o-mini", stream=True, output_tokens=8)),
    ("sk-gamma", *chat("gpt-4o", stream=True, output_tokens=6)),
]


def client_outcome(status: int, body: bytes) -> str:
    """What quotagate_requests_total's outcome label should say about this response."""
    if status == 200:
        return "ok"
    code = str(json.loads(body)["error"]["code"]) if body.startswith(b"{") else ""
    if status == 429 and code in ("insufficient_quota", "rate_limit_exceeded"):
        return "budget_exceeded" if code == "insufficient_quota" else "rate_limited"
    if status == 400 and code == "context_length_exceeded":
        return "context_rejected"
    if status >= 500:
        return "upstream_error"
    return f"unexpected {status} {body[:200]!r}"


async def drive(url: str, seconds: float) -> Counter[tuple[str, str]]:
    """Send SCENARIOS round-robin from LOAD_WORKERS tasks for ``seconds``: (team, outcome) -> count."""
    counts: Counter[tuple[str, str]] = Counter()
    rotation = itertools.cycle(SCENARIOS)
    stop = time.monotonic() + seconds

    async def worker(client: httpx.AsyncClient) -> None:
        while time.monotonic() < stop:
            key, path, body = next(rotation)
            async with client.stream("POST", path, json=body, headers={"Authorization": f"Bearer {key}"}) as r:
                raw = await r.aread()
            counts[(key.removeprefix("sk-"), client_outcome(r.status_code, raw))] += 1
            await asyncio.sleep(PAUSE_S)

    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(LOAD_WORKERS)))
    return counts


@dataclass
class Run:
    prom: Prometheus
    gateway: Proc
    sent: Counter[tuple[str, str]]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    tmp = tmp_path_factory.mktemp("prom-e2e")
    binary = prometheus_binary()  # before starting anything, so a skip leaves nothing running
    assert binary
    mock = start_mock(tmp, "--tpot", "0.002")
    gateway = prom = None
    try:
        gateway = start_gateway(tmp, config(mock.url, f"sqlite:///{tmp / 'qg.db'}"), workers=1)
        prom = start_prometheus(tmp, f"127.0.0.1:{gateway.port}")
        # wait for the first successful scrape so the load's first counter increments are seen as increases
        deadline = time.monotonic() + 15
        while not prom.query('up{job="quotagate"} == 1'):
            assert time.monotonic() < deadline, prom.log.read_text()[-3000:]
            time.sleep(0.2)
        sent = asyncio.run(drive(gateway.url, LOAD_SECONDS))
        # let settlement finish and Prometheus scrape (budget gauges are read at scrape time) and evaluate
        time.sleep(6)
        yield Run(prom, gateway, sent)
    finally:
        if prom is not None:
            prom.proc.terminate()
            try:
                prom.proc.wait(15)
            except subprocess.TimeoutExpired:
                prom.proc.kill()
        if gateway is not None:
            gateway.terminate()
        mock.terminate()


# ------------------------------------------------------------------------------------------------ tests


def test_prometheus_saw_exactly_the_load(run: Run) -> None:
    """Per team and outcome, what Prometheus holds is what the client was answered."""
    assert not [o for (_, o) in run.sent if o.startswith("unexpected")], run.sent
    outcomes = {o for (_, o) in run.sent}
    assert outcomes >= {"ok", "budget_exceeded", "rate_limited", "context_rejected", "upstream_error"}, run.sent
    for (team, outcome), n in run.sent.items():
        got = run.prom.value(f'sum(quotagate_requests_total{{team="{team}", outcome="{outcome}"}})')
        assert got == n, (team, outcome, got, n)
    total = run.prom.value("sum(quotagate_requests_total)")
    assert total == sum(run.sent.values())
    print(f"\nload: {sum(run.sent.values())} requests, {dict(sorted(run.sent.items()))}")


def test_every_dashboard_expression_returns_data(run: Run) -> None:
    exprs = dashboard_exprs()
    assert len(exprs) >= 30
    empty = []
    for where, expr in exprs:
        result = run.prom.query(substitute(expr, ALL))
        if not result:
            empty.append(where)
        # a concrete team and model must at least evaluate
        run.prom.query(substitute(expr, CONCRETE))
    assert not empty, f"dashboard queries without data: {empty}"
    print(f"\n{len(exprs)} dashboard expressions, all with data")


def test_template_variables_list_teams_and_models(run: Run) -> None:
    for name in BOARD_FILES:
        board = json.loads((DASHBOARDS / name).read_text())
        for var in board["templating"]["list"][1:]:
            m = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", var["query"])
            assert m, var["query"]
            selector = substitute(m.group(1), ALL)
            r = httpx.get(run.prom.url + f"/api/v1/label/{m.group(2)}/values", params={"match[]": selector})
            values = set(r.json()["data"])
            expected = {"alpha", "beta", "gamma"} if var["name"] == "team" else {"gpt-4o", "gpt-4o-mini"}
            assert expected <= values, (name, var["name"], values)


def test_every_rule_expression_evaluates_and_is_healthy(run: Run) -> None:
    all_rules = rules()
    assert len(all_rules) >= 7
    empty = []
    for rule in all_rules:
        name = rule.get("alert") or rule["record"]
        result = run.prom.query(rule["expr"])
        if name in ALLOWED_EMPTY:
            _reason, witness = ALLOWED_EMPTY[name]
            assert run.prom.query(witness), f"{name}: witness {witness!r} returned nothing"
        elif not result:
            empty.append(name)
    assert not empty, f"rule expressions without data: {empty}"
    assert set(ALLOWED_EMPTY) <= {r.get("alert") for r in all_rules}, "stale allow-list entry"

    groups = httpx.get(run.prom.url + "/api/v1/rules").json()["data"]["groups"]
    loaded = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(loaded) == {r.get("alert") or r["record"] for r in all_rules}
    for name, rule in loaded.items():
        assert rule["health"] == "ok" and not rule.get("lastError"), (name, rule.get("lastError"))
        assert not rule["lastEvaluation"].startswith("0001-"), f"{name} was never evaluated"
    active = {name for name, rule in loaded.items() if rule["type"] == "alerting" and rule["state"] != "inactive"}
    assert active >= EXPECTED_ACTIVE, active
    print(f"\n{len(all_rules)} rules healthy; active alerts: {sorted(active)}")


def test_promtool_check_metrics_on_a_live_scrape(run: Run) -> None:
    body = httpx.get(run.gateway.url + "/metrics").content
    samples = [s for f in text_string_to_metric_families(body.decode()) for s in f.samples]
    names = {s.name for s in samples}
    assert {"quotagate_requests_total", "gen_ai_client_token_usage_bucket", "quotagate_budget_used"} <= names
    assert any(s.name == "quotagate_requests_total" and s.labels["team"] == "alpha" and s.value > 0 for s in samples)
    result = promtool.run("check", "metrics", stdin=body)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = body.count(b"\n")
    print(f"\npromtool check metrics: {len(body)} bytes, {lines} lines, clean")

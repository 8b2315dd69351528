"""Grafana dashboards and Prometheus alert rules: structure, metric names, and PromQL checked by promtool."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client import CollectorRegistry

from proxy.metrics import Metrics, RequestOutcome
from proxy.metrics_drift import DriftMetrics
from tests import promtool

ROOT = Path(__file__).resolve().parent.parent
DASHBOARDS = ROOT / "dashboards"
BOARD_FILES = ("spend.json", "tokens-context.json", "latency-upstream.json")
# Grafana's built-in variables and ours, replaced by values that make each expression plain PromQL.
SUBSTITUTIONS = {
    "$__rate_interval": "5m",
    "$__interval": "1m",
    "$__range": "6h",
    "$team": ".*",
    "$model": ".*",
}
METRIC_NAME = re.compile(r"\b((?:gen_ai|quotagate)_[a-z0-9_]+)\b")
LABEL_NAMES = {"gen_ai_token_type", "gen_ai_request_model", "gen_ai_operation_name", "gen_ai_provider_name"}
BUDGET_ONLY = {"quotagate_budget_used", "quotagate_budget_limit"}  # per team, no model label


def load_board(name: str) -> dict[str, Any]:
    board: dict[str, Any] = json.loads((DASHBOARDS / name).read_text())
    return board


def load_alerts() -> dict[str, Any]:
    rules: dict[str, Any] = yaml.safe_load((DASHBOARDS / "alerts.yml").read_text())
    return rules


def substitute(expr: str) -> str:
    for var, value in SUBSTITUTIONS.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unsubstituted variable in {expr!r}"
    return expr


def metric_names(expr: str) -> set[str]:
    return set(METRIC_NAME.findall(expr)) - LABEL_NAMES


def panel_exprs(board: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in board["panels"] for t in p["targets"]]


def exposed_names() -> set[str]:
    """Every sample name quotagate exposes, from a real render with each kind of series present."""
    registry = CollectorRegistry()
    m = Metrics(teams=["a"], models={"gpt-4o": "openai"}, registry=registry)
    m.record(
        RequestOutcome("a", "gpt-4o", "openai", "chat", "ok", 200, None, True, 10, 2, 5, 1, 100, 1.0, 0.1,
                       0.001, {"system": 1, "tools": 1, "history": 1, "new": 7}, 3, 10, 11)
    )  # fmt: skip
    m.set_budget("a", "day", "usd", 10.0, 1.0)
    drift = DriftMetrics(registry)
    drift.tokens.labels("a", "team", "day").set(0)
    drift.usd.labels("a", "team", "month").set(0)
    return {s.name for family in registry.collect() for s in family.samples}


@pytest.mark.parametrize("name", BOARD_FILES)
def test_dashboard_structure(name: str) -> None:
    text = (DASHBOARDS / name).read_text()
    assert "__inputs" not in text and "DS_PROMETHEUS" not in text
    board = load_board(name)
    assert board["id"] is None
    assert isinstance(board["uid"], str) and 0 < len(board["uid"]) <= 40
    assert board["title"].startswith("quotagate / ")
    assert isinstance(board["schemaVersion"], int) and board["schemaVersion"] >= 9
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource" and variables["datasource"]["query"] == "prometheus"
    for var in ("team", "model"):
        assert variables[var]["type"] == "query"
        assert variables[var]["query"].startswith("label_values(")
        assert variables[var]["datasource"]["uid"] == "${datasource}"
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids)) >= 6
    for panel in board["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["type"] in {"timeseries", "stat", "gauge", "bargauge", "table"}
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24 and pos["h"] > 0
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["refId"] and target["expr"].strip()
            expr = target["expr"]
            assert "$team" in expr, (panel["title"], expr)
            if not metric_names(expr) <= BUDGET_ONLY:
                assert "$model" in expr, (panel["title"], expr)


def test_exprs_only_use_exported_metric_names() -> None:
    exposed = exposed_names()
    exprs = [e for name in BOARD_FILES for e in panel_exprs(load_board(name))]
    exprs += [r["expr"] for g in load_alerts()["groups"] for r in g["rules"]]
    used = {n for e in exprs for n in metric_names(e)}
    assert used, "no metric names found"
    assert used <= exposed, sorted(used - exposed)
    for name in BOARD_FILES:  # template variables query a real counter with those labels
        for var in load_board(name)["templating"]["list"][1:]:
            assert metric_names(var["query"]) == {"quotagate_requests_total"}


def test_every_expression_parses_with_promtool(tmp_path: Path) -> None:
    exprs: list[str] = []
    for name in BOARD_FILES:
        board = load_board(name)
        exprs += panel_exprs(board)
        for var in board["templating"]["list"][1:]:
            selector = re.fullmatch(r"label_values\((.+),\s*\w+\)", var["query"])
            assert selector, var["query"]
            exprs.append(selector.group(1))
    exprs += [r["expr"] for g in load_alerts()["groups"] for r in g["rules"]]
    rules = [{"record": f"quotagate_test:expr_{i}", "expr": substitute(e)} for i, e in enumerate(exprs)]
    rule_file = tmp_path / "exprs.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboards", "rules": rules}]}))
    result = promtool.run("check", "rules", str(rule_file))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout


def test_a_broken_expression_is_caught(tmp_path: Path) -> None:
    """The check above is only worth something if promtool rejects bad PromQL."""
    rule_file = tmp_path / "bad.yml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "x", "rules": [{"record": "r", "expr": "sum by (("}]}]}))
    assert promtool.run("check", "rules", str(rule_file)).returncode != 0


def test_alert_rules_check_and_unit_tests_pass() -> None:
    checked = promtool.run("check", "rules", str(DASHBOARDS / "alerts.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    tested = promtool.run("test", "rules", "alerts.test.yml", cwd=DASHBOARDS)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_is_tested_firing_and_not_firing() -> None:
    alerts = [r for g in load_alerts()["groups"] for r in g["rules"] if "alert" in r]
    assert len(alerts) >= 6
    tests = yaml.safe_load((DASHBOARDS / "alerts.test.yml").read_text())["tests"]
    cases = [c for t in tests for c in t.get("alert_rule_test", [])]
    for rule in alerts:
        mine = [c for c in cases if c["alertname"] == rule["alert"]]
        assert any(c["exp_alerts"] for c in mine), f"{rule['alert']} has no firing test"
        assert any(not c["exp_alerts"] for c in mine), f"{rule['alert']} has no not-firing test"


def test_alert_annotations_point_at_real_dashboards_and_panels() -> None:
    panels = {b["title"]: {p["title"] for p in b["panels"]} for b in map(load_board, BOARD_FILES)}
    referenced = 0
    for group in load_alerts()["groups"]:
        for rule in group["rules"]:
            if "alert" not in rule:
                continue
            assert rule["annotations"]["summary"].strip() and rule["annotations"]["description"].strip()
            assert rule["labels"]["severity"] in {"info", "warning", "critical"}
            description = rule["annotations"]["description"]
            for board, titles in re.findall(r'"(quotagate / [^"]+)" \(panels? ([^)]*)\)', description):
                assert board in panels, board
                for title in re.findall(r'"([^"]+)"', titles):
                    assert title in panels[board], (rule["alert"], board, title)
                    referenced += 1
    assert referenced >= 6

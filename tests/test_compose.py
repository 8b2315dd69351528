"""docker-compose.yml against the Compose Specification schema, plus what the stack must wire together."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from tests import promtool

ROOT = Path(__file__).resolve().parent.parent
SCHEMA = ROOT / "tests" / "data" / "compose-spec.json"  # the Compose spec's JSON schema, copied into the repo
SERVE = ["quotagate", "serve", "--config", "/app/config/compose.yaml", "--host", "0.0.0.0", "--port", "8080"]


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return data


def mounts(service: dict[str, Any]) -> dict[str, str]:
    """container path -> host path (relative to the repo) of each bind mount."""
    out = {}
    for volume in service.get("volumes", []):
        source, target, *_ = volume.split(":")
        if source.startswith("."):
            out[target] = source
    return out


def test_compose_file_matches_the_compose_spec(compose: dict[str, Any]) -> None:
    if not SCHEMA.is_file():
        if os.environ.get("CI"):
            pytest.fail(f"{SCHEMA} is missing")
        pytest.skip(f"{SCHEMA} is missing")
    import json

    schema = json.loads(SCHEMA.read_text())
    validator = jsonschema.Draft7Validator(schema)
    errors = sorted(validator.iter_errors(compose), key=lambda e: list(e.path))
    assert not errors, [f"{list(e.path)}: {e.message}" for e in errors]
    # and the validator does reject what the spec forbids
    assert list(validator.iter_errors({"services": {"x": {"image": "a", "bogus_key": 1}}}))


def test_two_gateway_replicas_share_redis_and_config(compose: dict[str, Any]) -> None:
    services = compose["services"]
    replicas = [s for name, s in services.items() if name.startswith("quotagate-")]
    assert len(replicas) == 2
    host_ports = set()
    for replica in replicas:
        assert replica["command"] == SERVE
        assert mounts(replica)["/app/config"] == "./config"
        assert replica["depends_on"]["redis"]["condition"] == "service_healthy"
        (port,) = replica["ports"]
        host_ports.add(port.split(":")[0])
    assert len(host_ports) == 2
    assert services["redis"]["image"].startswith("redis:")
    assert services["mock-upstream"]["command"][:2] == ["quotagate", "mock-upstream"]
    assert "--port" in services["mock-upstream"]["command"]
    assert services["loadgen"]["profiles"] == ["load"]


def test_every_bind_mount_exists_in_the_repo(compose: dict[str, Any]) -> None:
    checked = 0
    for service in compose["services"].values():
        for source in mounts(service).values():
            assert (ROOT / source).exists(), source
            checked += 1
    assert checked >= 6


def test_prometheus_scrapes_both_replicas_and_loads_the_rules(compose: dict[str, Any], tmp_path: Path) -> None:
    prom = mounts(compose["services"]["prometheus"])
    assert prom["/etc/prometheus/alerts.yml"] == "./dashboards/alerts.yml"
    assert prom["/etc/prometheus/prometheus.yml"] == "./dashboards/prometheus.yml"
    config = yaml.safe_load((ROOT / "dashboards" / "prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/alerts.yml"]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "quotagate"]
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    replicas = {n for n in compose["services"] if n.startswith("quotagate-")}
    assert targets == {f"{name}:8080" for name in replicas}
    # promtool validates the config with the rule file where the container would find it
    config["rule_files"] = [str(ROOT / "dashboards" / "alerts.yml")]
    local = tmp_path / "prometheus.yml"
    local.write_text(yaml.safe_dump(config))
    result = promtool.run("check", "config", str(local))
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafana_provisioning_is_mounted_and_consistent(compose: dict[str, Any]) -> None:
    grafana = mounts(compose["services"]["grafana"])
    datasources = "/etc/grafana/provisioning/datasources/quotagate.yml"
    providers = "/etc/grafana/provisioning/dashboards/quotagate.yml"
    assert grafana[datasources] == "./dashboards/provisioning/datasources.yml"
    assert grafana[providers] == "./dashboards/provisioning/dashboards.yml"
    provider = yaml.safe_load((ROOT / grafana[providers]).read_text())["providers"][0]
    dashboards_in_container = provider["options"]["path"]
    host_dir = ROOT / grafana[dashboards_in_container]
    assert sorted(p.name for p in host_dir.glob("*.json")) == [
        "latency-upstream.json",
        "spend.json",
        "tokens-context.json",
    ]
    (source,) = yaml.safe_load((ROOT / grafana[datasources]).read_text())["datasources"]
    assert source["uid"] == "prometheus" and source["type"] == "prometheus"
    assert source["url"] == "http://prometheus:9090" and "prometheus" in compose["services"]


def test_dockerfile_runs_unprivileged_with_a_healthcheck() -> None:
    lines = [
        line.strip()
        for line in re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text()).splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    froms = [line.split()[1] for line in lines if line.startswith("FROM ")]
    assert froms and all(image == "python:3.11-slim" for image in froms)
    final_stage = lines[max(i for i, line in enumerate(lines) if line.startswith("FROM ")) :]
    users = [line.split()[1] for line in final_stage if line.startswith("USER ")]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    (health,) = [line for line in final_stage if line.startswith("HEALTHCHECK ")]
    assert "/healthz" in health and "python" in health and "curl" not in health
    assert "EXPOSE 8080" in final_stage
    assert any(line.startswith("RUN pip install .") for line in lines)
    ignore = (ROOT / ".dockerignore").read_text().splitlines()
    assert "!proxy/" in ignore and "!pyproject.toml" in ignore


def test_compose_config_file_points_at_the_stack() -> None:
    config = ROOT / "config" / "compose.yaml"
    if not config.is_file():
        pytest.skip("config/compose.yaml not written yet")
    text = config.read_text()
    assert "redis://redis:6379/0" in text
    assert "mock-upstream:9000" in text

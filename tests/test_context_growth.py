"""The seed's story end to end (bench/context_growth.py): flat traffic through the real gateway and the
built-in mock provider while team assistant's re-sent history grows from 4K to 16K tokens. ``explain`` must
put at least 80% of the increase on history tokens per request in team assistant, and ``whatif`` with the
input capped back near 4K (trimming) must bring the modelled cost within 10% of the first week's."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from aiohttp.test_utils import TestServer

from bench import context_growth as scenario
from proxy.app import create_app
from proxy.cli import main
from proxy.mock.config import MockConfig
from proxy.mock.server import build_app
from proxy.settings import parse
from tests.inprocess import lifespan


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """Two weeks of the scenario's traffic, four requests per team and day; the config file that reads it."""
    import asyncio

    tmp = tmp_path_factory.mktemp("context-growth")

    async def record() -> None:
        server = TestServer(build_app(MockConfig()), host="127.0.0.1")
        await server.start_server()
        raw = scenario.config(str(server.make_url("/v1")), f"sqlite:///{tmp / 'scenario.db'}")
        (tmp / "scenario.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
        app = create_app(parse(raw, env={}))
        try:
            async with lifespan(app):
                transport = httpx.ASGITransport(app=app)
                async with httpx.AsyncClient(transport=transport, base_url="http://quotagate", timeout=60) as client:

                    async def post(path: str, body: dict[str, Any], headers: dict[str, str]) -> int:
                        return (await client.post(path, json=body, headers=headers)).status_code

                    assert await scenario.drive(post, per_day=4) == 2 * 4 * scenario.DAYS
        finally:
            await server.close()

    asyncio.run(record())
    assert scenario.backdate(tmp / "scenario.db") == 2 * 4 * scenario.DAYS
    yield tmp / "scenario.yaml"


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> Any:
    capsys.readouterr()
    assert main([*args, "--format", "json"]) == 0
    return json.loads(capsys.readouterr().out)


def test_explain_puts_the_increase_on_history_tokens_of_team_assistant(
    recorded: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    baseline, period = scenario.periods()
    out = run_json(capsys, "explain", "--period", period, "--baseline", baseline, "--config", str(recorded))
    change = float(out["change_usd"])
    assert change > 0 and float(out["period"]["cost_usd"]) > 2.5 * float(out["baseline"]["cost_usd"])
    assert out["period"]["requests"] == out["baseline"]["requests"]  # flat traffic
    history = sum(
        float(e["usd"]) for e in out["effects"] if e["team"] == "assistant" and e["driver"] == "input_history"
    )
    assert history >= 0.8 * change
    total = sum(round(float(e["usd"]) * 1_000_000) for e in out["effects"])
    assert total == round(change * 1_000_000)  # the effects add up to the change, to the micro-dollar


def test_explain_text_says_it_in_one_sentence(recorded: Path, capsys: pytest.CaptureFixture[str]) -> None:
    baseline, period = scenario.periods()
    capsys.readouterr()
    assert main(["explain", "--period", period, "--baseline", baseline, "--config", str(recorded)]) == 0
    first = capsys.readouterr().out.strip().splitlines()[0]
    assert first.startswith("Spend rose from $") and "history tokens per request in team assistant" in first
    assert "2026-03-04" in first


def test_whatif_a_4k_cap_with_trimming_brings_cost_back_to_the_first_week(
    recorded: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    baseline, period = scenario.periods()
    first_week = run_json(capsys, "explain", "--period", baseline, "--baseline", baseline, "--config", str(recorded))
    policy = tmp_path / "policy.yaml"
    policy.write_text(scenario.POLICY)
    since = period.split("..")[0]
    out = run_json(capsys, "whatif", "--policy", str(policy), "--since", since, "--config", str(recorded))
    teams = {t["team"]: t for t in out["teams"]}
    assert teams["assistant"]["trimmed"] == 4 * (scenario.DAYS - scenario.GROWTH_DAY)
    assert teams["assistant"]["rejected"] == 0 and teams["search"]["trimmed"] == 0
    would = sum(float(t["would_cost_usd"]) for t in out["teams"])
    then = float(first_week["period"]["cost_usd"])
    assert abs(would - then) <= 0.10 * then, (would, then)
    assert sum(float(t["cost_usd"]) for t in out["teams"]) > 2.5 * then  # what it did cost, for contrast

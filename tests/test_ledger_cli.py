"""The ledger: one record per request (ok, upstream error, rejected, client gone mid-stream), read through the
admin API, the ``quotagate usage`` CLI and the SQLite store itself; nothing lost on a graceful shutdown."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from proxy.store import open_store
from proxy.store.base import LedgerRecord
from tests.gateway import ROOT, Proc, base_config, start_gateway, start_mock, write_config

MESSAGES: list[Any] = [{"role": "user", "content": "Count to twenty."}]
ADMIN = {"authorization": "Bearer admin-secret"}


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args], cwd=ROOT, capture_output=True, text=True, timeout=60, check=False
    )


def read_ledger(store_url: str) -> list[LedgerRecord]:
    async def go() -> list[LedgerRecord]:
        store = open_store(store_url)
        await store.open()
        try:
            return await store.ledger(0.0, limit=10_000)
        finally:
            await store.close()

    return asyncio.run(go())


def cli_rows(stdout: str) -> dict[tuple[str, str], list[str]]:
    lines = stdout.strip().splitlines()
    assert lines[0].split() == [
        "team", "model", "requests", "ok", "refused", "failed", "input", "cached", "output", "reasoning", "cost_usd"
    ]  # fmt: skip
    # requests, then the token and cost columns (the ok/refused/failed split is tested in test_cli.py)
    return {(cols[0], cols[1]): [cols[2], *cols[6:]] for cols in (line.split() for line in lines[1:])}


@dataclass
class Scenario:
    """What the clients saw, then what the gateway recorded (read while it ran, and after it stopped)."""

    request_ids: dict[str, str] = field(default_factory=dict)  # label -> x-quotagate-request-id
    responses: dict[str, Any] = field(default_factory=dict)
    admin: dict[str, Any] = field(default_factory=dict)
    admin_t2: dict[str, Any] = field(default_factory=dict)
    admin_wrong_key: httpx.Response | None = None
    cli: str = ""
    cli_t2: str = ""
    cli_key: str = ""
    exit_code: int | None = None
    records: list[LedgerRecord] = field(default_factory=list)

    def record(self, label: str) -> LedgerRecord:
        (rec,) = [r for r in self.records if r.request_id == self.request_ids[label]]
        return rec


def wait_for_requests(gw: Proc, expected: int, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        body = httpx.get(gw.url + "/admin/usage", params={"since_seconds": 3600}, headers=ADMIN).json()
        total = sum(row["requests"] for team in body["teams"] for row in team["usage"])
        if total >= expected or time.monotonic() > deadline:
            return dict(body)
        time.sleep(0.05)


@pytest.fixture(scope="module")
def mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proc = start_mock(tmp_path_factory.mktemp("ledger-mock"))
    try:
        yield proc
    finally:
        proc.terminate()


@pytest.fixture(scope="module")
def scenario(mock: Proc, tmp_path_factory: pytest.TempPathFactory) -> Scenario:
    tmp = tmp_path_factory.mktemp("ledger")
    store = f"sqlite:///{tmp}/qg.db"
    cfg = base_config(mock.url, store)
    config_path = write_config(tmp, cfg)
    out = Scenario()
    gw = start_gateway(tmp, cfg)
    try:
        created = run_cli("keys", "create", "--team", "t2", "--name", "cli-key", "--config", str(config_path))
        assert created.returncode == 0, created.stderr
        out.cli_key = created.stdout.strip()

        def call(label: str, key: str, path: str, body: dict[str, Any]) -> httpx.Response:
            resp = httpx.post(gw.url + path, headers={"authorization": f"Bearer {key}"}, json=body, timeout=30)
            out.request_ids[label] = resp.headers["x-quotagate-request-id"]
            out.responses[label] = resp
            return resp

        chat = {"model": "gpt-4o-mini", "messages": MESSAGES}
        assert call("ok1", "sk-t1", "/v1/chat/completions", chat).status_code == 200
        assert call("ok2", "sk-t1", "/v1/chat/completions", {**chat, "mock": {"output_tokens": 3}}).status_code == 200
        stream = {**chat, "stream": True, "mock": {"output_tokens": 5, "cached_tokens": 2}}
        assert call("stream", "sk-t1", "/v1/chat/completions", stream).status_code == 200
        err = {"model": "gpt-4o", "messages": MESSAGES, "mock": {"status": 500}}
        assert call("upstream_error", "sk-t1", "/v1/chat/completions", err).status_code == 500
        cut = {**chat, "stream": True, "mock": {"cut_after": 4}}
        assert call("cut", "sk-t1", "/v1/chat/completions", cut).status_code == 200
        assert call("t2_ok", out.cli_key, "/v1/chat/completions", chat).status_code == 200
        assert call("t2_denied", "sk-t2", "/v1/chat/completions", {**chat, "model": "gpt-4o"}).status_code == 404

        # a client that reads two chunks of a paced stream and hangs up
        paced = {**chat, "stream": True, "mock": {"output_tokens": 40, "tpot_s": 0.05}}
        with (
            httpx.Client(timeout=30) as c,
            c.stream(
                "POST", gw.url + "/v1/chat/completions", headers={"authorization": "Bearer sk-t1"}, json=paced
            ) as resp,
        ):
            out.request_ids["cancelled"] = resp.headers["x-quotagate-request-id"]
            events = 0
            for line in resp.iter_lines():
                events += line.startswith("data: ")
                if events == 3:  # the role chunk and two content chunks
                    break

        out.admin = wait_for_requests(gw, expected=len(out.request_ids))
        out.admin_t2 = httpx.get(gw.url + "/admin/usage", params={"team": "t2"}, headers=ADMIN).json()
        out.admin_wrong_key = httpx.get(gw.url + "/admin/usage", headers={"authorization": "Bearer nope"})
        cli = run_cli("usage", "--config", str(config_path), "--since", "1h")
        assert cli.returncode == 0, cli.stderr
        out.cli = cli.stdout
        cli = run_cli("usage", "--config", str(config_path), "--since", "1h", "--team", "t2")
        assert cli.returncode == 0, cli.stderr
        out.cli_t2 = cli.stdout
    finally:
        out.exit_code = gw.terminate()
    out.records = read_ledger(store)
    return out


def admin_rows(body: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    return {(t["team"], row["model"]): row for t in body["teams"] for row in t["usage"]}


EXPECTED_COUNTS = {("t1", "gpt-4o-mini"): 5, ("t1", "gpt-4o"): 1, ("t2", "gpt-4o-mini"): 1, ("t2", "gpt-4o"): 1}


def test_one_record_per_request_whatever_the_outcome(scenario: Scenario) -> None:
    assert scenario.exit_code in (0, -15)  # graceful: uvicorn re-raises the handled SIGTERM at exit
    ids = [r.request_id for r in scenario.records]
    assert len(ids) == len(set(ids))
    assert set(ids) == set(scenario.request_ids.values())
    assert Counter((r.team, r.model) for r in scenario.records) == EXPECTED_COUNTS


def test_ok_records_carry_the_provider_usage_and_a_price(scenario: Scenario) -> None:
    rec = scenario.record("ok1")
    usage = scenario.responses["ok1"].json()["usage"]
    assert (rec.outcome, rec.status, rec.endpoint, rec.stream) == ("ok", 200, "chat", False)
    assert rec.input_tokens == usage["prompt_tokens"] == rec.counted_input
    assert rec.output_tokens == usage["completion_tokens"] == 16
    assert rec.provider == "mock" and rec.key_name == "k1"
    # gpt-4o-mini: 0.15 / 0.60 USD per 1M tokens, rounded up once
    assert rec.input_tokens is not None
    assert rec.cost_micro_usd == -(-(rec.input_tokens * 150_000 + 16 * 600_000) // 1_000_000)
    assert rec.latency_ms is not None and rec.latency_ms > 0
    assert scenario.record("ok2").output_tokens == 3

    stream = scenario.record("stream")  # the client asked no usage: the forced usage chunk was still read
    assert (stream.outcome, stream.stream, stream.output_tokens, stream.cached_input_tokens) == ("ok", True, 5, 2)
    assert stream.ttft_ms is not None
    assert b'"choices":[]' not in scenario.responses["stream"].content

    t2 = scenario.record("t2_ok")
    assert (t2.team, t2.key_name, t2.outcome) == ("t2", "cli-key", "ok")


def test_error_records(scenario: Scenario) -> None:
    up = scenario.record("upstream_error")
    assert (up.outcome, up.status, up.cost_micro_usd, up.model) == ("upstream_error", 500, 0, "gpt-4o")
    assert up.error and "mock: injected HTTP 500" in up.error
    cut = scenario.record("cut")  # the stream broke after 4 chunks: what was streamed is counted and charged
    assert (cut.outcome, cut.status, cut.output_tokens) == ("upstream_error", 200, None)
    assert cut.counted_output == 4 and cut.cost_micro_usd > 0
    assert cut.error and "stream broke" in cut.error
    denied = scenario.record("t2_denied")
    assert (denied.outcome, denied.status, denied.cost_micro_usd) == ("invalid_request", 404, 0)


def test_client_disconnect_is_recorded_with_counted_output(scenario: Scenario) -> None:
    rec = scenario.record("cancelled")
    assert rec.outcome == "client_cancelled"
    assert rec.output_tokens is None  # the usage chunk never came
    assert rec.counted_output is not None and 0 < rec.counted_output < 40
    assert rec.cost_micro_usd > 0


def test_admin_api_usage(scenario: Scenario) -> None:
    rows = admin_rows(scenario.admin)
    assert {k: v["requests"] for k, v in rows.items()} == EXPECTED_COUNTS
    mini = rows[("t1", "gpt-4o-mini")]
    t1_recs = [r for r in scenario.records if (r.team, r.model) == ("t1", "gpt-4o-mini")]
    assert mini["cost_micro_usd"] == sum(r.cost_micro_usd for r in t1_recs)
    assert mini["output_tokens"] == sum(r.output_tokens or r.counted_output or 0 for r in t1_recs)
    assert mini["cached_input_tokens"] == 2
    assert [t["team"] for t in scenario.admin_t2["teams"]] == ["t2"]
    wrong = scenario.admin_wrong_key
    assert wrong is not None and wrong.status_code == 401
    assert set(wrong.json()["error"]) == {"message", "type", "param", "code"}


def test_cli_usage(scenario: Scenario) -> None:
    rows = cli_rows(scenario.cli)
    assert {k: int(v[0]) for k, v in rows.items()} == EXPECTED_COUNTS
    admin = admin_rows(scenario.admin)
    for key, cols in rows.items():
        a = admin[key]
        assert [int(c) for c in cols[1:5]] == [
            a["input_tokens"], a["cached_input_tokens"], a["output_tokens"], a["reasoning_tokens"]
        ]  # fmt: skip
        assert cols[5] == f"{a['cost_micro_usd'] / 1e6:.6f}"
    assert set(cli_rows(scenario.cli_t2)) == {("t2", "gpt-4o-mini"), ("t2", "gpt-4o")}


def test_cli_usage_with_an_empty_period(tmp_path: Path) -> None:
    cfg = base_config("http://127.0.0.1:9", f"sqlite:///{tmp_path}/empty.db")
    res = run_cli("usage", "--config", str(write_config(tmp_path, cfg)), "--since", "1h")
    assert res.returncode == 0, res.stderr
    assert "(no requests in this period)" in res.stdout
    bad = run_cli("usage", "--config", str(write_config(tmp_path, cfg)), "--since", "yesterday")
    assert bad.returncode == 2


def test_graceful_shutdown_finishes_the_stream_and_records_it(mock: Proc, tmp_path: Path) -> None:
    store = f"sqlite:///{tmp_path}/shutdown.db"
    # the ledger would not flush on its own for a minute: only the shutdown flush can write the record
    gw = start_gateway(tmp_path, base_config(mock.url, store, ledger_flush_seconds=60))
    body = {"model": "gpt-4o-mini", "messages": MESSAGES, "stream": True, "mock": {"output_tokens": 20, "tpot_s": 0.05}}
    stopper: threading.Thread | None = None
    codes: list[int | None] = []
    try:
        content: list[str] = []
        done = False
        with (
            httpx.Client(timeout=30) as c,
            c.stream(
                "POST", gw.url + "/v1/chat/completions", headers={"authorization": "Bearer sk-t1"}, json=body
            ) as resp,
        ):
            request_id = resp.headers["x-quotagate-request-id"]
            for line in resp.iter_lines():
                if not line.startswith("data: "):
                    continue
                if line == "data: [DONE]":
                    done = True
                    continue
                delta = json.loads(line[6:])["choices"][0]["delta"]
                content.append(delta.get("content") or "")
                if len(content) == 3 and stopper is None:  # mid-stream: SIGTERM, as a supervisor would
                    stopper = threading.Thread(target=lambda: codes.append(gw.terminate()))
                    stopper.start()
        assert done
        assert len([c for c in content if c]) == 20
    finally:
        if stopper is not None:
            stopper.join(60)
        gw.kill()
    assert codes in ([0], [-15])  # uvicorn re-raises the SIGTERM it handled once it has shut down
    records = read_ledger(store)
    assert [r.request_id for r in records] == [request_id]
    assert (records[0].outcome, records[0].output_tokens, records[0].stream) == ("ok", 20, True)

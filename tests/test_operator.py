"""What the operator sees, through the real ``quotagate serve``: the README's first command on a fresh copy
of the repository answers with the demo key; the startup banner; one log line per refused or failed
request (text and JSON, uvicorn's lines included); the admin API's envelope, OpenAPI guard and units."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.gateway import ROOT, Proc, base_config, free_port, start_gateway, start_mock, wait_ready

CHAT = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}


def readme_block(kind: str) -> str:
    text = (ROOT / "README.md").read_text()
    m = re.search(rf"^```sh {kind}\n(.*?)^```", text, re.S | re.M)
    assert m, f"no ```sh {kind} block in the README"
    return m.group(1).strip()


def fresh_copy(dest: Path) -> Path:
    """The repository's files as a fresh clone would have them (the working tree's versions), no venv."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT, capture_output=True, check=True
    ).stdout.split(b"\0")
    for rel in filter(None, (p.decode() for p in listed)):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


@pytest.mark.slow
def test_readme_first_command_answers_the_demo_key(tmp_path: Path) -> None:
    """CI runs this from a fresh clone: the README's run block verbatim, then one chat request, 200."""
    repo = fresh_copy(tmp_path / "repo")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "QUOTAGATE_", "VIRTUAL_ENV"))}
    env.update(QUOTAGATE_PORT=str(port), HOME=str(tmp_path))  # the block's default port may be taken here
    log = tmp_path / "run.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            ["bash", "-c", readme_block("run")], cwd=repo, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip
    try:
        wait_ready(proc, f"http://127.0.0.1:{port}/healthz", 600, lambda: log.read_text(errors="replace")[-3000:])
        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            headers={"authorization": "Bearer sk-quotagate-demo"},
            json={"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]},
            timeout=30,
        )
        assert r.status_code == 200, r.text
        assert r.json()["choices"][0]["message"]["content"]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)
    banner = log.read_text()
    assert f"listen     http://127.0.0.1:{port}" in banner
    assert f"store      sqlite:///{repo}/config/data/quotagate.db" in banner
    assert "built-in mock upstream at http://127.0.0.1:" in banner


# ---- log lines ---------------------------------------------------------------------------------------------


def gateway_config(mock_url: str, store: str, down_port: int) -> dict[str, Any]:
    cfg = base_config(mock_url, store)
    cfg["providers"]["down"] = {"base_url": f"http://127.0.0.1:{down_port}/v1", "api_key": "sk-down-secret"}
    cfg["models"]["gpt-4.1-mini"] = {"provider": "down"}
    cfg["teams"].update(
        {
            "tb": {"budgets": [{"window": "day", "tokens": 20}]},
            "tc": {"max_input_tokens": 5, "on_context_overflow": "reject"},
        }
    )
    cfg["keys"] += [{"team": "tb", "name": "kb", "key": "sk-tb-secret"}, {"team": "tc", "name": "kc", "key": "sk-tc"}]
    return cfg


@pytest.fixture(scope="module")
def mock(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    proc = start_mock(tmp_path_factory.mktemp("mock"))
    yield proc
    proc.terminate()


def post(gw: Proc, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        gw.url + "/v1/chat/completions", headers={"authorization": f"Bearer {key}"}, json=body, timeout=30
    )


def lines_with(log: Path, needle: str, want: int = 1, timeout: float = 5.0) -> list[str]:
    """The log lines holding ``needle`` once ``want`` of them are there (request lines come after settling)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [ln for ln in log.read_text().splitlines() if needle in ln]
        if len(found) >= want or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_refused_and_failed_requests_leave_one_line_each(mock: Proc, tmp_path: Path, fmt: str) -> None:
    down = free_port()  # nothing listens there
    extra = ["--log-format", fmt] + (["--access-log"] if fmt == "json" else [])
    gw = start_gateway(tmp_path, gateway_config(mock.url, f"sqlite:///{tmp_path}/qg.db", down), extra=extra)
    try:
        answers = {
            "unauthorized": post(gw, "sk-wrong-key-123", CHAT),
            "budget_exceeded": post(gw, "sk-tb-secret", CHAT),
            "context_rejected": post(gw, "sk-tc", {**CHAT, "messages": [{"role": "user", "content": "a b c d e f g"}]}),
            "upstream_error": post(gw, "sk-t1", {**CHAT, "model": "gpt-4.1-mini"}),
            "ok": post(gw, "sk-t1", CHAT),
        }
        assert [r.status_code for r in answers.values()] == [401, 429, 400, 502, 200]
        assert gw.log is not None
        found = {o: lines_with(gw.log, r.headers["x-request-id"]) for o, r in answers.items()}
    finally:
        gw.terminate()
    text = gw.log.read_text()
    for secret in ("sk-wrong-key-123", "sk-tb-secret", "sk-down-secret", "sk-upstream-secret"):
        assert secret not in text
    if fmt == "text":
        assert found["ok"] == []  # without --access-log only refusals and failures
        for outcome in ("unauthorized", "budget_exceeded", "context_rejected", "upstream_error"):
            (line,) = found[outcome]
            assert f"outcome={outcome}" in line and f"status={answers[outcome].status_code}" in line
        assert "WARNING quotagate.request refused" in found["budget_exceeded"][0]
        assert "team=tb key=kb model=gpt-4o-mini" in found["budget_exceeded"][0]
        assert 'limit="budget team day tokens used 0/20 held 0 asked ' in found["budget_exceeded"][0]
        assert "provider=" not in found["budget_exceeded"][0]  # never sent anywhere
        assert "ERROR quotagate.request failed" in found["upstream_error"][0]
        assert f"provider=down upstream_host=127.0.0.1:{down}" in found["upstream_error"][0]
        assert f"listen     http://127.0.0.1:{gw.port}" in text and f"store      sqlite:///{tmp_path}/qg.db" in text
        assert re.search(r"^\S+Z INFO uvicorn.error Application startup complete\.$", text, re.M)
        return
    objs = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line is one JSON object
    assert {o["logger"] for o in objs} >= {"quotagate.startup", "quotagate.request", "uvicorn.error"}
    (banner,) = [o for o in objs if o["logger"] == "quotagate.startup"]
    assert banner["listen"] == f"http://127.0.0.1:{gw.port}" and banner["store"] == f"sqlite:///{tmp_path}/qg.db"
    assert banner["models"]["gpt-4o-mini"] == {"provider": "mock", "price": "price table 2026-11-01"}
    assert banner["teams"]["tb"].startswith("budgets day 20 tokens")
    by_id = {o.get("request_id"): o for o in objs}
    for outcome, r in answers.items():
        (line,) = found[outcome]
        o = by_id[r.headers["x-request-id"]]
        assert json.loads(line) == o and (o["outcome"], o["status"]) == (outcome, r.status_code)
        assert isinstance(o["latency_ms"], float) and o["ts"].endswith("Z")
    assert by_id[answers["budget_exceeded"].headers["x-request-id"]]["limit"].startswith("budget team day tokens")
    assert by_id[answers["budget_exceeded"].headers["x-request-id"]]["level"] == "warning"
    failed = by_id[answers["upstream_error"].headers["x-request-id"]]
    assert (failed["level"], failed["provider"], failed["upstream_host"]) == ("error", "down", f"127.0.0.1:{down}")
    good = by_id[answers["ok"].headers["x-request-id"]]
    assert (good["level"], good["upstream_status"], good["team"], good["key"]) == ("info", 200, "t1", "k1")
    assert good["input_tokens"] > 0 and good["cost_usd"] > 0


# ---- admin API -------------------------------------------------------------------------------------------


def test_admin_api_envelope_guarded_openapi_and_units(mock: Proc, tmp_path: Path) -> None:
    gw = start_gateway(tmp_path, base_config(mock.url, f"sqlite:///{tmp_path}/qg.db"))
    admin = {"authorization": "Bearer admin-secret"}
    try:
        assert httpx.get(gw.url + "/admin/openapi.json").status_code == 401
        spec = httpx.get(gw.url + "/admin/openapi.json", headers=admin).json()
        assert "/admin/teams/{team}/budgets" in spec["paths"]
        docs = httpx.get(gw.url + "/admin/docs", headers=admin)  # no CDN-loaded Swagger UI
        assert docs.status_code == 404 and set(docs.json()["error"]) == {"message", "type", "param", "code"}

        url = gw.url + "/admin/teams/t1/budgets"
        wrapped = httpx.put(url, headers=admin, json={"budgets": [{"window": "day", "usd": 7}]})
        assert wrapped.status_code == 200, wrapped.text
        assert wrapped.json()["budgets"] == [{"window": "day", "usd": "7"}]
        bare = httpx.put(url, headers=admin, json=[{"window": "day", "usd": 8}, {"window": "month", "tokens": 9000}])
        assert bare.status_code == 200, bare.text
        invalid = httpx.put(url, headers=admin, json={"budgets": "lots"})
        assert invalid.status_code == 400
        err = invalid.json()["error"]
        assert set(err) == {"message", "type", "param", "code"} and err["type"] == "invalid_request_error"

        assert post(gw, "sk-t1", CHAT).status_code == 200
        time.sleep(0.5)  # ledger flush
        usage = httpx.get(gw.url + "/v1/usage", headers={"authorization": "Bearer sk-t1"}).json()
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", usage["since"])
        day, month = usage["budgets"]
        assert (day["unit"], day["limit"], day["limit_usd"]) == ("usd", 8_000_000, 8.0)
        assert day["used_usd"] == round(day["used"] / 1e6, 6) > 0 and day["resets_at"].endswith("T00:00:00.000Z")
        assert (month["unit"], month["limit"], month["limit_usd"]) == ("tokens", 9000, None)
        (row,) = usage["usage"]
        assert row["cost_usd"] == round(row["cost_micro_usd"] / 1e6, 6) and isinstance(row["input_tokens"], int)
    finally:
        gw.terminate()

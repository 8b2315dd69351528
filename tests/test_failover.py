"""Provider failover (issue 9, point 5) and model modes (point 6), through a real gateway process and real
mock providers on sockets.

A model's ``provider: [a, b]`` is an ordered failover: when ``a`` fails before anything was relayed (the
connection is refused, no response headers within ``failover_timeout_s``, an upstream 429 or 5xx) the
request goes to ``b``. One reservation, one settlement: the team is charged once, for what ``b`` served;
each attempt has its own ledger row, and ``x-quotagate-provider`` names the provider that answered.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from proxy.store.base import LedgerRecord
from tests.gateway import Proc, base_config, free_port, mock_requests, start_gateway, start_mock
from tests.test_governance import CAP, auth, chat, clear_mock, ledger, n_input, sqlite_url, wait_until

pytestmark = pytest.mark.slow

WORST = n_input() + CAP  # the mock answers CAP tokens: a served request uses exactly this


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Proc, Proc, str]]:
    tmp = tmp_path_factory.mktemp("failover")
    mock = start_mock(tmp)
    v1 = mock.url + "/v1"
    store = sqlite_url(tmp / "failover.db")
    providers = {
        "good": {"base_url": v1},
        "down": {"base_url": f"http://127.0.0.1:{free_port()}/v1"},  # nothing listens there
        "slow": {"base_url": v1, "headers": {"x-mock-delay-s": "5"}},
        "busy": {"base_url": v1, "headers": {"x-mock-status": "429"}},
        "broken": {"base_url": v1, "headers": {"x-mock-status": "503"}},
    }

    def model(*names: str) -> dict[str, Any]:
        return {"provider": list(names), "upstream_model": "gpt-4o-mini"}

    cfg = base_config(
        mock.url,
        store,
        providers=providers,
        models={
            "fo-down": model("down", "good"),
            "fo-slow": model("slow", "good"),
            "fo-busy": model("busy", "good"),
            "fo-broken": model("broken", "good"),
            "fo-chain": model("down", "broken", "good"),  # three providers, two failing
            "fo-none": model("down", "broken"),  # every provider fails
            "gpt-4o-mini": {"provider": "good"},
            "text-embedding-3-small": {"provider": "good"},  # mode: embedding, from the price table
            "chatty": {"provider": "good", "upstream_model": "gpt-4o-mini", "mode": "chat"},
        },
        teams={
            "fo": {
                "budgets": [{"window": "day", "tokens": 10_000_000}, {"window": "month", "usd": 100}],
                "rate_limits": {"tpm": 1_000_000, "rpm": 10_000, "concurrent": 50},
            }
        },
        keys=[{"team": "fo", "name": "k-fo", "key": "sk-fo", "budgets": [{"window": "day", "usd": 10}]}],
        failover_timeout_s=0.5,
    )
    gw = start_gateway(tmp, cfg, name="failover.yaml")
    yield gw, mock, store
    gw.terminate()
    mock.terminate()


def rows_of(store: str, rid: str, n: int) -> dict[str, LedgerRecord]:
    """The ledger rows of one request and its failed attempts (``<id>.<n>``), once all ``n`` are written."""

    def rows() -> dict[str, LedgerRecord] | None:
        got = {x.request_id: x for x in ledger(store, "fo") if x.request_id.split(".")[0] == rid}
        return got if len(got) >= n else None

    got = wait_until(rows)
    assert len(got) == n, sorted(got)
    return got


def used_tokens(gw: Proc) -> int:
    rows = httpx.get(gw.url + "/v1/usage", headers=auth("sk-fo"), timeout=10).json()["budgets"]
    (day,) = [b for b in rows if b["window"] == "day" and b["unit"] == "tokens"]
    assert day["reserved"] == 0
    return int(day["used"])


@pytest.mark.parametrize(
    ("model", "failed"),
    [
        ("fo-down", ["down"]),
        ("fo-slow", ["slow"]),
        ("fo-busy", ["busy"]),
        ("fo-broken", ["broken"]),
        ("fo-chain", ["down", "broken"]),
    ],
)
def test_failover_serves_from_the_next_provider_and_charges_once(
    env: tuple[Proc, Proc, str], model: str, failed: list[str]
) -> None:
    gw, mock, store = env
    before = wait_until(lambda: used_tokens(gw) + 1) - 1
    clear_mock(mock)
    r = httpx.post(gw.url + "/v1/chat/completions", json=chat(model=model), headers=auth("sk-fo"), timeout=30)
    assert r.status_code == 200, r.text
    assert r.headers["x-quotagate-provider"] == "good"
    assert r.json()["usage"]["completion_tokens"] == CAP
    rid = r.headers["x-request-id"]
    # each provider that answered was asked once (a refused connection never reaches the mock)
    reached = [p for p in failed if p != "down"] + ["good"]
    assert len(mock_requests(mock)) == len(reached)
    # charged once, for what the good provider served
    assert wait_until(lambda: used_tokens(gw) == before + WORST)
    rows = rows_of(store, rid, len(failed) + 1)
    served = rows[rid]
    assert (served.outcome, served.provider, served.charged) == ("ok", "good", True)
    assert served.cost_micro_usd > 0
    for i, name in enumerate(failed, 1):
        attempt = rows[f"{rid}.{i}"]
        assert (attempt.outcome, attempt.provider, attempt.charged, attempt.cost_micro_usd) == (
            "upstream_error",
            name,
            False,
            0,
        )
    if "slow" in failed:
        assert rows[f"{rid}.1"].status == 504


def test_a_stream_fails_over_too(env: tuple[Proc, Proc, str]) -> None:
    gw, _, _ = env
    client = openai.OpenAI(base_url=gw.url + "/v1", api_key="sk-fo", max_retries=0)
    with client.chat.completions.with_streaming_response.create(
        model="fo-broken",
        messages=[{"role": "user", "content": "Stream, please."}],
        max_tokens=CAP,
        stream=True,
        stream_options={"include_usage": True},
    ) as resp:
        assert resp.headers["x-quotagate-provider"] == "good"
        chunks = list(resp.parse())
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens > 0


def test_when_every_provider_fails_the_last_error_is_relayed_and_nothing_is_charged(
    env: tuple[Proc, Proc, str],
) -> None:
    gw, _, store = env
    before = wait_until(lambda: used_tokens(gw) + 1) - 1
    r = httpx.post(gw.url + "/v1/chat/completions", json=chat(model="fo-none"), headers=auth("sk-fo"), timeout=30)
    assert r.status_code == 503, r.text
    assert r.headers["x-quotagate-provider"] == "broken"
    rid = r.headers["x-request-id"]
    rows = rows_of(store, rid, 2)
    assert (rows[f"{rid}.1"].provider, rows[rid].provider) == ("down", "broken")
    assert not rows[rid].charged and not rows[f"{rid}.1"].charged
    assert used_tokens(gw) == before


# ---- model modes -----------------------------------------------------------------------------------------


def test_an_endpoint_called_with_a_model_of_another_mode_gets_400_naming_both(env: tuple[Proc, Proc, str]) -> None:
    gw, mock, _ = env
    clear_mock(mock)
    r = httpx.post(
        gw.url + "/v1/chat/completions", json=chat(model="text-embedding-3-small"), headers=auth("sk-fo"), timeout=10
    )
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert (err["param"], err["code"], err["type"]) == ("model", "model_not_supported", "invalid_request_error")
    assert "text-embedding-3-small" in err["message"] and "/v1/chat/completions" in err["message"]
    assert "/v1/embeddings" in err["message"]
    r = httpx.post(gw.url + "/v1/embeddings", json={"model": "chatty", "input": "x"}, headers=auth("sk-fo"), timeout=10)
    assert r.status_code == 400 and "chat model" in r.json()["error"]["message"]
    assert mock_requests(mock) == []  # refused before any upstream call
    # a chat model also answers the Responses API; a model with no mode goes anywhere
    r = httpx.post(gw.url + "/v1/responses", json={"model": "chatty", "input": "hi"}, headers=auth("sk-fo"), timeout=10)
    assert r.status_code == 200, r.text
    r = httpx.post(
        gw.url + "/v1/completions", json={"model": "gpt-4o-mini", "prompt": "hi"}, headers=auth("sk-fo"), timeout=10
    )
    assert r.status_code == 200, r.text

"""Service tiers (issue 11.7) through a real gateway over a socket, with the official ``openai`` and
``anthropic`` SDKs, to quotagate's mock (which serves the tier asked for, or the one ``mock.service_tier``
names): a flex request is charged at the flex rates of the price table, a priority one at the rates a config
gives, a request served at another tier than asked at the tier served, and the ledger row says which; a
tier with no price is refused 400 on a budgeted team and forwarded (charged at the standard rates, counted
as unpriced) on a team without budgets. Costs are hand-computed here from list prices, not by quotagate.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import Any

import anthropic
import httpx
import openai
import pytest

from proxy.store.base import LedgerRecord
from tests.gateway import Proc, base_config, mock_requests, start_gateway, start_mock
from tests.test_governance import ledger, sqlite_url, wait_until

pytestmark = pytest.mark.slow

CAP = 20
MINI, GPT5, SONNET = "gpt-5-mini", "gpt-5", "claude-sonnet-4-5"
# USD per 1M tokens: in, cached in (read), out [, 5m write, 1h write]
RATES: dict[tuple[str, str], tuple[str, ...]] = {
    (MINI, "standard"): ("0.25", "0.025", "2.00"),  # the price table
    (MINI, "flex"): ("0.125", "0.0125", "1.00"),  # the price table: 50%
    (GPT5, "standard"): ("1.25", "0.125", "10.00"),
    (GPT5, "flex"): ("0.625", "0.0625", "5.00"),
    (GPT5, "priority"): ("2.50", "0.25", "20.00"),  # this config's
    (SONNET, "standard"): ("3.00", "0.30", "15.00", "3.75", "6.00"),
    (SONNET, "priority"): ("6.00", "0.60", "30.00", "7.50", "12.00"),  # this config's
}


def _tier(model: str, tier: str) -> dict[str, Any]:
    r = RATES[(model, tier)]
    out: dict[str, Any] = {"input": r[0], "cached_input": r[1], "output": r[2]}
    if len(r) > 3:
        out.update(cache_write_5m=r[3], cache_write_1h=r[4])
    return out


def hand_cost(model: str, tier: str, fresh: int, cached: int, output: int) -> int:
    """Micro-USD: fresh input, cache reads and output at the tier's list prices, rounded up once."""
    r = [Decimal(v) for v in RATES[(model, tier)]]
    return int((fresh * r[0] + cached * r[1] + output * r[2]).to_integral_value(rounding=ROUND_CEILING))


@dataclass
class Gw:
    gw: Proc
    mock: Proc
    store: str

    def openai(self, key: str) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.gw.url + "/v1", api_key=key, max_retries=0, timeout=30)

    def anthropic(self, key: str) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.gw.url, api_key=key, max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gw]:
    tmp = tmp_path_factory.mktemp("tiers")
    mock = start_mock(tmp)
    store = sqlite_url(tmp / "tiers.db")
    cfg = base_config(
        mock.url,
        store,
        providers={
            "mock": {"base_url": mock.url + "/v1", "api_key": "sk-up"},
            "anthropic": {"kind": "anthropic", "base_url": mock.url + "/v1", "api_key": "sk-ant-up"},
        },
        models={
            MINI: {"provider": "mock"},  # flex from the price table, no priority price
            GPT5: {
                "provider": "mock",
                "price": {
                    **_tier(GPT5, "standard"),
                    "tiers": {"flex": _tier(GPT5, "flex"), "priority": _tier(GPT5, "priority")},
                },
            },
            SONNET: {
                "provider": "anthropic",
                "price": {**_tier(SONNET, "standard"), "tiers": {"priority": _tier(SONNET, "priority")}},
            },
        },
        teams={"paid": {"budgets": [{"window": "month", "usd": 100}]}, "free": {}},
        keys=[
            {"team": "paid", "name": "k-paid", "key": "sk-paid"},
            {"team": "free", "name": "k-free", "key": "sk-free"},
        ],
    )
    proc = start_gateway(tmp, cfg, name="tiers.yaml")
    yield Gw(proc, mock, store)
    proc.terminate()
    mock.terminate()


def row_of(g: Gw, team: str, request_id: str) -> LedgerRecord:
    def find() -> LedgerRecord | None:
        return next((r for r in ledger(g.store, team) if r.request_id == request_id), None)

    return wait_until(find, 10, 0.05)


def ask(text: str) -> list[Any]:
    return [{"role": "user", "content": text}]


# ---- OpenAI ------------------------------------------------------------------------------------------------


def test_a_flex_chat_completion_is_charged_at_the_tables_flex_rates(gw: Gw) -> None:
    raw = gw.openai("sk-paid").chat.completions.with_raw_response.create(
        model=MINI,
        messages=ask("Flex, please."),
        service_tier="flex",
        max_completion_tokens=CAP,
        extra_body={"mock": {"output_tokens": 9, "cached_tokens": 4}},
    )
    resp = raw.parse()
    assert resp.service_tier == "flex" and resp.usage is not None
    u = resp.usage
    row = row_of(gw, "paid", raw.headers["x-quotagate-request-id"])
    assert row.service_tier == "flex"
    assert (row.input_tokens, row.cached_input_tokens, row.output_tokens) == (u.prompt_tokens, 4, 9)
    flex = hand_cost(MINI, "flex", u.prompt_tokens - 4, 4, 9)
    assert row.cost_micro_usd == flex
    assert hand_cost(MINI, "standard", u.prompt_tokens - 4, 4, 9) in (2 * flex, 2 * flex - 1)  # half, rounded up


def test_a_flex_stream_is_charged_at_flex_from_its_usage_chunk(gw: Gw) -> None:
    client = gw.openai("sk-paid")
    with client.chat.completions.with_streaming_response.create(
        model=MINI,
        messages=ask("Stream it at flex."),
        service_tier="flex",
        stream=True,
        max_completion_tokens=CAP,
        extra_body={"mock": {"output_tokens": 6}},
    ) as raw:
        rid = raw.headers["x-quotagate-request-id"]
        chunks = list(raw.parse())
    assert chunks and all(c.service_tier == "flex" for c in chunks)
    assert all(c.usage is None for c in chunks)  # the usage chunk quotagate asked for is not the client's
    row = row_of(gw, "paid", rid)
    assert row.stream and row.service_tier == "flex" and row.output_tokens == 6 and row.input_tokens is not None
    assert row.cost_micro_usd == hand_cost(MINI, "flex", row.input_tokens, 0, 6)


def test_a_flex_response_is_charged_at_flex(gw: Gw) -> None:
    raw = gw.openai("sk-paid").responses.with_raw_response.create(
        model=MINI,
        input="Responses at flex.",
        service_tier="flex",
        max_output_tokens=CAP,
        extra_body={"mock": {"output_tokens": 5}},
    )
    resp = raw.parse()
    assert resp.service_tier == "flex" and resp.usage is not None
    row = row_of(gw, "paid", raw.headers["x-quotagate-request-id"])
    assert row.endpoint == "responses" and row.service_tier == "flex"
    assert row.cost_micro_usd == hand_cost(MINI, "flex", resp.usage.input_tokens, 0, 5)


def test_priority_without_a_price_is_refused_400_on_a_budgeted_team(gw: Gw) -> None:
    marker = "Priority for a model with no priority price."
    with pytest.raises(openai.BadRequestError) as e:
        gw.openai("sk-paid").chat.completions.create(
            model=MINI, messages=ask(marker), service_tier="priority", max_completion_tokens=CAP
        )
    err = e.value
    assert err.status_code == 400 and err.code == "service_tier_not_priced" and err.param == "service_tier"
    assert isinstance(err.body, dict) and err.body["type"] == "invalid_request_error"
    assert f"`{MINI}`" in err.message and "'priority'" in err.message
    assert f"models.{MINI}.price.tiers.priority" in err.message
    assert not [r for r in mock_requests(gw.mock) if marker in str(r.get("body"))]  # never forwarded
    row = row_of(gw, "paid", err.response.headers["x-quotagate-request-id"])
    assert (row.status, row.outcome, row.cost_micro_usd, row.charged) == (400, "invalid_request", 0, False)


def test_priority_without_a_price_is_forwarded_on_a_team_without_budgets(gw: Gw) -> None:
    raw = gw.openai("sk-free").chat.completions.with_raw_response.create(
        model=MINI,
        messages=ask("Priority, unbudgeted."),
        service_tier="priority",
        max_completion_tokens=CAP,
        extra_body={"mock": {"output_tokens": 7}},
    )
    resp = raw.parse()
    assert resp.service_tier == "priority" and resp.usage is not None
    row = row_of(gw, "free", raw.headers["x-quotagate-request-id"])
    assert row.service_tier == "priority"
    assert row.cost_micro_usd == hand_cost(MINI, "standard", resp.usage.prompt_tokens, 0, 7)  # no price: standard
    text = httpx.get(gw.gw.url + "/metrics", timeout=10).text
    m = re.search(r'quotagate_unpriced_tokens_total\{dimension="tiers.priority",model="gpt-5-mini"\} (\S+)', text)
    assert m is not None and float(m.group(1)) >= resp.usage.prompt_tokens + 7


def test_priority_with_a_configured_price_is_charged_at_it(gw: Gw) -> None:
    raw = gw.openai("sk-paid").chat.completions.with_raw_response.create(
        model=GPT5,
        messages=ask("Priority, priced."),
        service_tier="priority",
        max_completion_tokens=CAP,
        extra_body={"mock": {"output_tokens": 8}},
    )
    resp = raw.parse()
    assert resp.service_tier == "priority" and resp.usage is not None
    row = row_of(gw, "paid", raw.headers["x-quotagate-request-id"])
    assert row.service_tier == "priority"
    assert row.cost_micro_usd == hand_cost(GPT5, "priority", resp.usage.prompt_tokens, 0, 8)


def test_a_request_served_at_another_tier_than_asked_is_charged_at_the_tier_served(gw: Gw) -> None:
    raw = gw.openai("sk-paid").chat.completions.with_raw_response.create(
        model=GPT5,
        messages=ask("Flex asked, standard served."),
        service_tier="flex",
        max_completion_tokens=CAP,
        extra_body={"mock": {"output_tokens": 8, "service_tier": "default"}},
    )
    resp = raw.parse()
    assert resp.service_tier == "default" and resp.usage is not None
    row = row_of(gw, "paid", raw.headers["x-quotagate-request-id"])
    assert row.service_tier == "default"
    assert row.cost_micro_usd == hand_cost(GPT5, "standard", resp.usage.prompt_tokens, 0, 8)


# ---- Anthropic ---------------------------------------------------------------------------------------------


def test_an_anthropic_message_served_at_priority_is_charged_at_the_configured_priority_rates(gw: Gw) -> None:
    client = gw.anthropic("sk-paid")
    raw = client.messages.with_raw_response.create(
        model=SONNET,
        max_tokens=CAP,
        messages=ask("Priority if you have it."),
        service_tier="auto",
        extra_body={"mock": {"output_tokens": 7, "service_tier": "priority"}},
    )
    msg = raw.parse()
    assert msg.usage.service_tier == "priority"
    row = row_of(gw, "paid", raw.headers["x-quotagate-request-id"])
    assert row.service_tier == "priority" and row.output_tokens == 7
    assert row.cost_micro_usd == hand_cost(SONNET, "priority", msg.usage.input_tokens, 0, 7)

    with client.messages.stream(
        model=SONNET,
        max_tokens=CAP,
        messages=ask("Standard only, streamed."),
        service_tier="standard_only",
        extra_body={"mock": {"output_tokens": 5}},
    ) as stream:
        final = stream.get_final_message()
        rid = stream.response.headers["x-quotagate-request-id"]
    assert final.usage.service_tier == "standard"
    row = row_of(gw, "paid", rid)
    assert row.stream and row.service_tier == "standard" and row.output_tokens == 5
    assert row.cost_micro_usd == hand_cost(SONNET, "standard", final.usage.input_tokens, 0, 5)

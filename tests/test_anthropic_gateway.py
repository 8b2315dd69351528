"""The official ``anthropic`` SDK through a real gateway over a socket, to quotagate's mock speaking the
Anthropic Messages API (x-api-key, anthropic-version, prompt cache with 5m/1h writes, tools, streams).

What the client sees is what the upstream sent; quotagate's ledger and counters equal hand-computed figures
for cache writes (5 minutes and 1 hour), cache reads and a long-context request, to the micro-dollar;
refusals arrive as the SDK's own exception classes in Anthropic's error shape; 200 concurrent requests
against a budget that fits K worst cases admit exactly K.
"""

from __future__ import annotations

import asyncio
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import Any

import anthropic
import httpx
import httpx2
import pytest
from anthropic.types import MessageParam, TextBlockParam, ToolParam

from proxy.count import Counter
from proxy.mock.anthropic import TOKENIZER_RATIO, Prompt, prompt_of
from proxy.mock.config import MockConfig
from proxy.mock.state import State
from proxy.store.base import LedgerRecord
from tests.gateway import Proc, base_config, mock_requests, start_gateway, start_mock
from tests.test_governance import ADMIN, budgets, ledger, ledger_rows, settled, sqlite_url, wait_until

pytestmark = pytest.mark.slow

SONNET = "claude-sonnet-4-5"
HAIKU = "claude-haiku-4-5"
BURST_MODEL = "claude-burst"  # only the burst uses it: its pre-count factor stays the configured one
CAP = 20
UPSTREAM_KEY = "sk-ant-upstream-secret"
# USD per 1M tokens (the price table's, conventions.md section 8)
RATES = {
    SONNET: {"in": "3.00", "read": "0.30", "w5m": "3.75", "w1h": "6.00", "out": "15.00"},
    HAIKU: {"in": "1.00", "read": "0.10", "w5m": "1.25", "w1h": "2.00", "out": "5.00"},
}
SYSTEM_TEXT = "You answer questions about the quotagate handbook. " * 60


def hand_cost(model: str, u: dict[str, Any], long: bool = False) -> int:
    """Micro-USD of an Anthropic usage object, computed here from the list prices (not by quotagate)."""
    r = {k: Decimal(v) for k, v in RATES[model].items()}
    if long:  # the whole request at the tier: input, cache x2, output x1.5
        r = {k: v * (Decimal("1.5") if k == "out" else 2) for k, v in r.items()}
    split = u.get("cache_creation") or {}
    usd_micro = (
        u["input_tokens"] * r["in"]
        + u.get("cache_read_input_tokens", 0) * r["read"]
        + split.get("ephemeral_5m_input_tokens", 0) * r["w5m"]
        + split.get("ephemeral_1h_input_tokens", 0) * r["w1h"]
        + u["output_tokens"] * r["out"]
    )
    return int(usd_micro.to_integral_value(rounding=ROUND_CEILING))


def total_input(u: dict[str, Any]) -> int:
    return int(u["input_tokens"] + u.get("cache_read_input_tokens", 0) + u.get("cache_creation_input_tokens", 0))


def messages(text: str = "What is the refund policy?") -> list[MessageParam]:
    return [{"role": "user", "content": text}]


_LOCAL = Counter()


def local_count(system: Any, msgs: list[MessageParam], tools: Any = None, model: str = BURST_MODEL) -> int:
    return _LOCAL.anthropic(system, msgs, tools, model=model, encoding=None).tokens


BURST_MSGS = messages("Count the governance tokens, please.")
BURST_WORST = math.ceil(local_count(None, BURST_MSGS) * 1.5) + CAP  # before any learning: the configured 1.5
K = 20
BURST_LIMIT = K * BURST_WORST + BURST_WORST - 1


COUNTED_MSGS = messages("Counted by the provider before it is sent.")
COUNTED_N = prompt_of(State(MockConfig()), {"model": HAIKU, "messages": COUNTED_MSGS}, HAIKU, cache=False).total
COUNTED_LIMIT = 3 * (COUNTED_N + CAP) + (COUNTED_N + CAP) - 1  # three requests' worst case, one token short of four


@dataclass
class Gw:
    gw: Proc
    mock: Proc
    store: str

    def client(self, key: str = "sk-app", max_retries: int = 0) -> anthropic.Anthropic:
        return anthropic.Anthropic(base_url=self.gw.url, api_key=key, max_retries=max_retries, timeout=60)

    def aclient(self, key: str = "sk-app") -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(base_url=self.gw.url, api_key=key, max_retries=0, timeout=60)


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gw]:
    tmp = tmp_path_factory.mktemp("anthropic")
    mock = start_mock(tmp, "--api-key", UPSTREAM_KEY)
    store = sqlite_url(tmp / "anthropic.db")
    provider = {"kind": "anthropic", "base_url": mock.url + "/v1", "api_key": UPSTREAM_KEY}
    teams: dict[str, Any] = {
        "app": {
            "budgets": [{"window": "day", "tokens": 50_000_000}, {"window": "month", "usd": 100}],
            "rate_limits": {"rpm": 10_000, "tpm": 100_000_000},
        },
        "learn": {"budgets": [{"window": "day", "tokens": 50_000_000}]},
        "capped": {"max_input_tokens": 50},
        "broke": {"budgets": [{"window": "day", "usd": "0.0001"}]},
        "rpm": {"rate_limits": {"rpm": 1}},
        "burst": {"budgets": [{"window": "day", "tokens": BURST_LIMIT}]},
        "openai_only": {"models": ["gpt-4o-mini"]},
        "counted": {"budgets": [{"window": "day", "tokens": COUNTED_LIMIT}]},
        "per_user": {"end_user_budgets": [{"window": "day", "tokens": 1}]},  # no end user's request fits
    }
    cfg = base_config(
        mock.url,
        store,
        providers={"anthropic": provider, "mock": {"base_url": mock.url + "/v1", "api_key": UPSTREAM_KEY}},
        models={
            SONNET: {"provider": "anthropic", "context_window": 1_000_000},  # the 1M-context beta
            HAIKU: {"provider": "anthropic", "precount": {"min_samples": 8}},
            BURST_MODEL: {"provider": "anthropic", "upstream_model": HAIKU},
            "claude-counted": {"provider": "anthropic", "upstream_model": HAIKU, "precount": {"source": "provider"}},
            "claude-count-fallback": {
                "provider": "anthropic",
                "upstream_model": HAIKU,
                "precount": {"source": "provider", "provider_timeout_s": 0.000001},
            },
            "gpt-4o-mini": {"provider": "mock"},
        },
        teams=teams,
        keys=[
            {"team": "app", "name": "k-app", "key": "sk-app", "budgets": [{"window": "day", "usd": 50}]},
            *({"team": t, "name": f"k-{t}", "key": f"sk-{t}"} for t in teams if t != "app"),
        ],
    )
    proc = start_gateway(tmp, cfg, name="anthropic.yaml")
    yield Gw(proc, mock, store)
    proc.terminate()
    mock.terminate()


def row_of(g: Gw, team: str, request_id: str | None = None, endpoint: str = "messages") -> LedgerRecord:
    def find() -> LedgerRecord | None:
        rows = [r for r in ledger(g.store, team) if r.endpoint == endpoint]
        if request_id is not None:
            rows = [r for r in rows if r.request_id == request_id]
        return rows[0] if rows else None

    return wait_until(find, 10, 0.05)


def expected_prompt(state: State, system: Any, msgs: list[MessageParam], model: str, tools: Any = None) -> Prompt:
    body: dict[str, Any] = {"model": model, "messages": msgs, "max_tokens": CAP}
    if system is not None:
        body["system"] = system
    if tools is not None:
        body["tools"] = tools
    return prompt_of(state, body, model)


# -- the SDK, sync and async, streaming, tools -----------------------------------------------------------


def test_a_message_costs_what_its_usage_says_and_the_client_sees_the_upstreams_usage(gw: Gw) -> None:
    state = State(MockConfig())
    resp = gw.client().messages.with_raw_response.create(
        model=SONNET, max_tokens=CAP, messages=messages(), extra_body={"mock": {"output_tokens": 7}}
    )
    msg = resp.parse()
    want = expected_prompt(state, None, messages(), SONNET)
    assert msg.usage.input_tokens == want.total and msg.usage.output_tokens == 7
    assert msg.content[0].type == "text" and msg.stop_reason == "end_turn"
    (sent,) = [r for r in mock_requests(gw.mock) if r["path"] == "/v1/messages"][-1:]
    assert sent["headers"]["x-api-key"] == UPSTREAM_KEY and "authorization" not in sent["headers"]
    assert sent["headers"]["anthropic-version"] == gw.client().default_headers["anthropic-version"]  # as sent
    row = row_of(gw, "app", resp.headers["x-quotagate-request-id"])
    u = msg.usage.model_dump()
    assert (row.input_tokens, row.output_tokens, row.cached_input_tokens) == (want.total, 7, 0)
    assert row.cost_micro_usd == hand_cost(SONNET, u)
    assert row.counted_input == local_count(None, messages(), model=SONNET)  # the local count, unscaled
    assert row.usage_raw is not None and '"cache_creation"' in row.usage_raw


def test_prompt_cache_write_5m_then_read_and_1h_writes_are_priced_by_lifetime(gw: Gw) -> None:
    client = gw.client()
    state = State(MockConfig())
    system_5m: list[TextBlockParam] = [{"type": "text", "text": SYSTEM_TEXT, "cache_control": {"type": "ephemeral"}}]
    got = []
    for _ in range(2):  # the same prefix twice: written, then read
        resp = client.messages.with_raw_response.create(
            model=SONNET,
            max_tokens=CAP,
            system=system_5m,
            messages=messages(),
            extra_body={"mock": {"output_tokens": 9}},
        )
        got.append((resp.parse(), resp.headers["x-quotagate-request-id"]))
    first, second = (expected_prompt(state, system_5m, messages(), SONNET) for _ in range(2))
    assert first.write_5m > 500 and first.read == 0 and second.read == first.write_5m and second.write_5m == 0
    for (msg, rid), want in zip(got, (first, second), strict=True):
        u = msg.usage.model_dump()
        assert (msg.usage.input_tokens, msg.usage.cache_read_input_tokens) == (want.fresh, want.read)
        assert msg.usage.cache_creation_input_tokens == want.write_5m
        row = row_of(gw, "app", rid)
        assert row.input_tokens == want.total and row.cached_input_tokens == want.read
        assert (row.cache_write_5m_tokens, row.cache_write_1h_tokens) == (want.write_5m, 0)
        assert row.cost_micro_usd == hand_cost(SONNET, u)
    system_1h: list[TextBlockParam] = [
        {"type": "text", "text": SYSTEM_TEXT + "!", "cache_control": {"type": "ephemeral", "ttl": "1h"}}
    ]
    resp = client.messages.with_raw_response.create(
        model=SONNET, max_tokens=CAP, system=system_1h, messages=messages(), extra_body={"mock": {"output_tokens": 3}}
    )
    msg = resp.parse()
    want = expected_prompt(state, system_1h, messages(), SONNET)
    assert msg.usage.cache_creation is not None and msg.usage.cache_creation.ephemeral_1h_input_tokens == want.write_1h
    row = row_of(gw, "app", resp.headers["x-quotagate-request-id"])
    assert (row.cache_write_5m_tokens, row.cache_write_1h_tokens) == (0, want.write_1h)
    assert row.cost_micro_usd == hand_cost(SONNET, msg.usage.model_dump())
    # the spend breakdown carries the provider and tells cache writes from reads
    text = httpx.get(gw.gw.url + "/metrics", timeout=10).text
    series = dict(
        (m.group(1), float(m.group(2)))
        for m in re.finditer(
            r'^quotagate_spend_by_type_usd_total\{model="claude-sonnet-4-5",provider="anthropic",team="app",'
            r'type="(\w+)"\} (\S+)$',
            text,
            re.M,
        )
    )
    writes = (first.write_5m * Decimal("3.75") + want.write_1h * Decimal("6.00")) / 10**6
    assert series["cache_write"] == pytest.approx(float(writes), rel=1e-9)  # only this test writes on sonnet
    assert series["cache_read"] == pytest.approx(second.read * 0.30 / 10**6, rel=1e-9)
    # 1h writes at 6.00 vs 5m at 3.75 per 1M: the same prefix costs 1.6x as much to write for an hour
    assert float(want.write_1h * Decimal("6.00") / (first.write_5m * Decimal("3.75"))) == pytest.approx(1.6, rel=0.01)


def test_a_long_context_request_is_priced_at_the_tier_for_all_its_tokens(gw: Gw) -> None:
    words = "governance " * 180_000  # ~180K local tokens, ~210K as the provider counts them
    resp = gw.client().messages.with_raw_response.create(
        model=SONNET, max_tokens=CAP, messages=messages(words), extra_body={"mock": {"output_tokens": 11}}
    )
    msg = resp.parse()
    assert total_input(msg.usage.model_dump()) > 200_000
    row = row_of(gw, "app", resp.headers["x-quotagate-request-id"])
    assert row.cost_micro_usd == hand_cost(SONNET, msg.usage.model_dump(), long=True)
    assert row.cost_micro_usd > hand_cost(SONNET, msg.usage.model_dump()) * 1.9


def test_streams_sync_and_async_are_billed_from_the_last_running_total(gw: Gw) -> None:
    state = State(MockConfig())
    with gw.client().messages.stream(
        model=HAIKU, max_tokens=CAP, messages=messages("stream it"), extra_body={"mock": {"output_tokens": 12}}
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
        rid = stream.response.headers["x-quotagate-request-id"]
    want = expected_prompt(state, None, messages("stream it"), HAIKU)
    assert final.usage.output_tokens == 12 and final.usage.input_tokens == want.total and len(text.split()) == 12
    row = row_of(gw, "app", rid)
    assert row.stream and (row.input_tokens, row.output_tokens) == (want.total, 12)
    assert row.cost_micro_usd == hand_cost(HAIKU, final.usage.model_dump())

    async def run() -> tuple[int, str]:
        async with (
            gw.aclient() as client,
            client.messages.stream(
                model=HAIKU, max_tokens=CAP, messages=messages("async"), extra_body={"mock": {"output_tokens": 5}}
            ) as stream,
        ):
            out = 0
            async for event in stream:
                if event.type == "message_delta":
                    out = event.usage.output_tokens
            return out, stream.response.headers["x-quotagate-request-id"]

    out, rid = asyncio.run(run())
    assert out == 5
    assert row_of(gw, "app", rid).output_tokens == 5


def test_a_stream_cut_before_its_usage_is_charged_what_was_relayed(gw: Gw) -> None:
    client = gw.client()
    with (
        pytest.raises(anthropic.APIStatusError) as broke,  # quotagate ends the cut stream with an error event
        client.messages.stream(
            model=HAIKU,
            max_tokens=CAP,
            messages=messages("cut"),
            extra_body={"mock": {"output_tokens": 15, "cut_after": 6}},
        ) as stream,
    ):
        for _ in stream.text_stream:
            pass
    assert broke.value.body == {
        "type": "error",
        "error": {"type": "api_error", "message": "The upstream stream broke: ClientPayloadError."},
    }
    row = wait_until(
        lambda: [r for r in ledger(gw.store, "app") if r.output_tokens is None and r.counted_output][:1], 10
    )[0]
    assert row.counted_output == 6 and row.input_tokens is not None and row.cost_micro_usd > 0


def test_tools_come_back_as_tool_use_and_are_counted(gw: Gw) -> None:
    tools: list[ToolParam] = [
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
        }
    ]
    resp = gw.client().messages.with_raw_response.create(
        model=HAIKU, max_tokens=CAP, tools=tools, messages=messages("Weather in Paris?")
    )
    msg = resp.parse()
    assert msg.stop_reason == "tool_use" and msg.content[0].type == "tool_use"
    assert msg.content[0].input == {"city": "lorem"}
    row = row_of(gw, "app", resp.headers["x-quotagate-request-id"])
    assert row.counted_input == local_count(None, messages("Weather in Paris?"), tools, model=HAIKU)
    assert row.cost_micro_usd == hand_cost(HAIKU, msg.usage.model_dump())


def test_count_tokens_is_the_providers_count_and_free(gw: Gw) -> None:
    counted = gw.client().messages.count_tokens(model=HAIKU, messages=messages("how many?"))
    want = prompt_of(State(MockConfig()), {"model": HAIKU, "messages": messages("how many?")}, HAIKU, cache=False)
    assert counted.input_tokens == want.total
    row = row_of(gw, "app", endpoint="messages.count_tokens")
    assert (row.cost_micro_usd, row.charged, row.status) == (0, False, 200)


# -- refusals, as the SDK's exception classes ------------------------------------------------------------


def test_refusals_arrive_in_anthropics_shape_as_the_sdks_exceptions(gw: Gw) -> None:
    with pytest.raises(anthropic.RateLimitError) as budget:
        gw.client("sk-broke", max_retries=2).messages.create(model=SONNET, max_tokens=1000, messages=messages())
    refused = budget.value.response.json()
    assert set(refused) == {"type", "error"} and refused["type"] == "error"
    assert refused["error"]["type"] == "rate_limit_error" and "budget" in refused["error"]["message"]
    assert budget.value.response.headers["x-should-retry"] == "false"  # so the SDK did not retry it
    assert [r.outcome for r in ledger_rows(gw.store, "broke", 1)] == ["budget_exceeded"]  # one request, no retry

    client = gw.client("sk-rpm")
    client.messages.create(model=HAIKU, max_tokens=CAP, messages=messages())
    with pytest.raises(anthropic.RateLimitError) as rpm:
        client.messages.create(model=HAIKU, max_tokens=CAP, messages=messages())
    assert rpm.value.response.json()["error"]["type"] == "rate_limit_error"
    assert int(rpm.value.response.headers["retry-after"]) >= 1

    with pytest.raises(anthropic.BadRequestError) as ctx:
        gw.client("sk-capped").messages.create(model=HAIKU, max_tokens=CAP, messages=messages("long " * 200))
    body = ctx.value.response.json()
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert "max_input_tokens" in body["error"]["message"]

    with pytest.raises(anthropic.AuthenticationError) as auth:
        gw.client("sk-nope").messages.create(model=HAIKU, max_tokens=CAP, messages=messages())
    assert auth.value.response.json()["error"]["type"] == "authentication_error"

    with pytest.raises(anthropic.NotFoundError) as missing:
        gw.client("sk-openai_only").messages.create(model=HAIKU, max_tokens=CAP, messages=messages())
    assert missing.value.response.json()["error"]["type"] == "not_found_error"

    with pytest.raises(anthropic.OverloadedError):  # the provider's own error, relayed in its shape
        gw.client().messages.create(
            model=HAIKU, max_tokens=CAP, messages=messages(), extra_body={"mock": {"status": 529}}
        )


def test_metadata_user_id_names_the_end_user_whose_budget_holds(gw: Gw) -> None:
    """Anthropic's ``metadata.user_id`` is the end user (issue 13): held by the team's default budget for any
    end user (1 token: nothing fits), refused in Anthropic's shape naming them, recorded; a request naming no
    end user is governed by the other levels only (here none)."""
    client = gw.client("sk-per_user")
    with pytest.raises(anthropic.RateLimitError) as e:
        client.messages.create(model=HAIKU, max_tokens=CAP, messages=messages(), metadata={"user_id": "u-9"})
    err = e.value.response.json()["error"]
    assert err["type"] == "rate_limit_error" and "The budget of end user 'u-9' in team 'per_user'" in err["message"]
    client.messages.create(model=HAIKU, max_tokens=CAP, messages=messages())
    rows = ledger_rows(gw.store, "per_user", 2)
    assert sorted((r.end_user or "", r.outcome) for r in rows) == [("", "ok"), ("u-9", "budget_exceeded")]


def test_a_bearer_token_authenticates_too(gw: Gw) -> None:
    # recent SDKs send auth_token as `Authorization: Bearer`
    client = anthropic.Anthropic(base_url=gw.gw.url, auth_token="sk-app", max_retries=0)
    assert client.messages.create(model=HAIKU, max_tokens=CAP, messages=messages()).usage.output_tokens > 0


# -- the pre-count bound, learned from traffic -----------------------------------------------------------


CORPUS = [
    "Short question?",
    "Explain the difference between a budget and a rate limit in two sentences.",
    "def f(x):\n    return {k: v for k, v in x.items() if v is not None}\n" * 5,
    "Les budgets sont comptés en micro-dollars entiers. " * 8,
    "数字と記号: 1234567890 !@#$%^&*() " * 6,
    "A " * 300,
    "The quick brown fox jumps over the lazy dog. " * 20,
    'tool_result: {"rows": [1, 2, 3], "ok": true}' * 10,
    "Summarise: " + "lorem ipsum dolor sit amet " * 40,
    "What is 2+2?",
]


def _factor(gw: Gw, model: str) -> float:
    text = httpx.get(gw.gw.url + "/metrics", timeout=10).text
    m = re.search(rf'^quotagate_precount_factor\{{model="{model}"\}} (\S+)$', text, re.M)
    assert m, text[-2000:]
    return float(m.group(1))


def test_the_learned_factor_never_reserves_less_than_the_provider_counts(gw: Gw) -> None:
    client = gw.client("sk-learn")
    assert _factor(gw, HAIKU) == 1.5  # configured, before any traffic
    for text in CORPUS:  # learn
        client.messages.create(model=HAIKU, max_tokens=CAP, messages=messages(text))
    highest = max_ratio(gw)  # waits for the ten ledger rows: each request was observed before its row
    factor = _factor(gw, HAIKU)
    assert factor == pytest.approx(max(1.0, 1.02 * highest), rel=1e-6)
    assert factor < 1.5  # tighter than the configured start
    for text in CORPUS:  # every request of the corpus: the bound covers the provider's count
        local = local_count(None, messages(text), model=HAIKU)
        provider = prompt_of(
            State(MockConfig()), {"model": HAIKU, "messages": messages(text)}, HAIKU, cache=False
        ).total
        assert math.ceil(local * factor) >= provider, (text[:30], local, provider, factor)
    assert factor > TOKENIZER_RATIO


def max_ratio(gw: Gw) -> float:
    rows = [r for r in ledger_rows(gw.store, "learn", len(CORPUS)) if r.input_tokens and r.counted_input]
    assert len(rows) == len(CORPUS)
    return max(r.input_tokens / r.counted_input for r in rows if r.input_tokens and r.counted_input)


# -- 200 concurrent requests, exactly K admitted -----------------------------------------------------------


async def test_200_concurrent_messages_admit_exactly_the_budgets_worth(gw: Gw) -> None:
    pool = anthropic.DefaultAsyncHttpxClient(limits=httpx2.Limits(max_connections=220, max_keepalive_connections=220))
    async with anthropic.AsyncAnthropic(
        base_url=gw.gw.url, api_key="sk-burst", max_retries=0, timeout=60, http_client=pool
    ) as client:

        async def one() -> int:
            try:
                await client.messages.create(
                    model=BURST_MODEL,
                    max_tokens=CAP,
                    messages=BURST_MSGS,
                    extra_body={"mock": {"output_tokens": CAP, "delay_s": 3}},
                )
            except anthropic.RateLimitError as e:
                assert e.response.json()["error"]["type"] == "rate_limit_error"
                assert e.response.headers["x-should-retry"] == "false"
                return 429
            return 200

        results = await asyncio.gather(*(one() for _ in range(200)))
    assert results.count(200) == K, sorted(results)
    assert results.count(429) == 200 - K
    rows = await asyncio.to_thread(ledger_rows, gw.store, "burst", 200)
    assert sorted(r.outcome for r in rows) == ["budget_exceeded"] * (200 - K) + ["ok"] * K
    provider = prompt_of(State(MockConfig()), {"model": HAIKU, "messages": BURST_MSGS}, HAIKU, cache=False).total
    await asyncio.to_thread(settled, gw.gw, "burst", K * (provider + CAP))
    async with httpx.AsyncClient(timeout=10) as http:
        usage = (await http.get(gw.gw.url + "/admin/usage", params={"team": "burst"}, headers=ADMIN)).json()
    (report,) = usage["teams"][0]["usage"]
    assert (report["requests"], report["input_tokens"], report["output_tokens"]) == (200, K * provider, K * CAP)


def test_a_provider_precount_reserves_the_providers_own_count(gw: Gw) -> None:
    client = gw.client("sk-counted")
    for i in range(3):  # the worst case is the provider's count + the cap: exactly three fit
        client.messages.create(
            model="claude-counted", max_tokens=CAP, messages=COUNTED_MSGS, extra_body={"mock": {"output_tokens": CAP}}
        )
        settled(gw.gw, "counted", (i + 1) * (COUNTED_N + CAP))  # the mock's input is its own count
    with pytest.raises(anthropic.RateLimitError):
        client.messages.create(model="claude-counted", max_tokens=CAP, messages=COUNTED_MSGS)
    rows = ledger_rows(gw.store, "counted", 4)
    assert sorted(r.counted_input or 0 for r in rows) == [COUNTED_N] * 4  # the provider's count, not the local one
    counts = [
        r
        for r in mock_requests(gw.mock)
        if r["path"] == "/v1/messages/count_tokens" and r["body"]["messages"] == COUNTED_MSGS
    ]
    assert counts and counts[-1]["headers"]["x-api-key"] == UPSTREAM_KEY
    assert len(counts) == 1  # the same body is counted once, then from the cache


def test_a_provider_precount_that_does_not_answer_falls_back_to_the_local_bound(gw: Gw) -> None:
    resp = gw.client().messages.with_raw_response.create(
        model="claude-count-fallback", max_tokens=CAP, messages=messages("fallback please")
    )
    row = row_of(gw, "app", resp.headers["x-quotagate-request-id"])
    assert row.counted_input == local_count(None, messages("fallback please"), model=HAIKU)


def test_the_budget_counters_hold_what_the_ledger_charged(gw: Gw) -> None:
    """quotagate's counters equal its ledger: the team's month USD budget (micro-dollars) and day tokens."""
    resp = gw.client().messages.with_raw_response.create(
        model=SONNET,
        max_tokens=CAP,
        system=[
            {"type": "text", "text": SYSTEM_TEXT + " counters", "cache_control": {"type": "ephemeral", "ttl": "1h"}}
        ],
        messages=messages(),
    )
    row_of(gw, "app", resp.headers["x-quotagate-request-id"])

    def both() -> tuple[tuple[int, int], tuple[int, int]] | None:
        """(counters, ledger sums) once nothing is held and every charged row is written."""
        status = budgets(gw.gw, "app")["status"]
        month = next(b for b in status if b["scope"] == "team" and b["window"] == "month")
        day_tokens = next(b for b in status if b["scope"] == "team" and b["window"] == "day")
        rows = [r for r in ledger(gw.store, "app") if r.charged]
        sums = (
            sum(r.cost_micro_usd for r in rows),
            sum((r.input_tokens or r.counted_input or 0) + (r.output_tokens or r.counted_output or 0) for r in rows),
        )
        held = month["reserved"] or day_tokens["reserved"]
        return (
            ((month["used"], day_tokens["used"]), sums)
            if not held and sums == (month["used"], day_tokens["used"])
            else None
        )

    counters, sums = wait_until(both, 10)  # fails after 10 s if the counters and the ledger never agree
    assert counters == sums and sums[0] > 0

"""Service tiers (issue 11.7), in process: tier prices from the table and the config, the cost of a request at
the tier that served it (hand-computed to the micro-dollar), the worst case reserved for a request's
``service_tier``, the tier read from OpenAI bodies and streams and Anthropic usage, the refusal of an unpriced
tier where a budget applies, and the ledger column on an older SQLite file."""

from __future__ import annotations

import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest

from proxy import errors, policy, sse, tiers
from proxy.mock.config import Controls, parse_controls
from proxy.mock.text import served_tier
from proxy.mock.wire import BadRequest
from proxy.pricing import Price, price_of
from proxy.protocols import ENDPOINTS
from proxy.protocols.anthropic_messages import AnthropicMessages
from proxy.protocols.anthropic_stream import AnthropicTap
from proxy.settings import ConfigError, Settings, parse
from proxy.usage import Usage, from_anthropic, from_openai

PRIORITY_GPT5 = {"input": "2.50", "cached_input": "0.25", "output": "20.00"}


def settings(models: dict[str, Any]) -> Settings:
    return parse(
        {
            "providers": {"mock": {"base_url": "http://127.0.0.1:9000/v1", "api_key": "sk-up"}},
            "models": {name: {"provider": "mock", **entry} for name, entry in models.items()},
        },
        env={},
    )


def price(model: str, **entry: Any) -> Price:
    return price_of(settings({model: entry}).models[model])


def gpt5_with_priority() -> Price:
    return price(
        "gpt-5",
        price={
            "input": "1.25",
            "cached_input": "0.125",
            "output": "10.00",
            "tiers": {
                "flex": {"input": "0.625", "cached_input": "0.0625", "output": "5.00"},
                "priority": PRIORITY_GPT5,
            },
        },
    )


# ---- prices: the table, the config, validation -----------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "flex"),
    [
        ("gpt-5", ("0.625", "0.0625", "5.00")),
        ("gpt-5-mini", ("0.125", "0.0125", "1.00")),
        ("gpt-5-nano", ("0.025", "0.0025", "0.20")),
        ("o3", ("1.00", "0.25", "4.00")),
        ("o4-mini", ("0.55", "0.1375", "2.20")),
    ],
)
def test_the_table_prices_flex_at_half_of_every_standard_rate(model: str, flex: tuple[str, str, str]) -> None:
    p = settings({model: {}}).models[model].price
    assert p is not None
    tier = p.tiers["flex"]
    assert (tier.input, tier.cached_input, tier.output) == tuple(Decimal(v) for v in flex)
    assert tier.cached_input is not None
    assert (tier.input * 2, tier.cached_input * 2, tier.output * 2) == (p.input, p.cached_input, p.output)
    assert "priority" not in p.tiers  # no exact figure in the source: no price


def test_models_without_flex_in_the_table_have_no_tiers() -> None:
    for model in ("gpt-4o", "gpt-4.1", "claude-sonnet-4-5", "gemini-2.5-pro"):
        p = settings({model: {}}).models[model].price
        assert p is not None and p.tiers == {}


def test_a_configs_own_price_replaces_the_tables_tiers_with_its_own() -> None:
    s = settings({"gpt-5": {"price": {"input": 1, "output": 8, "tiers": {"priority": {"input": 2, "output": 16}}}}})
    p = s.models["gpt-5"].price
    assert p is not None and set(p.tiers) == {"priority"}
    own = settings({"gpt-5": {"price": {"input": 1, "output": 8}}}).models["gpt-5"].price
    assert own is not None and own.tiers == {}


@pytest.mark.parametrize(
    ("tiers_given", "says"),
    [
        ({"default": {"input": 1, "output": 2}}, "`default` is not a tier of its own"),
        ({"standard": {"input": 1, "output": 2}}, "`standard` is not a tier of its own"),
        ({"auto": {"input": 1, "output": 2}}, "`auto` is not a tier of its own"),
        ({"fast": {"input": 1, "output": 2}}, "`fast` is priced as `priority`"),
        ({"Priority": {"input": 1, "output": 2}}, "tier name 'Priority'"),
        ({"priority": {"input": 1}}, "models.gpt-5.price.tiers.priority.output"),
        ({"priority": {"input": -1, "output": 2}}, "models.gpt-5.price.tiers.priority.input"),
        ({"priority": {"input": 1, "output": 2, "speed": 3}}, "models.gpt-5.price.tiers.priority.speed"),
    ],
)
def test_tier_prices_are_validated_with_the_key_path(tiers_given: dict[str, Any], says: str) -> None:
    with pytest.raises(ConfigError) as e:
        settings({"gpt-5": {"price": {"input": 1, "output": 8, "tiers": tiers_given}}})
    assert says in str(e.value)
    assert str(e.value).startswith("models.gpt-5.price.tiers")


# ---- cost at the tier served, hand-computed (USD per 1M tokens = micro-USD per token) ----------------------


def test_gpt5_flex_costs_half_of_standard_to_the_micro_dollar() -> None:
    p = price("gpt-5")
    # 8000 fresh x 0.625 + 2000 cached x 0.0625 + 1000 out x 5.00 = 5000 + 125 + 5000
    flex = Usage(input=10_000, cached_input=2_000, output=1_000, tier="flex")
    assert p.cost(flex) == 10_125
    # standard: 8000 x 1.25 + 2000 x 0.125 + 1000 x 10.00 = 10000 + 250 + 10000
    for standard in (None, "default", "standard", "auto", "on_demand"):
        assert p.cost(Usage(input=10_000, cached_input=2_000, output=1_000, tier=standard)) == 20_250
    assert sum(p.parts(flex).values()) == 10_125 * 1_000_000  # pico-USD, exact here
    assert p.parts(flex) == {
        "input": 5_000_000_000,
        "cache_read": 125_000_000,
        "cache_write": 0,
        "output": 5_000_000_000,
    }


def test_o4_mini_flex_rounds_up_once_per_request() -> None:
    p = price("o4-mini")
    # 600 x 0.55 + 400 x 0.1375 + 333 x 2.20 = 330 + 55 + 732.6 = 1117.6 -> 1118
    assert p.cost(Usage(input=1_000, cached_input=400, output=333, tier="flex")) == 1_118
    # 600 x 1.10 + 400 x 0.275 + 333 x 4.40 = 660 + 110 + 1465.2 = 2235.2 -> 2236
    assert p.cost(Usage(input=1_000, cached_input=400, output=333, tier="default")) == 2_236


def test_a_configured_priority_tier_is_charged_at_its_rates() -> None:
    p = gpt5_with_priority()
    # 8000 x 2.50 + 2000 x 0.25 + 1000 x 20.00 = 20000 + 500 + 20000
    assert p.cost(Usage(input=10_000, cached_input=2_000, output=1_000, tier="priority")) == 40_500
    assert p.cost(Usage(input=10_000, cached_input=2_000, output=1_000, tier="flex")) == 10_125


def test_a_tier_without_a_price_is_charged_at_the_standard_rates_and_counted_as_unpriced() -> None:
    p = price("gpt-5")
    used = Usage(input=10_000, cached_input=2_000, output=1_000, tier="priority")
    assert p.cost(used) == 20_250
    assert p.unpriced_tokens(used) == {"tiers.priority": 11_000}
    assert p.unpriced_tokens(Usage(input=10, output=1, tier="turbo-9")) == {"tiers.other": 11}  # bounded label
    assert p.unpriced_tokens(Usage(input=10, output=1, tier="flex")) == {}
    assert p.unpriced_tokens(Usage(input=10, output=1, tier="default")) == {}


def test_the_long_context_tier_applies_to_a_service_tiers_rates() -> None:
    p = price(
        "lc-model",
        price={"input": 1, "cached_input": "0.5", "output": 4, "tiers": {"priority": {"input": 2, "output": 8}}},
        long_context={"above": 1000, "input": 2, "cached_input": 2, "output": "1.5"},
    )
    # above 1000 input tokens: priority 2000 x (2 x 2) + 100 x (8 x 1.5) = 8000 + 1200
    assert p.cost(Usage(input=2_000, cached_input=0, output=100, tier="priority")) == 9_200
    assert p.cost(Usage(input=2_000, cached_input=0, output=100)) == 4_600  # 2000 x 2 + 100 x 6
    assert p.cost(Usage(input=1_000, cached_input=0, output=100, tier="priority")) == 2_800  # 1000 x 2 + 100 x 8
    # a tier's cached input defaults to its own input rate, as the standard tier's does
    assert p.cost(Usage(input=1_000, cached_input=1_000, output=0, tier="priority")) == 2_000


def test_anthropic_priority_prices_cache_reads_and_writes_at_its_own_rates() -> None:
    tier = {"input": 6, "cached_input": "0.6", "cache_write_5m": "7.5", "cache_write_1h": 12, "output": 30}
    p = price(
        "claude-sonnet-4-5",
        price={
            "input": 3,
            "cached_input": "0.3",
            "cache_write_5m": "3.75",
            "cache_write_1h": 6,
            "output": 15,
            "tiers": {"priority": tier},
        },
    )
    usage = {
        "input_tokens": 500,
        "cache_read_input_tokens": 200,
        "cache_creation_input_tokens": 300,
        "cache_creation": {"ephemeral_5m_input_tokens": 300, "ephemeral_1h_input_tokens": 0},
        "output_tokens": 100,
        "service_tier": "priority",
    }
    used = from_anthropic(usage)
    assert used.tier == "priority" and used.input == 1_000
    # 500 x 6 + 200 x 0.6 + 300 x 7.5 + 100 x 30 = 3000 + 120 + 2250 + 3000
    assert p.cost(used) == 8_370
    # standard: 500 x 3 + 200 x 0.3 + 300 x 3.75 + 100 x 15 = 1500 + 60 + 1125 + 1500
    assert p.cost(from_anthropic({**usage, "service_tier": "standard"})) == 4_185


def test_a_tier_without_cache_write_prices_charges_them_at_its_input_rate() -> None:
    p = price(
        "claude-haiku-4-5",
        price={
            "input": 1,
            "cached_input": "0.1",
            "cache_write_5m": "1.25",
            "output": 5,
            "tiers": {"priority": {"input": 2, "cached_input": "0.2", "output": 10}},
        },
    )
    used = Usage(input=1_000, cached_input=0, output=0, cache_write_5m=400, tier="priority")
    assert p.cost(used) == 2_000  # 600 x 2 + 400 x 2 (the tier's input rate)
    assert p.unpriced_tokens(used) == {"cache_write_5m": 400}
    assert p.unpriced_tokens(Usage(input=1_000, cached_input=0, output=0, cache_write_5m=400)) == {}


# ---- the worst case reserved -------------------------------------------------------------------------------


def test_the_worst_case_is_the_dearest_of_standard_and_the_tiers_the_request_may_be_served_at() -> None:
    p = gpt5_with_priority()
    standard, priority = 1_000 * 125 // 100 + 100 * 10, 1_000 * 250 // 100 + 100 * 20  # 2250, 4500
    assert p.worst_case(1_000, 100, service_tier="default") == standard
    assert p.worst_case(1_000, 100, service_tier="standard_only") == standard
    assert p.worst_case(1_000, 100, service_tier="flex") == standard  # flex is cheaper; standard may serve it
    assert p.worst_case(1_000, 100, service_tier="priority") == priority
    assert p.worst_case(1_000, 100, service_tier="auto") == priority  # the account's tier may be priority
    assert p.worst_case(1_000, 100) == priority  # no service_tier: auto
    assert p.worst_case(1_000, 100, service_tier="scale") == standard  # unpriced: only ever admitted unbudgeted
    table = price("gpt-5")  # no priority price: auto is reserved at the standard rates
    assert table.worst_case(1_000, 100) == table.worst_case(1_000, 100, service_tier="priority") == standard


def test_tier_names() -> None:
    assert [tiers.explicit(v) for v in (None, "auto", "default", "standard_only", "", 3, "flex", "priority")] == [
        None, None, None, None, None, None, "flex", "priority",
    ]  # fmt: skip
    assert tiers.reachable("default") == () and tiers.reachable(None) == ("priority", "scale")
    assert tiers.reachable("flex") == ("flex",) and tiers.reachable(["x"]) == ("priority", "scale")
    assert tiers.explicit("fast") == "priority" and tiers.reachable("fast") == ("priority",)  # OpenAI's alias
    assert [tiers.served(v) for v in (None, "default", "standard", "auto", "on_demand", "flex", "batch")] == [
        None, None, None, None, None, "flex", "batch",
    ]  # fmt: skip


# ---- the tier served, read from the response ---------------------------------------------------------------

CHAT_USAGE = {"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17}


def test_a_chat_body_names_its_tier_at_the_top_level() -> None:
    body = {"id": "c1", "object": "chat.completion", "service_tier": "flex", "choices": [], "usage": CHAT_USAGE}
    usage, _, _ = sse.read_body(orjson.dumps(body))
    assert (usage.input, usage.output, usage.tier) == (12, 5, "flex")
    usage, _, _ = sse.read_body(orjson.dumps({**body, "service_tier": None}))
    assert usage.tier is None
    no_usage, _, _ = sse.read_body(orjson.dumps({"id": "c1", "service_tier": "flex", "choices": []}))
    assert not no_usage.known and no_usage.tier == "flex"  # kept for the counted usage


def test_a_responses_body_names_its_tier_on_the_response() -> None:
    body = {
        "id": "resp_1",
        "object": "response",
        "service_tier": "priority",
        "usage": {"input_tokens": 9, "output_tokens": 3, "total_tokens": 12},
    }
    usage, _, _ = sse.read_body(orjson.dumps(body))
    assert (usage.input, usage.output, usage.tier) == (9, 3, "priority")
    assert from_openai(body["usage"]).tier is None


def _chat_stream(tier: str) -> bytes:
    head = {"id": "c1", "object": "chat.completion.chunk", "service_tier": tier, "usage": None}
    events = [
        {**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hi"}, "finish_reason": None}]},
        {**head, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {**head, "choices": [], "usage": CHAT_USAGE},
    ]
    return b"".join(b"data: " + orjson.dumps(e) + b"\n\n" for e in events) + b"data: [DONE]\n\n"


@pytest.mark.parametrize("strip", [False, True])
def test_a_chat_stream_names_its_tier_in_the_usage_chunk(strip: bool) -> None:
    raw = _chat_stream("flex")
    tap = sse.StreamTap(strip_usage_chunk=strip)
    out = b"".join(tap.feed(raw[i : i + 7]) for i in range(0, len(raw), 7)) + tap.finish()
    assert tap.usage is not None and (tap.usage.input, tap.usage.output, tap.usage.tier) == (12, 5, "flex")
    if strip:
        assert b'"usage":{' not in out and out.endswith(b"data: [DONE]\n\n")
    else:
        assert out == raw


def test_a_responses_stream_names_its_tier_in_the_completed_response() -> None:
    done = {
        "type": "response.completed",
        "sequence_number": 3,
        "response": {"id": "resp_1", "service_tier": "default", "usage": {"input_tokens": 4, "output_tokens": 2}},
    }
    raw = b'event: response.created\ndata: {"type":"response.created","response":{"id":"resp_1","usage":null}}\n\n'
    raw += b"event: response.completed\ndata: " + orjson.dumps(done) + b"\n\n"
    tap = sse.StreamTap(strip_usage_chunk=False)
    tap.feed(raw)
    tap.finish()
    assert tap.usage is not None and (tap.usage.input, tap.usage.tier) == (4, "default")


def _anthropic_events(*events: dict[str, Any]) -> bytes:
    return b"".join(b"event: " + e["type"].encode() + b"\ndata: " + orjson.dumps(e) + b"\n\n" for e in events)


def test_an_anthropic_stream_keeps_the_tier_of_message_start() -> None:
    start = {
        "type": "message_start",
        "message": {"id": "msg_1", "usage": {"input_tokens": 20, "output_tokens": 1, "service_tier": "priority"}},
    }
    tap = AnthropicTap()
    tap.feed(_anthropic_events(start))
    assert tap.usage is not None and (tap.usage.input, tap.usage.output, tap.usage.tier) == (20, None, "priority")
    tap.feed(_anthropic_events({"type": "message_delta", "delta": {}, "usage": {"output_tokens": 9}}))
    tap.finish()
    assert tap.usage is not None and (tap.usage.input, tap.usage.output, tap.usage.tier) == (20, 9, "priority")


def test_an_anthropic_body_names_its_tier_in_usage() -> None:
    body = {"id": "msg_1", "type": "message", "usage": {"input_tokens": 3, "output_tokens": 2, "service_tier": "batch"}}
    usage, _, _ = AnthropicMessages().read_answer(orjson.dumps(body))
    assert usage.tier == "batch"


def test_counted_usage_takes_the_asked_tier_only_where_the_response_names_none() -> None:
    assert Usage().or_counted(10, 2, "flex").tier == "flex"
    assert Usage(input=10, output=2, tier="default").or_counted(0, 0, "flex").tier == "default"
    assert Usage().or_counted(10, 2).tier is None


# ---- the request's tier and the refusal --------------------------------------------------------------------


def test_the_requested_tier_is_parsed_on_both_protocols() -> None:
    chat = ENDPOINTS["/v1/chat/completions"].parse(b'{"model": "gpt-5", "messages": [], "service_tier": "flex"}')
    assert chat.service_tier == "flex"
    msgs = ENDPOINTS["/v1/messages"].parse(b'{"model": "m", "messages": [], "service_tier": "standard_only"}')
    assert msgs.service_tier == "standard_only"
    assert ENDPOINTS["/v1/responses"].parse(b'{"model": "m", "input": "x", "service_tier": 7}').service_tier is None


def _refusal(model: str, p: Price, asked: str | None, budgeted: bool) -> errors.ProxyError | None:
    try:
        policy.check_service_tier(model, p, asked, lambda: budgeted)
    except errors.ProxyError as e:
        return e
    return None


def test_an_unpriced_tier_is_refused_400_where_a_budget_applies() -> None:
    err = _refusal("gpt-5", price("gpt-5"), "priority", budgeted=True)
    assert err is not None and err.status == 400
    status, _, body = errors.render(err)
    got = orjson.loads(body)["error"]
    assert status == 400
    assert (got["type"], got["code"], got["param"]) == (
        "invalid_request_error",
        "service_tier_not_priced",
        "service_tier",
    )
    assert "`gpt-5`" in got["message"] and "'priority'" in got["message"]
    assert "models.gpt-5.price.tiers.priority" in got["message"]
    _, _, anthropic_body = AnthropicMessages().render(err)
    assert orjson.loads(anthropic_body)["error"]["type"] == "invalid_request_error"


def test_priced_standard_and_unbudgeted_requests_are_not_refused() -> None:
    def never() -> bool:
        raise AssertionError("budgets need not be looked up")

    p = price("gpt-5")
    for asked in (None, "auto", "default", "standard_only", "flex"):
        policy.check_service_tier("gpt-5", p, asked, never)
    assert _refusal("gpt-5", p, "priority", budgeted=False) is None
    assert _refusal("gpt-5", gpt5_with_priority(), "priority", budgeted=True) is None
    assert _refusal("gpt-5", gpt5_with_priority(), "fast", budgeted=True) is None
    fast = _refusal("gpt-5", p, "fast", budgeted=True)
    assert fast is not None and "models.gpt-5.price.tiers.priority" in fast.message
    assert _refusal("gpt-4o", price("gpt-4o"), "flex", budgeted=True) is not None


# ---- the mock serves the tier asked, or the one it is told to ---------------------------------------------


def test_the_mock_echoes_the_tier_asked_or_serves_the_one_it_is_told() -> None:
    none = Controls()
    assert served_tier({"service_tier": "flex"}, none, "default") == "flex"
    assert served_tier({"service_tier": "fast"}, none, "default") == "priority"
    assert served_tier({"service_tier": "auto"}, none, "default") == "default"
    assert served_tier({}, none, "standard") == "standard"
    assert served_tier({"service_tier": "standard_only"}, none, "standard") == "standard"
    told = parse_controls({"service_tier": "priority"}, {})
    assert served_tier({"service_tier": "flex"}, told, "default") == "priority"
    assert parse_controls(None, {"x-mock-service-tier": "flex"}).service_tier == "flex"
    with pytest.raises(BadRequest):
        parse_controls({"service_tier": 3}, {})


# ---- the ledger column -------------------------------------------------------------------------------------


def test_a_version_2_sqlite_file_gains_the_service_tier_column(tmp_path: Path) -> None:
    from proxy.store import sqlite_ledger
    from proxy.store.sqlite_schema import SCHEMA_VERSION, create_schema

    con = sqlite3.connect(tmp_path / "v2.db")
    con.execute(f"CREATE TABLE ledger ({', '.join(c for c in sqlite_ledger.COLUMNS if c != 'service_tier')})")
    con.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    con.execute("INSERT INTO schema_version VALUES (2)")
    con.commit()
    create_schema(con)
    assert "service_tier" in {r[1] for r in con.execute("PRAGMA table_info(ledger)")}
    assert SCHEMA_VERSION >= 3
    assert con.execute("SELECT version FROM schema_version").fetchone() == (SCHEMA_VERSION,)

"""Prices in integers: pico-USD per token, micro-USD per request rounded up once; long-context tiers."""

from __future__ import annotations

from decimal import Decimal

from proxy.pricing import Price, Rates, price_of
from proxy.settings import LongContextSettings, ModelSettings, PriceSettings, parse
from proxy.usage import Usage


def model(inp: str, out: str, cached: str | None = None, long: LongContextSettings | None = None) -> ModelSettings:
    return ModelSettings(
        provider="p",
        price=PriceSettings(
            input=Decimal(inp), output=Decimal(out), cached_input=None if cached is None else Decimal(cached)
        ),
        long_context=long,
    )


MINI = price_of(model("0.15", "0.60", "0.075"))  # gpt-4o-mini list prices, USD per 1M tokens


def test_rates_are_exact_integers_in_pico_usd() -> None:
    no_writes = frozenset({"cache_write_5m", "cache_write_1h"})  # OpenAI prices no cache writes
    assert Price(Rates(input=150_000, cached_input=75_000, output=600_000), unpriced=no_writes) == MINI
    assert price_of(model("0.0000001", "0")).base.input == 1  # below a pico: rounded up, never to zero


def test_cost_is_integer_micro_usd() -> None:
    cost = MINI.cost(Usage(input=1000, cached_input=0, output=100))
    assert cost == 210 and isinstance(cost, int)  # 1000 * 0.15 + 100 * 0.60
    big = price_of(model("2.50", "10.00")).cost(Usage(input=1_000_000, output=1_000_000))
    assert big == 12_500_000  # $12.50


def test_cost_rounds_up_once_per_request_not_per_token_or_field() -> None:
    assert MINI.cost(Usage(input=1, output=0)) == 1  # 0.15 micro-USD -> 1
    assert MINI.cost(Usage(input=3, output=0)) == 1  # 0.45, not 3 x 1
    assert MINI.cost(Usage(input=1, output=1)) == 1  # 0.15 + 0.60 = 0.75, not 1 + 1
    assert MINI.cost(Usage(input=4, output=1)) == 2  # 0.60 + 0.60 = 1.20 -> 2
    assert MINI.cost(Usage(input=20, output=0)) == 3  # exactly 3.00: no rounding up past an exact value
    assert MINI.cost(Usage(input=0, output=0)) == 0


def test_cached_tokens_are_part_of_input_and_billed_at_the_cached_rate() -> None:
    assert MINI.cost(Usage(input=1000, cached_input=400, output=0)) == 120  # 600 * 0.15 + 400 * 0.075
    # more cached than input (a confused provider) never makes input negative
    assert MINI.cost(Usage(input=100, cached_input=500, output=0)) == MINI.cost(Usage(input=100, cached_input=100))


def test_cached_rate_defaults_to_the_input_rate() -> None:
    p = price_of(model("1", "2"))
    assert p.base.cached_input == p.base.input
    assert p.cost(Usage(input=1000, cached_input=1000)) == p.cost(Usage(input=1000))


def test_unknown_usage_fields_count_as_zero() -> None:
    assert MINI.cost(Usage()) == 0
    assert MINI.cost(Usage(output=10)) == 6


LONG = price_of(
    model(
        "2.50",
        "15.00",
        "0.25",
        LongContextSettings(above=272_000, input=Decimal(2), cached_input=Decimal(2), output=Decimal("1.5")),
    )
)  # gpt-5.4


def test_long_context_tier_applies_to_all_tokens_only_strictly_above() -> None:
    at = Usage(input=272_000, cached_input=0, output=1000)
    assert LONG.cost(at) == 272_000 * 2.5 + 1000 * 15  # == above: base tier
    over = Usage(input=272_001, cached_input=1, output=1000)
    # every token of the request at the long rate: input x2, cached x2, output x1.5
    assert LONG.cost(over) == -(-(272_000 * 5_000_000 + 1 * 500_000 + 1000 * 22_500_000) // 1_000_000)
    assert LONG.rates(272_001) == Rates(input=5_000_000, cached_input=500_000, output=22_500_000)
    assert LONG.rates(272_000) == LONG.base


def test_long_context_threshold_counts_cached_input() -> None:
    # 272,001 input tokens of which 200,000 cached: the tier is decided on all input tokens
    assert LONG.rates(272_001) is LONG.long
    cost = LONG.cost(Usage(input=272_001, cached_input=200_000, output=0))
    assert cost == -(-(72_001 * 5_000_000 + 200_000 * 500_000) // 1_000_000)


def test_worst_case_is_every_output_token_and_no_cache_hits() -> None:
    assert MINI.worst_case(1000, 100) == 210
    assert MINI.worst_case(1, 0) == 1  # rounded up once
    assert MINI.worst_case(0, 0) == 0
    assert LONG.worst_case(272_000, 10) == 272_000 * 2.5 + 10 * 15
    assert LONG.worst_case(272_001, 10) == 272_001 * 5 + 225
    assert isinstance(LONG.worst_case(300_000, 5), int)


def test_price_from_the_table_and_config_override() -> None:
    s = parse(
        {
            "providers": {"p": {"base_url": "http://x"}},
            "models": {
                "gpt-4o-mini": {"provider": "p"},
                "gpt-5.4": {"provider": "p"},
                "cheap": {"provider": "p", "upstream_model": "gpt-4o", "price": {"input": 0, "output": 0}},
            },
        },
        env={},
    )
    assert price_of(s.models["gpt-4o-mini"]) == MINI
    assert price_of(s.models["gpt-5.4"]) == LONG
    assert price_of(s.models["cheap"]).cost(Usage(input=10**6, output=10**6)) == 0


def test_a_model_without_price_costs_nothing_and_says_so() -> None:
    """Only ``unpriced_models: refuse`` loads such a model; its requests are served where no budget applies."""
    price = price_of(ModelSettings(provider="p"))
    assert price.cost(Usage(input=10**6, output=10**6)) == 0 and price.version == "unpriced"

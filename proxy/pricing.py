"""Prices as integers: pico-USD per token in, micro-USD per request out. No I/O.

Rates come from config as USD per 1M tokens, which is numerically micro-USD per token; scaled by 10^6
they are exact integers in pico-USD per token. A request's cost is summed in pico-USD and rounded up to
whole micro-USD once, so that a ledger total and a metrics total built from the same requests agree.
Long-context tiers (conventions.md section 8): when the request's input tokens (cached included) exceed
``above``, the multipliers apply to *all* tokens of that request.

Cache writes (Anthropic) are input tokens at their own rates, by lifetime (5 minutes, 1 hour). A dimension
the price table does not give is charged at the input rate and named in ``Price.unpriced``, so that its
tokens are logged and counted (``quotagate_unpriced_tokens_total``).
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from .settings import ModelSettings
from .usage import Usage

_PICO = Decimal(1_000_000)
SPEND_TYPES = ("input", "cache_read", "cache_write", "output")  # what a request's cost is made of


@dataclass(frozen=True, slots=True)
class Rates:
    input: int  # pico-USD per token
    cached_input: int
    output: int
    cache_write_5m: int = -1  # -1: the input rate (no price of its own)
    cache_write_1h: int = -1

    def write_rates(self) -> tuple[int, int]:
        return (
            self.input if self.cache_write_5m < 0 else self.cache_write_5m,
            self.input if self.cache_write_1h < 0 else self.cache_write_1h,
        )


@dataclass(frozen=True, slots=True)
class Price:
    base: Rates
    long: Rates | None = None
    above: int | None = None
    unpriced: frozenset[str] = frozenset()  # usage dimensions without a price: "cache_write_5m" | "cache_write_1h"

    def rates(self, input_tokens: int) -> Rates:
        if self.long is not None and self.above is not None and input_tokens > self.above:
            return self.long
        return self.base

    def cost(self, usage: Usage) -> int:
        """Micro-USD for what was used; unknown fields count as zero."""
        return -(-sum(self.parts(usage).values()) // 1_000_000)

    def parts(self, usage: Usage) -> dict[str, int]:
        """Pico-USD of ``usage`` by what was bought (``SPEND_TYPES``); they add up to ``cost`` before rounding."""
        inp = usage.input or 0
        cached = min(usage.cached_input or 0, inp)
        w5m = min(usage.cache_write_5m or 0, inp - cached)
        w1h = min(usage.cache_write_1h or 0, inp - cached - w5m)
        r = self.rates(inp)
        rate_5m, rate_1h = r.write_rates()
        return {
            "input": (inp - cached - w5m - w1h) * r.input,
            "cache_read": cached * r.cached_input,
            "cache_write": w5m * rate_5m + w1h * rate_1h,
            "output": (usage.output or 0) * r.output,
        }

    def worst_case(self, input_tokens: int, output_cap: int, *, cache_writes: bool = False) -> int:
        """Micro-USD of the most this request can cost: no cache hits, every allowed output token, and
        (``cache_writes``: the request marks content for the prompt cache) all input written at the dearest
        write rate."""
        r = self.rates(input_tokens)
        in_rate = max(r.input, *r.write_rates()) if cache_writes else r.input
        return -(-(input_tokens * in_rate + output_cap * r.output) // 1_000_000)

    def unpriced_tokens(self, usage: Usage) -> dict[str, int]:
        """Tokens of ``usage`` in a dimension this model has no price for (charged at the input rate)."""
        found = {"cache_write_5m": usage.cache_write_5m or 0, "cache_write_1h": usage.cache_write_1h or 0}
        return {dim: n for dim, n in found.items() if n and dim in self.unpriced}


def _pico(usd_per_million: Decimal) -> int:
    return int((usd_per_million * _PICO).to_integral_value(rounding=ROUND_CEILING))


def price_of(model: ModelSettings) -> Price:
    p = model.price
    if p is None:  # settings refuse such a config; kept for type narrowing
        raise ValueError("model has no price")
    cached = p.cached_input if p.cached_input is not None else p.input
    w5m, w1h = p.cache_write_5m, p.cache_write_1h
    unpriced = frozenset(d for d, v in (("cache_write_5m", w5m), ("cache_write_1h", w1h)) if v is None)

    def rates(scale_in: Decimal, scale_cached: Decimal, scale_write: Decimal, scale_out: Decimal) -> Rates:
        return Rates(
            _pico(p.input * scale_in),
            _pico(cached * scale_cached),
            _pico(p.output * scale_out),
            -1 if w5m is None else _pico(w5m * scale_write),
            -1 if w1h is None else _pico(w1h * scale_write),
        )

    one = Decimal(1)
    base = rates(one, one, one, one)
    lc = model.long_context
    if lc is None:
        return Price(base, unpriced=unpriced)
    long = rates(lc.input, lc.cached_input, lc.cache_write, lc.output)
    return Price(base, long, lc.above, unpriced)

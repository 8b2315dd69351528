"""Prices as integers: pico-USD per token in, micro-USD per request out. No I/O.

Rates come from config as USD per 1M tokens, which is numerically micro-USD per token; scaled by 10^6
they are exact integers in pico-USD per token. A request's cost is summed in pico-USD and rounded up to
whole micro-USD once, so that a ledger total and a metrics total built from the same requests agree.
Long-context tiers (conventions.md section 8): when the request's input tokens (cached included) exceed
``above``, the multipliers apply to *all* tokens of that request.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal

from .settings import ModelSettings
from .usage import Usage

_PICO = Decimal(1_000_000)


@dataclass(frozen=True, slots=True)
class Rates:
    input: int  # pico-USD per token
    cached_input: int
    output: int


@dataclass(frozen=True, slots=True)
class Price:
    base: Rates
    long: Rates | None = None
    above: int | None = None

    def rates(self, input_tokens: int) -> Rates:
        if self.long is not None and self.above is not None and input_tokens > self.above:
            return self.long
        return self.base

    def cost(self, usage: Usage) -> int:
        """Micro-USD for what was used; unknown fields count as zero."""
        inp = usage.input or 0
        cached = min(usage.cached_input or 0, inp)
        r = self.rates(inp)
        pico = (inp - cached) * r.input + cached * r.cached_input + (usage.output or 0) * r.output
        return -(-pico // 1_000_000)

    def worst_case(self, input_tokens: int, output_cap: int) -> int:
        """Micro-USD of the most this request can cost: no cache hits, every allowed output token."""
        r = self.rates(input_tokens)
        return -(-(input_tokens * r.input + output_cap * r.output) // 1_000_000)


def _pico(usd_per_million: Decimal) -> int:
    return int((usd_per_million * _PICO).to_integral_value(rounding=ROUND_CEILING))


def price_of(model: ModelSettings) -> Price:
    p = model.price
    if p is None:  # settings refuse such a config; kept for type narrowing
        raise ValueError("model has no price")
    cached = p.cached_input if p.cached_input is not None else p.input
    base = Rates(_pico(p.input), _pico(cached), _pico(p.output))
    lc = model.long_context
    if lc is None:
        return Price(base)
    long = Rates(_pico(p.input * lc.input), _pico(cached * lc.cached_input), _pico(p.output * lc.output))
    return Price(base, long, lc.above)

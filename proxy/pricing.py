"""Prices as integers: pico-USD per token in, micro-USD per request out. No I/O.

Rates come from config as USD per 1M tokens, which is numerically micro-USD per token; scaled by 10^6
they are exact integers in pico-USD per token. A request's cost is summed in pico-USD and rounded up to
whole micro-USD once, so that a ledger total and a metrics total built from the same requests agree.
Long-context tiers (conventions.md section 8): when the request's input tokens (cached included) exceed
``above``, the multipliers apply to *all* tokens of that request.

Cache writes (Anthropic) are input tokens at their own rates, by lifetime (5 minutes, 1 hour). A dimension
the price table does not give is charged at the input rate and named in ``Price.unpriced``, so that its
tokens are logged and counted (``quotagate_unpriced_tokens_total``).

Service tiers (proxy/tiers.py): a request is priced at the tier the response says served it, each tier at its
own rates (``price.tiers``, with the model's long-context tier applied to them as to the standard rates). A
tier without a price is charged at the standard rates and counted as unpriced (dimension ``tiers.<name>``);
admission refuses to ask for one where a budget needs every request priced.
"""

from __future__ import annotations

import hashlib
from dataclasses import field, replace
from decimal import ROUND_CEILING, Decimal
from typing import Any

import orjson

from . import tiers as service_tiers
from .settings import LongContextSettings, ModelSettings, TierPriceSettings
from .usage import Usage
from .values import value

_PICO = Decimal(1_000_000)
SPEND_TYPES = ("input", "cache_read", "cache_write", "output")  # what a request's cost is made of


@value
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


@value
class Price:
    base: Rates
    long: Rates | None = None
    above: int | None = None
    unpriced: frozenset[str] = frozenset()  # usage dimensions without a price: "cache_write_5m" | "cache_write_1h"
    tiers: tuple[tuple[str, Price], ...] = ()  # the service tiers priced apart from the standard one, by name
    # the price table this came from (``prices.yaml@2026-11-01``), or ``config:<digest>``: provenance, not a
    # rate, so two prices with the same rates are equal whatever their version
    version: str = field(default="", compare=False)

    def rates(self, input_tokens: int) -> Rates:
        if self.long is not None and self.above is not None and input_tokens > self.above:
            return self.long
        return self.base

    def at(self, tier: str | None) -> Price | None:
        """The price at the service tier a response names (None, ``default``, ``standard``...: this one);
        None when the model has no price for that tier."""
        name = service_tiers.served(tier)
        if name is None:
            return self
        return next((price for n, price in self.tiers if n == name), None)

    def served(self, tier: str | None) -> Price:
        """The price charged for a request served at ``tier``: a tier without a price at the standard rates."""
        return self.at(tier) or self

    def cost(self, usage: Usage) -> int:
        """Micro-USD for what was used, at the tier that served it; unknown fields count as zero."""
        return -(-sum(self.parts(usage).values()) // 1_000_000)

    def parts(self, usage: Usage) -> dict[str, int]:
        """Pico-USD of ``usage`` by what was bought (``SPEND_TYPES``), at the tier that served it; they add up
        to ``cost`` before rounding."""
        return self.served(usage.tier)._parts(usage)

    def _parts(self, usage: Usage) -> dict[str, int]:
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

    def worst_case(
        self, input_tokens: int, output_cap: int, *, cache_writes: bool = False, service_tier: Any = None
    ) -> int:
        """Micro-USD of the most this request can cost: no cache hits, every allowed output token, and
        (``cache_writes``: the request marks content for the prompt cache) all input written at the dearest
        write rate; at the dearest of the standard tier and the priced tiers the request's ``service_tier``
        may be served at (the one it names; the account's, for ``auto`` or none: proxy/tiers.py)."""
        found = (self.at(t) for t in service_tiers.reachable(service_tier))
        return max(p._worst(input_tokens, output_cap, cache_writes) for p in (self, *(p for p in found if p)))

    def _worst(self, input_tokens: int, output_cap: int, cache_writes: bool) -> int:
        r = self.rates(input_tokens)
        in_rate = max(r.input, *r.write_rates()) if cache_writes else r.input
        return -(-(input_tokens * in_rate + output_cap * r.output) // 1_000_000)

    def unpriced_tokens(self, usage: Usage) -> dict[str, int]:
        """Tokens of ``usage`` in a dimension this model has no price for: cache writes (charged at the input
        rate), every token of a request served at a tier without a price (``tiers.<name>``: at the standard
        rates)."""
        price = self.at(usage.tier)
        found = {"cache_write_5m": usage.cache_write_5m or 0, "cache_write_1h": usage.cache_write_1h or 0}
        out = {dim: n for dim, n in found.items() if n and dim in (price or self).unpriced}
        if price is None and usage.tier is not None and usage.total:
            out[f"tiers.{service_tiers.label(usage.tier)}"] = usage.total
        return out


def _pico(usd_per_million: Decimal) -> int:
    return int((usd_per_million * _PICO).to_integral_value(rounding=ROUND_CEILING))


UNPRICED = "unpriced"  # the version of an unpriced model's price (``unpriced_models: refuse``)


def price_of(model: ModelSettings) -> Price:
    """The model's price; a model with none (``unpriced_models: refuse``) costs 0 and is versioned
    ``unpriced``, so its ledger rows say so and a budgeted request for it is refused (proxy/policy.py)."""
    p = model.price
    if p is None:
        return Price(Rates(0, 0, 0), version=UNPRICED)
    lc = model.long_context
    tiers = tuple((name, _price(t, lc)) for name, t in sorted(p.tiers.items()))
    return replace(_price(p, lc), tiers=tiers, version=price_version(model))


def price_version(model: ModelSettings) -> str:
    """What a ledger row names its price by: the table's version, or a digest of a price the config sets
    (the same price, the same digest, in every process and release)."""
    if model.price_version is not None:
        return model.price_version
    doc = {"price": model.price.model_dump(mode="json") if model.price else None}
    doc["long_context"] = model.long_context.model_dump(mode="json") if model.long_context else None
    return "config:" + hashlib.sha256(orjson.dumps(doc, option=orjson.OPT_SORT_KEYS)).hexdigest()[:12]


def _price(p: TierPriceSettings, lc: LongContextSettings | None) -> Price:
    """One tier's rates, and the long-context tier's made from them."""
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
    if lc is None:
        return Price(base, unpriced=unpriced)
    long = rates(lc.input, lc.cached_input, lc.cache_write, lc.output)
    return Price(base, long, lc.above, unpriced)

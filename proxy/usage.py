"""Token usage as reported by a provider or counted by quotagate.

Unset is not zero: every field is ``int | None`` so "the provider did not say" stays distinguishable from
"the provider said 0". ``cached_input`` (read from the prompt cache) and the cache writes are part of
``input``, and ``reasoning`` is part of ``output``: OpenAI's semantics (conventions.md section 3), into which
other providers' usage is normalised here, one rule per provider (Anthropic: section 5.1).

The rules, each with its test vector in tests/test_usage_variants.py:

=====================================================  ==============================================
what the provider sends                                 what quotagate takes
=====================================================  ==============================================
OpenAI chat/completions ``prompt_tokens`` ...           input = prompt_tokens (cached included),
                                                        output = completion_tokens (reasoning included)
Responses ``input_tokens``/``output_tokens``            the same, from the Responses names
embeddings: no ``completion_tokens``                    output = 0
``prompt_tokens_details`` or ``cached_tokens``          cached input unknown (None), priced as uncached
absent or null
SGLang: ``reasoning_tokens`` at the top level           reasoning = it
Gemini (OpenAI-compatible): ``total_tokens`` >          the excess is thinking the provider bills as
``prompt_tokens + completion_tokens``                   output: output += excess, reasoning >= excess
usage in the last content chunk (no ``choices: []``)    read from whichever event carries it (sse.py)
a stream without usage (``include_usage`` ignored,      output counted from the text relayed, input
or cut before it)                                       from quotagate's own count (finish.py)
Anthropic ``input_tokens`` + cache read + cache write   input = the three summed, cache writes by
                                                        lifetime (``from_anthropic``)
OpenAI's top-level ``service_tier`` (a chat completion  tier = it, as named (proxy/tiers.py: priced at
or chunk; a Responses ``response``), Anthropic's        it, ``default``/``standard`` at the standard
``usage.service_tier``                                  rates); absent: None
=====================================================  ==============================================
"""

from __future__ import annotations

from typing import Any

from .values import value


@value
class Usage:
    input: int | None = None
    cached_input: int | None = None
    output: int | None = None
    reasoning: int | None = None
    # input written to the prompt cache (Anthropic), by lifetime: priced at their own rates
    cache_write_5m: int | None = None
    cache_write_1h: int | None = None
    tier: str | None = None  # the service tier the response says served it, as named (None: not said)

    @property
    def known(self) -> bool:
        return self.input is not None or self.output is not None

    def or_counted(self, counted_input: int, counted_output: int, asked_tier: str | None = None) -> Usage:
        """The provider's figures where given, quotagate's own counts where not; the tier the request asked
        for (``asked_tier``) where the response names none."""
        return Usage(
            input=self.input if self.input is not None else counted_input,
            cached_input=self.cached_input or 0,
            output=self.output if self.output is not None else counted_output,
            reasoning=self.reasoning or 0,
            cache_write_5m=self.cache_write_5m or 0,
            cache_write_1h=self.cache_write_1h or 0,
            tier=self.tier if self.tier is not None else asked_tier,
        )

    @property
    def total(self) -> int:
        return (self.input or 0) + (self.output or 0)


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def tier_of(value: Any) -> str | None:
    """A ``service_tier`` value as a response gives it (None: absent, null or not a name)."""
    return value if isinstance(value, str) and value else None


def from_openai(usage: Any, service_tier: Any = None) -> Usage:
    """Read a Chat/Completions/Embeddings ``usage`` or a Responses ``usage`` object, and the
    ``service_tier`` of the object that holds it (kept when there is no usage to read)."""
    if not isinstance(usage, dict):
        return Usage(tier=tier_of(service_tier))
    return _openai(usage, tier_of(service_tier))


def _openai(usage: dict[str, Any], tier: str | None) -> Usage:
    if "input_tokens" in usage or "output_tokens" in usage:  # Responses API
        in_details = usage.get("input_tokens_details") or {}
        out_details = usage.get("output_tokens_details") or {}
        return Usage(
            input=_int(usage.get("input_tokens")),
            cached_input=_int(in_details.get("cached_tokens")) if isinstance(in_details, dict) else None,
            output=_int(usage.get("output_tokens")),
            reasoning=_int(out_details.get("reasoning_tokens")) if isinstance(out_details, dict) else None,
            tier=tier,
        )
    p_details = usage.get("prompt_tokens_details") or {}
    c_details = usage.get("completion_tokens_details") or {}
    reasoning = _int(c_details.get("reasoning_tokens")) if isinstance(c_details, dict) else None
    if reasoning is None:  # SGLang puts it at the top level
        reasoning = _int(usage.get("reasoning_tokens"))
    prompt = _int(usage.get("prompt_tokens"))
    completion = _int(usage.get("completion_tokens"))
    if completion is None and prompt is not None:  # embeddings: no completion at all
        completion = 0
    total = _int(usage.get("total_tokens"))
    if total is not None and prompt is not None and completion is not None and total > prompt + completion:
        hidden = total - prompt - completion  # Gemini: thinking billed as output, left out of completion_tokens
        completion += hidden
        reasoning = max(reasoning or 0, hidden)
    return Usage(
        input=prompt,
        cached_input=_int(p_details.get("cached_tokens")) if isinstance(p_details, dict) else None,
        output=completion,
        reasoning=reasoning,
        tier=tier,
    )


def from_anthropic(usage: Any) -> Usage:
    """Anthropic's ``usage`` (a Messages response, or a stream's ``message_start`` usage merged with its
    last ``message_delta``, whose fields are running totals): ``input_tokens`` excludes the cache, so the
    input is ``input_tokens + cache_read_input_tokens + cache_creation_input_tokens``; the cache writes are
    split by lifetime from ``cache_creation`` (5 minutes when it gives no split: the API's default); the
    tier is ``service_tier`` (``standard`` | ``priority`` | ``batch``)."""
    if not isinstance(usage, dict):
        return Usage()
    fresh = _int(usage.get("input_tokens"))
    read = _int(usage.get("cache_read_input_tokens")) or 0
    created = _int(usage.get("cache_creation_input_tokens")) or 0
    split = usage.get("cache_creation")
    w1h = (_int(split.get("ephemeral_1h_input_tokens")) or 0) if isinstance(split, dict) else 0
    w5m = (_int(split.get("ephemeral_5m_input_tokens")) or 0) if isinstance(split, dict) else created
    w5m += max(created - w5m - w1h, 0)  # a total above its split: the rest at the default lifetime
    details = usage.get("output_tokens_details")
    return Usage(
        input=None if fresh is None else fresh + read + w5m + w1h,
        cached_input=read,
        output=_int(usage.get("output_tokens")),
        reasoning=_int(details.get("thinking_tokens")) if isinstance(details, dict) else None,
        cache_write_5m=w5m,
        cache_write_1h=w1h,
        tier=tier_of(usage.get("service_tier")),
    )

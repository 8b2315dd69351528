"""Service tiers by name: which names mean the standard tier, and which tiers a request may be served at.
Pure; no I/O.

A response names the tier that served it: OpenAI's top-level ``service_tier`` (a chat completion, its stream
chunks, a Responses ``response``: ``default`` | ``flex`` | ``priority`` | ``scale``), Anthropic's
``usage.service_tier`` (``standard`` | ``priority`` | ``batch``); Groq calls its standard tier
``on_demand``. A request asks with its own ``service_tier``: OpenAI ``auto`` (the default: the project's
tier, which may be ``priority`` or ``scale``) | ``default`` | ``flex`` | ``priority`` (or ``fast``, its
alias: the response says ``priority``) | ``scale``; Anthropic ``auto`` (the default: priority capacity when
the organisation has it) | ``standard_only``.
"""

from __future__ import annotations

from typing import Any

# what a response calls the standard tier
STANDARD = frozenset({"default", "standard", "auto", "on_demand"})
# request values that ask for the standard tier and nothing else
STANDARD_ONLY = frozenset({"default", "standard", "standard_only", "on_demand"})
# request names of a tier that responses name otherwise
ALIASES = {"fast": "priority"}
# names a price table cannot give to a tier of its own: the standard tier's rates are `price:` itself, and
# an alias is priced as the tier it names
RESERVED = STANDARD | STANDARD_ONLY | frozenset(ALIASES)
# a request that names no tier (or `auto`) may be served at the account's tier: one of these, or standard
AUTO_REACHES = ("priority", "scale")
# the tiers named in metric labels; any other is `other`
LABELLED = frozenset({"flex", "priority", "scale", "batch"})


def served(name: str | None) -> str | None:
    """The tier a response names, None for the standard tier."""
    return None if name is None or name in STANDARD else name


def explicit(asked: Any) -> str | None:
    """The tier other than standard that a request's ``service_tier`` names, else None (absent, ``auto``,
    a standard name, not a string: the provider's to accept or refuse)."""
    if not isinstance(asked, str) or asked == "auto" or asked in STANDARD_ONLY or not asked:
        return None
    return ALIASES.get(asked, asked)


def reachable(asked: Any) -> tuple[str, ...]:
    """The tiers other than standard a request with this ``service_tier`` may be served at."""
    tier = explicit(asked)
    if tier is not None:
        return (tier,)
    if isinstance(asked, str) and asked in STANDARD_ONLY:
        return ()
    return AUTO_REACHES


def label(tier: str) -> str:
    return tier if tier in LABELLED else "other"

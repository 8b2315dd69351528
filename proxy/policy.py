"""A team's request rules: context cap (reject or trim), output cap, model access, a service tier that
has no price. Pure; no I/O.

Trimming drops the oldest conversation turns until the input fits the team's cap. System and developer
messages and the latest user turn (with everything after it) always stay; an assistant message that
called tools leaves together with the tool results that answer it. If it still cannot fit, reject.
Entries that are not message objects are never pinned: they are ordinary droppable turns.

The context-cap refusal uses OpenAI's own wording ("This model's maximum context length is N tokens...")
so that clients that pattern-match on it (LiteLLM's ContextWindowExceededError, LangChain) recognise it,
and names the team cap after it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from . import tiers
from .errors import ContextLengthExceeded, InvalidRequest, ModelNotFound
from .parse import Endpoint
from .pricing import UNPRICED, Price
from .protocols import ENDPOINTS
from .settings import MODE_ENDPOINTS, ModelSettings, Settings, TeamSettings
from .values import value

_PINNED = frozenset({"system", "developer"})
FALLBACK_OUTPUT_CAP = 4096
# Output a request cannot produce is never reserved: a cap of 2**64 would only overflow the stores' integers.
# Bound by the model's context window, else by this (no model's window comes near it).
MAX_RESERVED_OUTPUT = 2**31 - 1


def check_model(settings: Settings, team: TeamSettings | None, model: str) -> ModelSettings:
    m = settings.models.get(model)
    if m is None or (team is not None and team.models is not None and model not in team.models):
        raise ModelNotFound(model)
    return m


def check_tags(team_name: str, team: TeamSettings | None, tags: str | None) -> None:
    """A team with an allow-list of tags refuses any other tag (else a client could escape a tag budget by
    naming a tag of its own): 400 naming the tag and what is allowed."""
    allowed = team.tags.allowed if team is not None else None
    if allowed is None or tags is None:
        return
    stray = [t for t in tags.split(",") if t not in allowed]
    if stray:
        raise InvalidRequest(
            f"The tag '{stray[0]}' (x-quotagate-tags) is not allowed for team '{team_name}'; allowed: "
            f"{', '.join(allowed) or 'none'} (quotagate: teams.{team_name}.tags.allowed).",
            code="tag_not_allowed",
        )


def check_mode(name: str, model: ModelSettings, endpoint: Endpoint) -> None:
    """A model declared (or known from the price table) to serve other endpoints: 400 naming both."""
    if model.mode is None or endpoint.name in MODE_ENDPOINTS[model.mode]:
        return
    serves = " and ".join(path for path, e in ENDPOINTS.items() if e.name in MODE_ENDPOINTS[model.mode])
    raise InvalidRequest(
        f"The model `{name}` is a {model.mode} model and is not served on /v1{endpoint.path}; "
        f"use it on {serves} (quotagate: models.{name}.mode).",
        param="model",
        code="model_not_supported",
    )


def check_priced(name: str, price: Price, budgeted: Callable[[], bool]) -> None:
    """A model with no price (``unpriced_models: refuse``), for a request a budget governs: 400. Served, at a
    cost of 0, where no budget applies."""
    if price.version != UNPRICED or not budgeted():
        return
    raise InvalidRequest(
        f"The model `{name}` has no price, and a budget applies to this request, so every request must be "
        f"priced. Use a priced model, or have this one priced (quotagate: models.{name}.price: {{input, output}}; "
        "0 for a self-hosted model).",
        param="model",
        code="model_not_priced",
    )


def check_service_tier(name: str, price: Price, asked: str | None, budgeted: Callable[[], bool]) -> None:
    """A request that names a service tier the model has no price for, on a team or key with a budget
    (``budgeted``, asked only then): 400 naming the model, the tier and the config key that prices it.
    Without budgets it is forwarded as it is (and charged at the standard rates if served at that tier)."""
    tier = tiers.explicit(asked)
    if tier is None or price.at(tier) is not None or not budgeted():
        return
    named = f"'{tier}'" if asked == tier else f"'{asked}' ({tier})"
    raise InvalidRequest(
        f"The model `{name}` has no price for service_tier {named}, and a budget applies to this request, so "
        f"every request must be priced. Leave service_tier out (or send 'auto'), or have it priced "
        f"(quotagate: models.{name}.price.tiers.{tier}).",
        param="service_tier",
        code="service_tier_not_priced",
    )


@value
class OutputCap:
    worst_case: int  # output tokens to reserve
    send: int | None  # value to write into the request's cap field(s), None = leave the body alone


def output_cap(
    requested: int | None,
    team: TeamSettings | None,
    model: ModelSettings,
    default_cap: int | None,
    input_tokens: int,
) -> OutputCap:
    """Output tokens to reserve, and the cap to write into the body (the team's, when it clamps or injects).

    The reservation never exceeds what the model could produce (its context window): a larger cap is
    forwarded as the client sent it, for the provider to accept or refuse."""
    cap = _output_cap(requested, team, model, default_cap, input_tokens)
    return OutputCap(min(cap.worst_case, model.context_window or MAX_RESERVED_OUTPUT), cap.send)


def _output_cap(
    requested: int | None,
    team: TeamSettings | None,
    model: ModelSettings,
    default_cap: int | None,
    input_tokens: int,
) -> OutputCap:
    team_cap = team.max_output_tokens if team is not None else None
    if team_cap is not None:
        if requested is None or requested > team_cap:
            return OutputCap(team_cap, team_cap)  # injected when absent, clamped when larger
        return OutputCap(requested, None)
    if requested is not None:
        return OutputCap(requested, None)
    if default_cap is not None:
        return OutputCap(default_cap, None)
    if model.max_output_tokens is not None:
        return OutputCap(model.max_output_tokens, None)
    if model.context_window is not None:
        return OutputCap(max(model.context_window - input_tokens, 0), None)
    return OutputCap(FALLBACK_OUTPUT_CAP, None)


def unseen_input_bound(team: TeamSettings | None, model: ModelSettings) -> int:
    """Input tokens to reserve in all when part of the input is out of sight (a stored conversation, a
    stored prompt, no prompt field): the model's context window, capped by the team's max_input_tokens.
    0 when neither is known: then only what was counted is reserved, and settlement relies on the
    provider's usage."""
    bounds = [b for b in (model.context_window, team.max_input_tokens if team is not None else None) if b]
    return min(bounds) if bounds else 0


def _too_long(team_name: str, cap: int, tokens: int, param: str) -> ContextLengthExceeded:
    return ContextLengthExceeded(
        f"This model's maximum context length is {cap} tokens. However, your messages resulted in {tokens} "
        f"tokens. Please reduce the length of the messages. (quotagate: team '{team_name}' allows at most "
        f"{cap} input tokens per request, max_input_tokens.)",
        param=param,
    )


def _role(message: Any) -> str | None:
    role = message.get("role") if isinstance(message, dict) else None
    return role if isinstance(role, str) else None


def _turn_groups(messages: list[Any]) -> tuple[list[list[int]], int]:
    """Droppable groups of message indexes, oldest first, and the index of the latest user turn."""
    roles = [_role(m) for m in messages]
    last_user = max((i for i, r in enumerate(roles) if r == "user"), default=len(messages) - 1)
    groups: list[list[int]] = []
    i = 0
    while i < last_user:
        m = messages[i]
        if roles[i] in _PINNED:
            i += 1
            continue
        group = [i]
        if roles[i] == "assistant" and m.get("tool_calls"):
            j = i + 1
            while j < last_user and roles[j] == "tool":
                group.append(j)
                j += 1
            i = j
        else:
            i += 1
        groups.append(group)
    return groups, last_user


def trim(
    team_name: str,
    cap: int,
    messages: list[Any],
    count: Callable[[list[Any]], int],
) -> tuple[list[Any], int, int]:
    """Drop the oldest turns until ``count(messages) <= cap``: (kept messages, new count, tokens dropped)."""
    original = count(messages)
    if original <= cap:
        return messages, original, 0
    groups, _ = _turn_groups(messages)
    dropped: set[int] = set()
    tokens = original
    for group in groups:
        dropped.update(group)
        # A tool result whose call was dropped earlier would be rejected upstream: it goes too.
        kept = [m for i, m in enumerate(messages) if i not in dropped]
        tokens = count(kept)
        if tokens <= cap:
            return kept, tokens, original - tokens
    raise _too_long(team_name, cap, tokens, "messages")


def enforce_context(
    team_name: str,
    team: TeamSettings | None,
    tokens: int,
    messages: list[Any] | None,
    count: Callable[[list[Any]], int],
    *,
    param: str = "messages",
) -> tuple[list[Any] | None, int, int]:
    """(messages to send or None if unchanged, input tokens, trimmed tokens) or ContextLengthExceeded.

    ``messages`` is None when the prompt cannot be trimmed (not a chat, or not an array); ``param`` names
    the prompt field in the refusal."""
    if team is None or team.max_input_tokens is None or tokens <= team.max_input_tokens:
        return None, tokens, 0
    if team.on_context_overflow == "reject" or messages is None:
        raise _too_long(team_name, team.max_input_tokens, tokens, param)
    kept, new_tokens, trimmed = trim(team_name, team.max_input_tokens, messages, count)
    return kept, new_tokens, trimmed

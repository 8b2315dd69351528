"""The deterministic output (one token per word), the request fields it depends on, and usage objects."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from proxy.encodings import encoding_name_for_model

from .config import Controls
from .state import State
from .wire import BadRequest

# Every word is a single token in cl100k_base and o200k_base, alone and in any concatenation
# (checked in tests): the first token is "Lorem", then " word" pieces cycling through _WORDS.
_FIRST = "Lorem"
_WORDS = tuple(
    " " + w
    for w in (  # noqa: SIM905
        "lorem ipsum dolor sit amet consectetur adipiscing elit sed do eiusmod tempor incididunt ut labore"
        " et dolore magna aliqua the quick brown fox jumps over lazy dog"
    ).split()
)


@lru_cache(maxsize=512)
def output_pieces(n: int) -> tuple[str, ...]:
    """The N one-token pieces of the deterministic output text."""
    if n <= 0:
        return ()
    return (_FIRST, *(_WORDS[i % len(_WORDS)] for i in range(1, n)))


@lru_cache(maxsize=512)
def output_text(n: int) -> str:
    return "".join(output_pieces(n))


@dataclass(frozen=True, slots=True)
class Plan:
    pieces: tuple[str, ...]
    finish: str  # stop | length | tool_calls
    prompt: int
    completion: int
    cached: int
    reasoning: int
    tool_call: tuple[str, str] | None = None  # (call id, function name)

    @property
    def text(self) -> str:
        return "".join(self.pieces)


def int_field(body: Mapping[str, Any], *names: str) -> int | None:
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise BadRequest(f"Invalid '{name}': expected a non-negative integer.", name)
        return value
    return None


def plan_text(state: State, body: Mapping[str, Any], ctl: Controls, prompt: int, cap_fields: tuple[str, ...]) -> Plan:
    cap = int_field(body, *cap_fields)
    n = ctl.output_tokens if ctl.output_tokens is not None else state.config.default_output_tokens
    truncated = cap is not None and cap < n
    if truncated and cap is not None:
        n = cap
    pieces = output_pieces(n)
    return Plan(
        pieces=pieces,
        finish="length" if truncated else "stop",
        prompt=prompt,
        completion=n + ctl.reasoning_tokens,
        cached=ctl.cached_tokens,
        reasoning=ctl.reasoning_tokens,
    )


def served_tier(body: Mapping[str, Any], ctl: Controls, standard: str) -> str:
    """The tier the answer says served it: ``mock.service_tier``, else the tier the request names (OpenAI's
    flex, priority, scale), else the standard tier's name (``default`` on OpenAI, ``standard`` on Anthropic)."""
    if ctl.service_tier is not None:
        return ctl.service_tier
    asked = body.get("service_tier")
    if isinstance(asked, str) and asked not in ("", "auto", "default", "standard", "standard_only"):
        return "priority" if asked == "fast" else asked  # OpenAI: fast is priority
    return standard


def encoding_for(model: str) -> str:
    return encoding_name_for_model(model) or "o200k_base"


def model_of(body: Mapping[str, Any]) -> str:
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("you must provide a model parameter", "model")
    return model


def fingerprint(body: Mapping[str, Any]) -> str:
    seed = body.get("seed")
    return "fp_mock" if seed is None else f"fp_mock{seed}"


def stream_flags(body: Mapping[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream") is True
    options = body.get("stream_options")
    if options is not None and not stream:
        raise BadRequest("The 'stream_options' parameter is only allowed when 'stream' is enabled.", "stream_options")
    return stream, isinstance(options, dict) and options.get("include_usage") is True


def chat_usage(plan: Plan) -> dict[str, Any]:
    return {
        "prompt_tokens": plan.prompt,
        "completion_tokens": plan.completion,
        "total_tokens": plan.prompt + plan.completion,
        "prompt_tokens_details": {"cached_tokens": plan.cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": plan.reasoning,
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def responses_usage(plan: Plan) -> dict[str, Any]:
    return {
        "input_tokens": plan.prompt,
        "input_tokens_details": {"cached_tokens": plan.cached, "cache_write_tokens": 0},
        "output_tokens": plan.completion,
        "output_tokens_details": {"reasoning_tokens": plan.reasoning},
        "total_tokens": plan.prompt + plan.completion,
    }

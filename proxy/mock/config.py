"""The mock's configuration and the per-request controls (fault modes) read from the body or headers."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .wire import BadRequest


@dataclass(frozen=True, slots=True)
class MockConfig:
    ttft_per_1k_input_s: float = 0.0  # latency model: time to first token proportional to input tokens
    base_ttft_s: float = 0.0
    tpot_s: float = 0.0  # fixed time per output token (streams pace chunks by this)
    default_output_tokens: int = 16
    api_key: str | None = None  # if set, require `Authorization: Bearer <api_key>`
    tokenizer: str | None = None  # a tokenizer.json: POST /tokenize, and prompt usage counted with it


@dataclass(frozen=True, slots=True)
class Controls:
    """Per-request behaviour, from the body's ``mock`` object or ``x-mock-<name>`` headers."""

    status: int | None = None  # answer with this HTTP status and an error body
    error_shape: str = "openai"  # openai | vllm | sglang | anthropic | azure (content filter) | text
    cut_after: int | None = None  # streams: abort the connection after this many content chunks
    error_after: int | None = None  # streams: in-band error after this many content chunks
    delay_s: float = 0.0  # sleep before the response headers
    output_tokens: int | None = None  # replaces default_output_tokens (still capped by max_tokens)
    no_usage: bool = False  # omit usage entirely
    cached_tokens: int = 0
    reasoning_tokens: int = 0  # added to completion tokens (reasoning is part of them)
    tpot_s: float | None = None
    service_tier: str | None = None  # the tier the response says served it, whatever the request asked


NO_CONTROLS = Controls()
ERROR_SHAPES = frozenset({"openai", "vllm", "sglang", "anthropic", "azure", "text"})
_INTS = frozenset({"status", "cut_after", "error_after", "output_tokens", "cached_tokens", "reasoning_tokens"})
_FLOATS = frozenset({"delay_s", "tpot_s"})
_HEADER_PREFIX = "x-mock-"


def _as_int(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise BadRequest(f"mock.{name} must be an integer", f"mock.{name}")
    try:
        result = int(value)
    except ValueError:
        raise BadRequest(f"mock.{name} must be an integer", f"mock.{name}") from None
    if result < 0:
        raise BadRequest(f"mock.{name} must be >= 0", f"mock.{name}")
    return result


def _as_float(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise BadRequest(f"mock.{name} must be a number", f"mock.{name}")
    try:
        result = float(value)
    except ValueError:
        raise BadRequest(f"mock.{name} must be a number", f"mock.{name}") from None
    if not result >= 0:
        raise BadRequest(f"mock.{name} must be >= 0", f"mock.{name}")
    return result


def parse_controls(body_mock: Any, headers: Mapping[str, str]) -> Controls:
    """Merge ``x-mock-<name>`` headers (``-`` or ``_`` in names) with the body's ``mock`` object."""
    raw: dict[str, Any] = {}
    for name, value in headers.items():
        lowered = name.lower()
        if lowered.startswith(_HEADER_PREFIX):
            raw[lowered[len(_HEADER_PREFIX) :].replace("-", "_")] = value
    if body_mock is not None:
        if not isinstance(body_mock, dict):
            raise BadRequest("mock must be an object", "mock")
        raw.update(body_mock)
    if not raw:
        return NO_CONTROLS
    values: dict[str, Any] = {}
    for name, value in raw.items():
        if name in _INTS:
            values[name] = _as_int(name, value)
        elif name in _FLOATS:
            values[name] = _as_float(name, value)
        elif name == "no_usage":
            values[name] = value is True or (isinstance(value, str) and value.lower() in ("1", "true", "yes"))
        elif name == "service_tier":
            if not isinstance(value, str) or not value:
                raise BadRequest("mock.service_tier must be a non-empty string", "mock.service_tier")
            values[name] = value
        elif name == "error_shape":
            if value not in ERROR_SHAPES:
                raise BadRequest(f"mock.error_shape must be one of {sorted(ERROR_SHAPES)}", "mock.error_shape")
            values[name] = value
        else:
            raise BadRequest(f"unknown mock control {name!r}", f"mock.{name}")
    return Controls(**values)

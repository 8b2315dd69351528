"""What the mock app keeps: recorded requests, ids, stored responses, chat completions and conversations."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from aiohttp import web

from proxy.count import Counter

from .config import Controls, MockConfig

if TYPE_CHECKING:
    from proxy.count.hf import HFTokenizer

RECORDED_REQUESTS = 100


@dataclass(slots=True)
class StoredResponse:
    response: dict[str, Any]
    input_items: list[dict[str, Any]]


@dataclass(slots=True)
class StoredCompletion:
    completion: dict[str, Any]
    messages: list[dict[str, Any]]


@dataclass(slots=True)
class Conversation:
    conversation: dict[str, Any]
    items: list[dict[str, Any]]


@dataclass(slots=True)
class State:
    config: MockConfig
    counter: Counter = field(default_factory=Counter)
    requests: deque[dict[str, Any]] = field(default_factory=lambda: deque(maxlen=RECORDED_REQUESTS))
    ids: Iterator[int] = field(default_factory=itertools.count)
    responses: dict[str, StoredResponse] = field(default_factory=dict)
    completions: dict[str, StoredCompletion] = field(default_factory=dict)  # insertion order = created order
    conversations: dict[str, Conversation] = field(default_factory=dict)
    prompt_cache: dict[str, float] = field(default_factory=dict)  # Anthropic prefix digest -> expiry (monotonic)
    tokenizer: HFTokenizer | None = None  # --tokenizer: POST /tokenize, and the counter counts with it


@dataclass(frozen=True, slots=True)
class Ctx:
    body: dict[str, Any]
    controls: Controls


STATE = web.AppKey("mock_state", State)
CTX = web.RequestKey("mock_ctx", Ctx)


def new_id(state: State, prefix: str) -> str:
    return f"{prefix}mock{next(state.ids):010x}"


def input_items(state: State, value: Any) -> list[dict[str, Any]]:
    entries = [{"role": "user", "content": value}] if isinstance(value, str) else value
    items: list[dict[str, Any]] = []
    for entry in entries if isinstance(entries, list) else ():
        if not isinstance(entry, dict):
            continue
        item = {"id": new_id(state, "msg_"), "type": "message", "status": "completed", **entry}
        if isinstance(item.get("content"), str):
            item["content"] = [{"type": "input_text", "text": item["content"]}]
        items.append(item)
    return items

"""OpenAI Chat Completions: ``messages`` + ``tools``, the one protocol whose input a team's context cap may
trim (oldest turns first, proxy/policy.py); stored only with ``store: true``."""

from __future__ import annotations

from typing import Any

from ..count import Counter, Estimate
from ..parse import Endpoint, ParsedRequest
from .openai import OpenAIAdapter


class Chat(OpenAIAdapter):
    stream_usage_option = True

    async def count(self, counter: Counter, req: ParsedRequest, *, model: str, encoding: str | None) -> Estimate:
        return await counter.achat(req.body.get("messages"), req.body.get("tools"), model=model, encoding=encoding)

    def messages(self, req: ParsedRequest) -> list[Any] | None:
        messages = req.body.get("messages")
        return messages if isinstance(messages, list) else None  # only an array can be trimmed

    def count_messages(
        self, counter: Counter, req: ParsedRequest, messages: list[Any], *, model: str, encoding: str | None
    ) -> Estimate:
        return counter.chat(messages, req.body.get("tools"), model=model, encoding=encoding)

    def stored(self, req: ParsedRequest) -> bool:
        return req.body.get("store") is True  # OpenAI keeps a chat completion only when asked to


CHAT = Endpoint(
    "chat", "/chat/completions", "chat", ("max_completion_tokens", "max_tokens"), "messages", protocol=Chat()
)
ROUTES = {"/v1/chat/completions": CHAT}

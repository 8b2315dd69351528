"""OpenAI (legacy) Completions: ``prompt`` as text, texts or token ids; 16 output tokens when uncapped."""

from __future__ import annotations

from ..count import Counter, Estimate
from ..parse import Endpoint, ParsedRequest
from .openai import OpenAIAdapter


class Completions(OpenAIAdapter):
    stream_usage_option = True

    async def count(self, counter: Counter, req: ParsedRequest, *, model: str, encoding: str | None) -> Estimate:
        return await counter.acompletion(req.body.get("prompt"), model=model, encoding=encoding)


COMPLETIONS = Endpoint(
    "completions", "/completions", "text_completion", ("max_tokens",), "prompt", protocol=Completions(), default_cap=16
)
ROUTES = {"/v1/completions": COMPLETIONS}

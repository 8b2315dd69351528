"""OpenAI Embeddings: ``input`` counted, no output, nothing to cap, no stream."""

from __future__ import annotations

from ..count import Counter, Estimate
from ..parse import Endpoint, ParsedRequest
from .openai import OpenAIAdapter


class Embeddings(OpenAIAdapter):
    async def count(self, counter: Counter, req: ParsedRequest, *, model: str, encoding: str | None) -> Estimate:
        return await counter.aembeddings(req.body.get("input"), model=model, encoding=encoding)


EMBEDDINGS = Endpoint("embeddings", "/embeddings", "embeddings", (), "input", protocol=Embeddings(), has_output=False)
ROUTES = {"/v1/embeddings": EMBEDDINGS}

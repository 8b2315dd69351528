"""Each model with a ``tokenizer`` (``models.X.tokenizer``) gets its own Counter at boot, which the pipeline
picks by model (``Counter.for_model``) and hands to the endpoint's adapter as it would the shared one:

* ``kind: huggingface``: ``proxy.count.hf.TokenizerCounter``, offline, exact where the chat template rendered.
* ``kind: server``: ``ServerCounter``, the provider's own server counts (vLLM's ``POST /tokenize``: the chat
  form with the messages, tools and ``add_generation_prompt``; the prompt form for completions and
  embeddings), over the gateway's upstream session. A timeout, an error or an answer without ``count``
  falls back to the local count (the bundled encoding, inexact), logged once per model. Trimming a
  conversation to a team's context cap recounts locally (the counts it compares are synchronous).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from .count import Counter, Estimate, Parts
from .settings import ProviderSettings, Settings
from .settings_tokenizer import TokenizerSettings
from .upstream import Upstream

log = logging.getLogger("quotagate")
_MAX_PROMPTS = 16  # a batch of more prompts than this is counted locally rather than in as many calls


def server_root(base_url: str) -> str:
    """The server's root, where vLLM serves /tokenize: ``base_url`` less a trailing ``/v1``."""
    return base_url[: -len("/v1")] if base_url.endswith("/v1") else base_url


class ServerCounter(Counter):
    """``kind: server``: counts from the provider's tokenize route, the local count when it does not answer."""

    def __init__(
        self,
        shared: Counter,
        *,
        name: str,
        provider: ProviderSettings,
        tokenizer: TokenizerSettings,
        upstream: Upstream,
    ) -> None:
        super().__init__(shared=shared)
        self._name = name
        self._server = provider.model_copy(update={"base_url": server_root(provider.base_url)})
        self._t = tokenizer
        self._upstream = upstream
        self._warned = False

    async def _ask(self, body: dict[str, Any]) -> int | None:
        answer = await self._upstream.post_json(self._server, self._t.route, body, self._t.timeout_s)
        count = answer.get("count") if isinstance(answer, dict) else None
        if type(count) is int and count >= 0:
            return count
        if not self._warned:
            self._warned = True
            log.warning(
                "model %s: %s%s gave no token count within %.2f s; counting locally (inexact) when it does not",
                self._name, self._server.base_url, self._t.route, self._t.timeout_s,
            )  # fmt: skip
        return None

    def chat(self, messages: Any, tools: Any, *, model: str, encoding: str | None) -> Estimate:
        return _inexact(super().chat(messages, tools, model=model, encoding=encoding))

    async def achat(self, messages: Any, tools: Any, *, model: str, encoding: str | None) -> Estimate:
        body: dict[str, Any] = {
            "model": model, "messages": messages, "add_generation_prompt": self._t.add_generation_prompt,
        }  # fmt: skip
        if tools:
            body["tools"] = tools
        asked = asyncio.ensure_future(self._ask(body))
        local = await super().achat(messages, tools, model=model, encoding=encoding)  # parts, and the fallback
        return _with_total(local, await asked)

    async def acompletion(self, prompt: Any, *, model: str, encoding: str | None) -> Estimate:
        texts = [prompt] if isinstance(prompt, str) else prompt
        if not (isinstance(texts, list) and 0 < len(texts) <= _MAX_PROMPTS and all(isinstance(t, str) for t in texts)):
            return await super().acompletion(prompt, model=model, encoding=encoding)  # token ids, or a large batch
        asked = asyncio.gather(*(self._ask({"model": model, "prompt": t}) for t in texts))
        local = await super().acompletion(prompt, model=model, encoding=encoding)
        counts = await asked
        return _with_total(local, None if None in counts else sum(c for c in counts if c is not None))


def _inexact(est: Estimate) -> Estimate:
    return Estimate(est.tokens, False, est.parts)


def _with_total(local: Estimate, total: int | None) -> Estimate:
    """The server's count with the local count's parts scaled to it; the local count (inexact) without one."""
    if total is None:
        return _inexact(local)
    p, n = local.parts, max(local.tokens, 1)
    system, tools, history = p.system * total // n, p.tools * total // n, p.history * total // n
    return Estimate(total, True, Parts(system, tools, history, total - system - tools - history))


def install(counter: Counter, settings: Settings, upstream: Upstream) -> None:
    """Give every model with a ``tokenizer`` its own Counter (``counter.for_model(name)`` from now on)."""
    for name, model in settings.models.items():
        t = model.tokenizer
        if t is None:
            continue
        if t.kind == "huggingface":
            from .count.hf import TokenizerCounter, load  # tokenizers and jinja2, for the models that use them

            assert t.path is not None  # TokenizerSettings requires it
            hf = load(t.path, t.chat_template, add_generation_prompt=t.add_generation_prompt)
            counter.use(name, TokenizerCounter(counter, hf))
        else:
            provider = settings.providers[model.provider]
            counter.use(name, ServerCounter(counter, name=name, provider=provider, tokenizer=t, upstream=upstream))

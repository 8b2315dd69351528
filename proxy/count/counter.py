"""The Counter: plans a prompt into cacheable slots (a message, an input item, the tools), looks them up
in one go, counts the misses (in a thread when they are large) and sums them into an ``Estimate``."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Hashable
from typing import Any

import orjson

from proxy.encodings import EncodingUnavailable, encoding_name_for_model, get_encoding

from ..values import value
from . import anthropic
from .cache import LRU, CacheStats, Slot
from .context import Counted, Ctx, count_plain
from .images import image_profile_for_model
from .messages import count_item, count_message
from .tools import FUNC_INIT_CL100K, FUNC_INIT_O200K, count_tools

REPLY_PRIMER = 3
FALLBACK_ENCODING = "o200k_base"
THREAD_THRESHOLD_CHARS = 16_384  # below this the ~50 us thread hop costs more than it saves
_SYSTEM_ROLES = frozenset({"system", "developer"})
_SIMPLE_KEYS = frozenset({"role", "content", "name"})


@value
class Parts:
    """What the prompt is made of; the four add up to ``Estimate.tokens - Estimate.unseen``."""

    system: int  # system/developer messages (+ their per-message overhead)
    tools: int  # tool/function definitions
    history: int  # earlier turns (everything before the latest user turn, except system)
    new: int  # the latest user turn and anything after it (+ the reply primer)
    history_messages: int = 0  # how many messages ``history`` is made of (0: none, or not known)


@value
class Estimate:
    tokens: int
    exact: bool  # False when the tokenizer is unknown or some part (image, audio, file...) was guessed
    parts: Parts
    unseen: int = 0  # reserved for input quotagate cannot see (stored context); in tokens, in no part
    local: int | None = None  # the count before a pre-count factor scaled it up (proxy/precount.py)

    def with_unseen(self, bound: int) -> Estimate:
        """Part of the input is out of sight: reserve up to ``bound`` input tokens in all, inexact."""
        unseen = max(bound - self.tokens, 0)
        return Estimate(self.tokens + unseen, False, self.parts, self.unseen + unseen, self.local)


def _resolve(model: str, encoding: str | None) -> tuple[str, bool]:
    name = encoding or encoding_name_for_model(model)
    if name is None:
        return FALLBACK_ENCODING, False
    try:
        get_encoding(name)
    except EncodingUnavailable:
        return FALLBACK_ENCODING, False
    return name, True


def buckets_for(roles: list[str | None]) -> list[str]:
    """system for system/developer; new from the latest user turn on (all of it when there is none)."""
    last_user = max((i for i, role in enumerate(roles) if role == "user"), default=0)
    return [
        "system" if role in _SYSTEM_ROLES else ("new" if i >= last_user else "history") for i, role in enumerate(roles)
    ]


def _role(message: Any) -> str | None:
    role = message.get("role") if isinstance(message, dict) else None
    return role if isinstance(role, str) else None


class Counter:
    """Prompt/output token counter with a per-message LRU cache; safe to share across threads."""

    def __init__(self, *, cache_bytes: int = 64 * 1024 * 1024, shared: Counter | None = None) -> None:
        # ``shared``: a model's own Counter (proxy/count/hf.py) shares the gateway's cache and model table
        self._cache: LRU = shared._cache if shared is not None else LRU(cache_bytes)
        self._models: dict[str, Counter] = shared._models if shared is not None else {}

    def use(self, model: str, counter: Counter) -> None:
        """Count the configured model ``model`` with ``counter`` (its own tokenizer) from now on."""
        self._models[model] = counter

    def for_model(self, model: str) -> Counter:
        """The Counter of a configured model: the one ``use`` gave it, else this one."""
        return self._models.get(model, self)

    @property
    def stats(self) -> CacheStats:
        return self._cache.stats()

    # -- public, sync ------------------------------------------------------------------------------

    def chat(self, messages: Any, tools: Any, *, model: str, encoding: str | None) -> Estimate:
        ctx, slots = self._plan_chat(messages, tools, model, encoding)
        return self._finish(ctx, slots)

    def responses(
        self,
        input: Any,
        instructions: Any,
        tools: Any,
        *,
        model: str,
        encoding: str | None,
    ) -> Estimate:
        ctx, slots = self._plan_responses(input, instructions, tools, model, encoding)
        return self._finish(ctx, slots)

    def anthropic(self, system: Any, messages: Any, tools: Any, *, model: str, encoding: str | None) -> Estimate:
        """An Anthropic Messages request (``proxy.count.anthropic``): always inexact (no public tokenizer)."""
        ctx, slots = self._plan_anthropic(system, messages, tools, model, encoding)
        est = self._finish(ctx, slots, primer=0)
        return Estimate(est.tokens, False, est.parts)

    def completion(self, prompt: Any, *, model: str, encoding: str | None) -> Estimate:
        ctx = self._ctx(model, encoding)
        tokens, exact = count_plain(prompt, ctx.n)
        return Estimate(tokens, exact and ctx.known, Parts(0, 0, 0, tokens))

    def embeddings(self, input: Any, *, model: str, encoding: str | None) -> Estimate:
        return self.completion(input, model=model, encoding=encoding)

    def text(self, text: str, *, encoding: str | None) -> int:
        name = encoding if encoding in ("cl100k_base", "o200k_base", "o200k_harmony") else FALLBACK_ENCODING
        return len(get_encoding(name).encode_ordinary(text))

    # -- public, async: the uncached work goes to a thread only when it is large -------------------

    async def achat(self, messages: Any, tools: Any, *, model: str, encoding: str | None) -> Estimate:
        ctx, slots = self._plan_chat(messages, tools, model, encoding)
        if sum(s.size for s in slots if s.value is None) > THREAD_THRESHOLD_CHARS:
            return await asyncio.to_thread(self._finish, ctx, slots)
        return self._finish(ctx, slots)

    async def aresponses(
        self,
        input: Any,
        instructions: Any,
        tools: Any,
        *,
        model: str,
        encoding: str | None,
    ) -> Estimate:
        ctx, slots = self._plan_responses(input, instructions, tools, model, encoding)
        if sum(s.size for s in slots if s.value is None) > THREAD_THRESHOLD_CHARS:
            return await asyncio.to_thread(self._finish, ctx, slots)
        return self._finish(ctx, slots)

    async def aanthropic(self, system: Any, messages: Any, tools: Any, *, model: str, encoding: str | None) -> Estimate:
        ctx, slots = self._plan_anthropic(system, messages, tools, model, encoding)
        if sum(s.size for s in slots if s.value is None) > THREAD_THRESHOLD_CHARS:
            est = await asyncio.to_thread(self._finish, ctx, slots, 0)
        else:
            est = self._finish(ctx, slots, primer=0)
        return Estimate(est.tokens, False, est.parts)

    async def acompletion(self, prompt: Any, *, model: str, encoding: str | None) -> Estimate:
        if _plain_size(prompt) > THREAD_THRESHOLD_CHARS:
            return await asyncio.to_thread(self.completion, prompt, model=model, encoding=encoding)
        return self.completion(prompt, model=model, encoding=encoding)

    async def aembeddings(self, input: Any, *, model: str, encoding: str | None) -> Estimate:
        return await self.acompletion(input, model=model, encoding=encoding)

    # -- internals ---------------------------------------------------------------------------------

    def _ctx(self, model: str, encoding: str | None) -> Ctx:
        name, known = _resolve(model, encoding)
        enc = get_encoding(name)
        cache = self._cache

        def n(text: str) -> int:
            cache.add_encoded(len(text))
            return len(enc.encode_ordinary(text))

        func_init = FUNC_INIT_CL100K if name == "cl100k_base" else FUNC_INIT_O200K
        return Ctx(name, enc, known, image_profile_for_model(model), func_init, n)

    @staticmethod
    def _slot(ctx: Ctx, bucket: str, tag: str, obj: Any, count: Callable[[Ctx, Any], Counted]) -> Slot:
        key: Hashable | None
        if (
            type(obj) is dict
            and obj.keys() <= _SIMPLE_KEYS
            and type(obj.get("content")) is str
            and isinstance(obj.get("role"), str)
            and isinstance(obj.get("name", ""), str)
        ):
            # Plain text message: a tuple of the strings themselves, no serialisation; shared by
            # chat and responses (the rule is the same for both), not with Anthropic's (its own rule).
            role, content, name = obj["role"], obj["content"], obj.get("name")
            key = ("am" if tag == "a" else "m", ctx.enc_name, role, name, content)
            size = len(content) + len(role) + len(name or "")
        else:
            try:
                raw = orjson.dumps(obj)
            except TypeError:  # not JSON (a caller's own objects): count, don't cache
                key, size = None, len(str(obj))
            else:
                key, size = (tag, ctx.enc_name, ctx.images.name, raw), len(raw)
        return Slot(bucket, key, size, count, obj)

    def _plan_chat(self, messages: Any, tools: Any, model: str, encoding: str | None) -> tuple[Ctx, list[Slot]]:
        ctx = self._ctx(model, encoding)
        if not isinstance(messages, list):  # not an array: one odd "message", counted as its JSON text
            messages = [] if messages is None else [messages]
        buckets = buckets_for([_role(m) for m in messages])
        slots = [self._slot(ctx, bucket, "j", m, count_message) for bucket, m in zip(buckets, messages, strict=True)]
        if tools is not None and tools != []:
            slots.append(self._slot(ctx, "tools", "f", tools, count_tools))
        self._cache.lookup(slots)
        return ctx, slots

    def _plan_responses(
        self, input: Any, instructions: Any, tools: Any, model: str, encoding: str | None
    ) -> tuple[Ctx, list[Slot]]:
        ctx = self._ctx(model, encoding)
        items: list[Any]
        if isinstance(input, list):
            items = list(input)
        else:  # a string is one user message; absent input (stored context only) is no item at all
            items = [] if input is None else [{"role": "user", "content": input}]
        roles = [_role(item) if isinstance(item, dict) else "user" for item in items]
        if instructions is not None and instructions != "":
            items.insert(0, {"role": "system", "content": instructions})
            roles.insert(0, "system")
        slots = [
            self._slot(ctx, bucket, "r", item, count_item)
            for bucket, item in zip(buckets_for(roles), items, strict=True)
        ]
        if tools is not None and tools != []:
            slots.append(self._slot(ctx, "tools", "f", tools, count_tools))
        self._cache.lookup(slots)
        return ctx, slots

    def _plan_anthropic(
        self, system: Any, messages: Any, tools: Any, model: str, encoding: str | None
    ) -> tuple[Ctx, list[Slot]]:
        ctx = self._ctx(model, encoding)
        if not isinstance(messages, list):
            messages = [] if messages is None else [messages]
        buckets = buckets_for([_role(m) for m in messages])
        slots = [
            self._slot(ctx, bucket, "a", m, anthropic.count_message)
            for bucket, m in zip(buckets, messages, strict=True)
        ]
        if system is not None:
            slots.insert(0, self._slot(ctx, "system", "as", system, anthropic.count_system))
        if tools is not None and tools != []:
            slots.append(self._slot(ctx, "tools", "at", tools, anthropic.count_tools))
        self._cache.lookup(slots)
        return ctx, slots

    def _finish(self, ctx: Ctx, slots: list[Slot], primer: int = REPLY_PRIMER) -> Estimate:
        sums = {"system": 0, "tools": 0, "history": 0, "new": primer}
        exact = ctx.known
        for slot in slots:
            value = slot.value
            if value is None:
                value = slot.count(ctx, slot.obj)
                if slot.key is not None:
                    self._cache.put(slot.key, value, slot.size)
            sums[slot.bucket] += value[0]
            exact = exact and value[1]
        turns = sum(1 for slot in slots if slot.bucket == "history")
        parts = Parts(sums["system"], sums["tools"], sums["history"], sums["new"], turns)
        return Estimate(parts.system + parts.tools + parts.history + parts.new, exact, parts)


def _plain_size(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(len(v) for v in value if isinstance(v, str))
    return 0


def count_chat_parts(counter: Counter, messages: Any, tools: Any, *, model: str, encoding: str | None) -> Parts:
    """The partition of a chat prompt: system / tools / history / new (see ``Parts``)."""
    return counter.chat(messages, tools, model=model, encoding=encoding).parts

"""A self-hosted model's own tokenizer: a Hugging Face ``tokenizer.json`` (the ``tokenizers`` library, no
network) with the model's chat template, counted as vLLM's ``POST /tokenize`` counts (conventions 5.3).

* Chat: the messages (and tools) rendered by the chat template with ``add_generation_prompt``, the text
  encoded with ``add_special_tokens=False`` (the template writes its own BOS). Exact when the template
  rendered and every content part is text; otherwise (no template, a template that refused the request,
  images...) the JSON text of the messages and tools is counted with the model's tokenizer, inexact.
* Completions / embeddings: each prompt encoded with ``add_special_tokens=True`` (the tokenizer's
  post-processor adds BOS/EOS as the server does); token-id arrays count their length.

The template is the config's ``chat_template`` (a file or the template itself), else ``chat_template.jinja``
beside ``tokenizer.json``, else the ``chat_template`` of the ``tokenizer_config.json`` beside it (a string,
or named templates: ``tool_use`` when the request has tools, else ``default``); the special tokens the
template may name (``bos_token``, ``eos_token``...) come from that ``tokenizer_config.json``.

A rendered prompt is one text, so a count is not cached per message as the Counter does: whole requests
are (a re-sent or trimmed request costs one hash), and parts are attributed from the token offsets: the
template text before a message's content goes with that message, the generation prompt with the latest
turn, and with tools the largest run of template text (their definitions) is the tools part.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
from bisect import bisect_left
from collections import OrderedDict
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson
from jinja2.exceptions import SecurityError
from tokenizers import Tokenizer

from .context import Counted, count_plain, dumps
from .counter import THREAD_THRESHOLD_CHARS, Counter, Estimate, Parts, buckets_for
from .template import ChatTemplate, TemplateFailure, tool_dicts

_SPECIAL = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")
_PROBE = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}]
_CACHED_REQUESTS = 1024


class TokenizerError(ValueError):
    """A tokenizer or chat template that cannot be used; ``key`` names the config key at fault."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key


class HFTokenizer:
    """A model's tokenizer and chat templates; thread-safe (``tokenizers`` encodes without shared state)."""

    def __init__(
        self, tokenizer: Tokenizer, templates: dict[str, ChatTemplate], *, add_generation_prompt: bool = True
    ) -> None:
        self.tokenizer = tokenizer
        self.templates = templates  # "default", and "tool_use" where the model has one
        self.add_generation_prompt = add_generation_prompt
        self._cache: OrderedDict[bytes, Estimate] = OrderedDict()
        self._lock = threading.Lock()

    def template_for(self, tools: Any) -> ChatTemplate | None:
        if tools and "tool_use" in self.templates:
            return self.templates["tool_use"]
        return self.templates.get("default")

    def ids(self, text: str, *, special: bool) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=special).ids)

    def render(self, messages: Any, tools: Any, *, add_generation_prompt: bool | None = None) -> tuple[str, bool]:
        """The prompt text of a chat and whether its content was all text; raises ``TemplateFailure``
        (a missing template as a ``TypeError``)."""
        template = self.template_for(tools)
        if template is None:
            raise TypeError("the model has no chat template")
        conv, text_only = template.conversation(messages)
        agp = self.add_generation_prompt if add_generation_prompt is None else add_generation_prompt
        return template.render(conv, tool_dicts(tools), add_generation_prompt=agp), text_only

    # -- counting -----------------------------------------------------------------------------------------

    def chat(self, messages: Any, tools: Any) -> Estimate:
        key, _, hit = self.lookup(messages, tools)
        return hit if hit is not None else self.count_chat(key, messages, tools)

    def lookup(self, messages: Any, tools: Any) -> tuple[bytes | None, int, Estimate | None]:
        """(cache key, size of the request's JSON text, the cached count or None)."""
        try:
            raw = orjson.dumps([messages, tools])
        except TypeError:  # not JSON (a caller's own objects): counted, not cached
            return None, 0, None
        key = hashlib.blake2b(raw, digest_size=16).digest()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
        return key, len(raw), hit

    def count_chat(self, key: bytes | None, messages: Any, tools: Any) -> Estimate:
        est = self._chat(messages, tools)
        if key is not None:
            with self._lock:
                self._cache[key] = est
                if len(self._cache) > _CACHED_REQUESTS:
                    self._cache.popitem(last=False)
        return est

    def _chat(self, messages: Any, tools: Any) -> Estimate:
        try:
            text, text_only = self.render(messages, tools)
        except TemplateFailure:  # no template, or one that refused this request: a guess, as JSON text
            tokens = len(self.ids(dumps(messages), special=False)) + (
                len(self.ids(dumps(tools), special=False)) if tools else 0
            )
            return Estimate(tokens, False, Parts(0, 0, 0, tokens))
        enc = self.tokenizer.encode(text, add_special_tokens=False)
        parts = _attribute(text, [o[0] for o in enc.offsets], messages, bool(tools))
        return Estimate(len(enc.ids), text_only, parts)

    def prompt(self, value: Any) -> Counted:
        """A completions prompt or embeddings input, with the tokenizer's special tokens."""
        return count_plain(value, lambda text: len(self.tokenizer.encode(text).ids))


def _attribute(text: str, starts: Sequence[int], messages: Any, has_tools: bool) -> Parts:
    """Split the tokens of a rendered chat into parts (see the module doc); they add up to the total."""
    total = len(starts)
    roles = [m.get("role") if isinstance(m, dict) else None for m in messages]
    buckets = buckets_for(roles)
    sums = {"system": 0, "tools": 0, "history": 0, "new": 0}
    cursor, done = 0, 0  # characters matched so far; tokens attributed so far
    gaps: list[tuple[int, str]] = []
    for m, bucket in zip(messages, buckets, strict=True):
        content = m.get("content") if isinstance(m, dict) else None
        if not isinstance(content, str) or not content or (at := text.find(content, cursor)) < 0:
            continue  # no text, or not found as is: its tokens go with the next message's
        first, end = bisect_left(starts, at), bisect_left(starts, at + len(content))
        gaps.append((first - done, bucket))
        sums[bucket] += end - done
        cursor, done = at + len(content), end
    sums["new"] += total - done
    if has_tools and gaps:
        size, bucket = max(gaps)
        sums[bucket] -= size
        sums["tools"] += size
    return Parts(sums["system"], sums["tools"], sums["history"], sums["new"])


# -- loading ----------------------------------------------------------------------------------------------


def _read_json(path: Path, key: str) -> Any:
    try:
        return json.loads(path.read_text())
    except OSError as e:
        raise TokenizerError(key, f"cannot read {path}: {e.strerror}") from None
    except ValueError as e:
        raise TokenizerError(key, f"{path} is not JSON: {e}") from None


def _token_text(value: Any) -> Any:
    return value.get("content") if isinstance(value, dict) else value


def _template_sources(path: Path, chat_template: str | None, config: Any) -> dict[str, str]:
    if chat_template is not None:
        if "{{" in chat_template or "{%" in chat_template:
            return {"default": chat_template}
        try:
            return {"default": Path(chat_template).read_text()}
        except OSError as e:
            raise TokenizerError("chat_template", f"cannot read {chat_template}: {e.strerror}") from None
    beside = path.parent / "chat_template.jinja"
    if beside.is_file():
        return {"default": beside.read_text()}
    found = config.get("chat_template") if isinstance(config, dict) else None
    if isinstance(found, str):
        return {"default": found}
    if isinstance(found, list):  # named templates: [{"name": "default", "template": ...}, {"name": "tool_use"...}]
        named = {t["name"]: t["template"] for t in found if isinstance(t, dict) and "name" in t and "template" in t}
        if named and "default" not in named:
            named["default"] = next(iter(named.values()))
        return {k: v for k, v in named.items() if isinstance(v, str)}
    return {}


def _compile(name: str, source: str, special: dict[str, Any]) -> ChatTemplate:
    try:
        template = ChatTemplate(source, special)
    except TemplateFailure as e:
        raise TokenizerError("chat_template", f"the {name} chat template does not compile: {e}") from None
    try:  # a trial render: what the sandbox refuses would be refused on every request
        template.render(template.conversation(_PROBE)[0], None, add_generation_prompt=True)
    except SecurityError as e:
        raise TokenizerError("chat_template", f"the sandbox refused the {name} chat template: {e}") from None
    except TemplateFailure:
        pass  # raise_exception() on the probe conversation (e.g. no system role): the template is usable
    return template


@lru_cache(maxsize=16)
def _load(path: str, stamp: tuple[int, int], chat_template: str | None, add_generation_prompt: bool) -> HFTokenizer:
    p = Path(path)
    try:
        tok = Tokenizer.from_file(path)
    except Exception as e:  # tokenizers raises its own Exception type
        raise TokenizerError("path", f"{path} is not a tokenizer.json the tokenizers library loads: {e}") from None
    tok.no_truncation()
    tok.no_padding()
    beside = p.parent / "tokenizer_config.json"
    config = _read_json(beside, "path") if beside.is_file() else {}
    special = {k: _token_text(config[k]) for k in _SPECIAL if isinstance(config, dict) and k in config}
    sources = _template_sources(p, chat_template, config)
    templates = {name: _compile(name, src, special) for name, src in sources.items()}
    return HFTokenizer(tok, templates, add_generation_prompt=add_generation_prompt)


def load(path: str, chat_template: str | None = None, *, add_generation_prompt: bool = True) -> HFTokenizer:
    """The tokenizer at ``path`` (an absolute tokenizer.json) with its chat template; raises ``TokenizerError``.
    Loaded once per file version: the config check at boot and the gateway share it."""
    try:
        st = Path(path).stat()
    except OSError as e:
        raise TokenizerError("path", f"cannot read {path}: {e.strerror}") from None
    return _load(path, (st.st_mtime_ns, st.st_size), chat_template, add_generation_prompt)


class TokenizerCounter(Counter):
    """The Counter of a model with its own tokenizer: chat, completions and embeddings by ``HFTokenizer``;
    the Responses and Anthropic protocols as the shared Counter counts them (its cache shared)."""

    def __init__(self, shared: Counter, tokenizer: HFTokenizer) -> None:
        super().__init__(shared=shared)
        self.hf = tokenizer

    def chat(self, messages: Any, tools: Any, *, model: str, encoding: str | None) -> Estimate:
        return self.hf.chat(messages, tools)

    async def achat(self, messages: Any, tools: Any, *, model: str, encoding: str | None) -> Estimate:
        key, size, hit = self.hf.lookup(messages, tools)
        if hit is not None:
            return hit
        if size > THREAD_THRESHOLD_CHARS:
            return await asyncio.to_thread(self.hf.count_chat, key, messages, tools)
        return self.hf.count_chat(key, messages, tools)

    def text(self, text: str, *, encoding: str | None) -> int:
        """Generated text the provider reported no usage for: its tokens, no special tokens added."""
        return len(self.hf.ids(text, special=False))

    def completion(self, prompt: Any, *, model: str, encoding: str | None) -> Estimate:
        tokens, exact = self.hf.prompt(prompt)
        return Estimate(tokens, exact, Parts(0, 0, 0, tokens))

    async def acompletion(self, prompt: Any, *, model: str, encoding: str | None) -> Estimate:
        if _size(prompt) > THREAD_THRESHOLD_CHARS:
            return await asyncio.to_thread(self.completion, prompt, model=model, encoding=encoding)
        return self.completion(prompt, model=model, encoding=encoding)


def _size(value: Any) -> int:
    """Characters of text in a prompt (enough to choose a thread)."""
    if isinstance(value, str):
        return len(value)
    return sum(len(v) for v in value if isinstance(v, str)) if isinstance(value, list) else 0


__all__ = ["HFTokenizer", "TokenizerCounter", "TokenizerError", "load"]

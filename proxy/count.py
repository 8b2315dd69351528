"""Prompt tokens, counted offline before a request is forwarded (no I/O).

Rules (conventions.md section 4):

* Chat: the cookbook's ``num_tokens_from_messages`` for every model: 3 tokens per message, the tokens of
  every rendered value (role included), +1 per ``name``, +3 reply primer. Exact for the cookbook vectors
  (129 cl100k / 124 o200k). List content is walked part by part (sum of the parts, no cross-part merges);
  ``tool_calls`` / legacy ``function_call`` count their function name + arguments; ``tool_call_id`` is
  not rendered to the model and is not counted.
* Tools: the cookbook's ``num_tokens_for_tools`` constants (func_init 7 for the o200k family, 10 for
  cl100k). Schema parts the cookbook does not model (nested objects, arrays, non-function tools) are
  counted as their JSON text and make the estimate inexact.
* Images: tile formula (gpt-4o family, o1/o3, gpt-4o-mini constants) or patch formula (gpt-4.1-mini/nano,
  o4-mini, gpt-5 mini/nano). Width/height are read from ``data:`` URL headers (PNG/JPEG/GIF/WebP, stdlib
  only); remote URLs and unreadable data assume 1024x1024 high detail and make the estimate inexact, as
  do patch models, unverified constants, audio and files.
* Responses API: same overhead rule; exact only for plain message items (instructions, string input,
  messages with text parts) -- function calls, their outputs, reasoning and other items are estimates.
* Completions / embeddings: plain token counts, token-id arrays count their length.
* Shapes the API does not define (``tools: 42``, a message that is a string, ``instructions`` that are
  not text...) are counted as their JSON text and make the estimate inexact: the provider decides
  whether the request is valid; quotagate only needs a number to reserve.
* Input out of sight (no prompt field, a stored conversation): ``Estimate.with_unseen`` reserves up to
  a bound the policy picks, inexact; settlement then takes the provider's usage.
* Unknown tokenizer (no configured encoding and none inferable from the model name, or an encoding that
  is not bundled): counted with o200k_base and marked ``exact=False`` -- a real BPE count is a closer
  guess for modern tokenizers than chars/4, and it shares cache entries with o200k models.

Every message is counted once: an LRU keyed by everything that affects its count (encoding, image
profile, the message itself) and bounded by the total characters/bytes of its keys. A conversation
re-sent with one new message costs one hash + compare per old message and the encoding of the new one.
"""

from __future__ import annotations

import asyncio
import binascii
import math
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any

import orjson
import tiktoken

from proxy.encodings import EncodingUnavailable, encoding_name_for_model, get_encoding

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
REPLY_PRIMER = 3
FALLBACK_ENCODING = "o200k_base"
THREAD_THRESHOLD_CHARS = 16_384  # below this the ~50 us thread hop costs more than it saves
_ENTRY_OVERHEAD = 64  # bytes charged per cache entry on top of its key text

# Cookbook num_tokens_for_tools (conventions.md 4.2)
_PROP_INIT, _PROP_KEY, _ENUM_INIT, _ENUM_ITEM, _FUNC_END = 3, 3, -3, 3, 12
_FUNC_INIT_CL100K, _FUNC_INIT_O200K = 10, 7

_SYSTEM_ROLES = frozenset({"system", "developer"})
_CHAT_UNRENDERED = frozenset({"tool_call_id"})
_RESPONSES_UNRENDERED = frozenset({"type", "id", "status", "call_id"})
_SIMPLE_KEYS = frozenset({"role", "content", "name"})

Counted = tuple[int, bool]  # (tokens, exact)


@dataclass(frozen=True, slots=True)
class Parts:
    """What the prompt is made of; the four add up to ``Estimate.tokens - Estimate.unseen``."""

    system: int  # system/developer messages (+ their per-message overhead)
    tools: int  # tool/function definitions
    history: int  # earlier turns (everything before the latest user turn, except system)
    new: int  # the latest user turn and anything after it (+ the reply primer)


@dataclass(frozen=True, slots=True)
class Estimate:
    tokens: int
    exact: bool  # False when the tokenizer is unknown or some part (image, audio, file...) was guessed
    parts: Parts
    unseen: int = 0  # reserved for input quotagate cannot see (stored context); in tokens, in no part

    def with_unseen(self, bound: int) -> Estimate:
        """Part of the input is out of sight: reserve up to ``bound`` input tokens in all, inexact."""
        unseen = max(bound - self.tokens, 0)
        return Estimate(self.tokens + unseen, False, self.parts, self.unseen + unseen)


@dataclass(frozen=True, slots=True)
class CacheStats:
    hits: int
    misses: int
    entries: int
    size: int  # characters/bytes charged against cache_bytes
    evictions: int
    encoded_chars: int  # characters handed to the tokenizer by this Counter (misses and uncached text)


# ---------------------------------------------------------------------------------------------- images


@dataclass(frozen=True, slots=True)
class ImageProfile:
    name: str
    base: int = 0  # tile models: tokens for the low-detail / base image
    tile: int = 0  # tile models: tokens per 512px tile
    multiplier: float = 0.0  # patch models (0 for tile models)
    verified: bool = False


_TILE_4O = ImageProfile("tile-85-170", 85, 170, verified=True)
_TILE_4O_MINI = ImageProfile("tile-2833-5667", 2833, 5667, verified=True)
_TILE_O = ImageProfile("tile-75-150", 75, 150, verified=True)
_TILE_GPT5 = ImageProfile("tile-70-140", 70, 140)
_TILE_CUP = ImageProfile("tile-65-129", 65, 129)
_TILE_UNKNOWN = ImageProfile("tile-85-170?", 85, 170)
_IMAGE_PREFIXES: tuple[tuple[str, ImageProfile], ...] = (
    ("gpt-4o-mini", _TILE_4O_MINI),
    ("gpt-4.1-mini", ImageProfile("patch-1.62", multiplier=1.62)),
    ("gpt-4.1-nano", ImageProfile("patch-2.46", multiplier=2.46)),
    ("o4-mini", ImageProfile("patch-1.72", multiplier=1.72)),
    ("gpt-4o", _TILE_4O),
    ("chatgpt-4o", _TILE_4O),
    ("gpt-4.1", _TILE_4O),
    ("gpt-4.5", _TILE_4O),
    ("o1", _TILE_O),
    ("o3", _TILE_O),
    ("computer-use-preview", _TILE_CUP),
)
_ASSUMED_SIZE = (1024, 1024)  # remote URL / unreadable data: conservative, high detail


def image_profile_for_model(model: str) -> ImageProfile:
    lowered = model.lower().removeprefix("ft:")
    for prefix, profile in _IMAGE_PREFIXES:
        if lowered.startswith(prefix):
            return profile
    if lowered.startswith("gpt-5"):
        if "-nano" in lowered:
            return ImageProfile("patch-2.46", multiplier=2.46)
        if "-mini" in lowered:
            return ImageProfile("patch-1.62", multiplier=1.62)
        return _TILE_GPT5
    return _TILE_UNKNOWN


def tile_image_tokens(width: int, height: int, detail: str, base: int, tile: int) -> int:
    """OpenAI vision guide: fit in 2048x2048, then shortest side to 768 (only if larger), 512px tiles."""
    if detail == "low":
        return base
    w, h = width, height
    if max(w, h) > 2048:
        w, h = w * 2048 // max(w, h), h * 2048 // max(w, h)
    if min(w, h) > 768:
        w, h = w * 768 // min(w, h), h * 768 // min(w, h)
    return base + tile * (-(-w // 512)) * (-(-h // 512))


def patch_image_tokens(width: int, height: int, multiplier: float) -> int:
    """32px patches, downscaled to at most 1536 patches, times the model's multiplier."""
    patches = -(-width // 32) * -(-height // 32)
    if patches > 1536:
        r = math.sqrt(32 * 32 * 1536 / (width * height))
        wr, hr = width * r / 32, height * r / 32
        r *= min(math.floor(wr) / wr, math.floor(hr) / hr)
        wr, hr = width * r / 32, height * r / 32
        patches = min(math.ceil(wr - 1e-9) * math.ceil(hr - 1e-9), 1536)
    return math.ceil(patches * multiplier)


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG/GIF/WebP/JPEG header, or None."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        w, h = struct.unpack(">II", data[16:24])
        return (int(w), int(h)) if w and h else None
    if data[:6] in (b"GIF87a", b"GIF89a") and len(data) >= 10:
        w, h = struct.unpack("<HH", data[6:10])
        return (int(w), int(h)) if w and h else None
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return _webp_size(data)
    if data[:2] == b"\xff\xd8":
        return _jpeg_size(data)
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 " and len(data) >= 30:
        w, h = struct.unpack("<HH", data[26:30])
        return (w & 0x3FFF, h & 0x3FFF) if w & 0x3FFF and h & 0x3FFF else None
    if chunk == b"VP8L" and len(data) >= 25:
        bits = int.from_bytes(data[21:25], "little")
        return (bits & 0x3FFF) + 1, ((bits >> 14) & 0x3FFF) + 1
    if chunk == b"VP8X" and len(data) >= 30:
        return int.from_bytes(data[24:27], "little") + 1, int.from_bytes(data[27:30], "little") + 1
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    i = 2
    while i + 9 < len(data):
        if data[i] != 0xFF:
            return None
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:  # standalone markers
            i += 2
            continue
        (length,) = struct.unpack(">H", data[i + 2 : i + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # SOFn
            h, w = struct.unpack(">HH", data[i + 5 : i + 9])
            return (int(w), int(h)) if w and h else None
        i += 2 + length
    return None


def data_url_image_size(url: str) -> tuple[int, int] | None:
    """Decode only as much of a base64 ``data:`` URL as the header needs (JPEG may need it all)."""
    if not url.startswith("data:"):
        return None
    head, sep, payload = url.partition(",")
    if not sep or not head.endswith(";base64"):
        return None
    for chunk in (payload[:4096], payload[:262_144], payload):
        try:
            size = image_size(binascii.a2b_base64(chunk[: len(chunk) // 4 * 4]))
        except (binascii.Error, ValueError, struct.error):
            size = None
        if size is not None or len(chunk) == len(payload):
            return size
    return None


# ---------------------------------------------------------------------------------------------- counting


@dataclass(frozen=True, slots=True)
class _Ctx:
    enc_name: str
    enc: tiktoken.Encoding
    known: bool
    images: ImageProfile
    func_init: int
    n: Callable[[str], int]  # tokens of a text


def _resolve(model: str, encoding: str | None) -> tuple[str, bool]:
    name = encoding or encoding_name_for_model(model)
    if name is None:
        return FALLBACK_ENCODING, False
    try:
        get_encoding(name)
    except EncodingUnavailable:
        return FALLBACK_ENCODING, False
    return name, True


def _dumps(value: Any) -> str:
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return str(value)


def _b64_len(data: str) -> int:
    return len(data) * 3 // 4


def _count_image(ctx: _Ctx, url: Any, detail: Any) -> Counted:
    profile = ctx.images
    detail = detail if detail in ("low", "high") else "auto"  # auto: count as high (conservative)
    if profile.multiplier == 0.0 and detail == "low":
        return profile.base, profile.verified
    size = data_url_image_size(url) if isinstance(url, str) else None
    exact = size is not None and profile.verified
    w, h = size or _ASSUMED_SIZE
    if profile.multiplier:
        return patch_image_tokens(w, h, profile.multiplier), False
    return tile_image_tokens(w, h, detail, profile.base, profile.tile), exact


def _count_audio(audio: Any) -> Counted:
    # Rough: ~10 audio tokens per second; wav assumed 24 kHz 16-bit mono (48 KB/s), others ~128 kbit/s.
    if not isinstance(audio, dict) or not isinstance(audio.get("data"), str):
        return 0, False
    per_token = 4800 if audio.get("format", "wav") == "wav" else 1600
    return max(1, _b64_len(audio["data"]) // per_token), False


def _count_file(ctx: _Ctx, file: Any) -> Counted:
    # Rough: extracted text + page images, ~1 token per 8 bytes of file; 1024 when only an id is given.
    if not isinstance(file, dict):
        return 0, False
    name = file.get("filename")
    total = ctx.n(name) if isinstance(name, str) else 0
    data = file.get("file_data")
    total += max(256, _b64_len(data) // 8) if isinstance(data, str) else 1024
    return total, False


def _count_part(ctx: _Ctx, part: Any) -> Counted:
    if isinstance(part, str):
        return ctx.n(part), True
    if not isinstance(part, dict):
        return ctx.n(_dumps(part)), False
    kind = part.get("type")
    if kind in ("text", "input_text", "output_text", "summary_text") and isinstance(part.get("text"), str):
        return ctx.n(part["text"]), True
    if kind == "refusal" and isinstance(part.get("refusal"), str):
        return ctx.n(part["refusal"]), True
    if kind == "image_url":
        image = part.get("image_url")
        if isinstance(image, dict):
            return _count_image(ctx, image.get("url"), image.get("detail"))
        return _count_image(ctx, image, None)
    if kind == "input_image":
        return _count_image(ctx, part.get("image_url"), part.get("detail"))
    if kind == "input_audio":
        return _count_audio(part.get("input_audio"))
    if kind == "file":
        return _count_file(ctx, part.get("file"))
    if kind == "input_file":
        return _count_file(ctx, part)
    return ctx.n(_dumps(part)), False


def _count_content(ctx: _Ctx, content: Any) -> Counted:
    if isinstance(content, str):
        return ctx.n(content), True
    if isinstance(content, list):
        total, exact = 0, True
        for part in content:
            tokens, part_exact = _count_part(ctx, part)
            total, exact = total + tokens, exact and part_exact
        return total, exact
    return ctx.n(_dumps(content)), False


def _count_call(ctx: _Ctx, call: Any) -> Counted:
    fn = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(fn, dict):
        return ctx.n(_dumps(call)), False
    total = 0
    for key in ("name", "arguments"):
        value = fn.get(key)
        if isinstance(value, str):
            total += ctx.n(value)
    return total, True


def _count_message(ctx: _Ctx, message: Any, unrendered: frozenset[str] = _CHAT_UNRENDERED) -> Counted:
    if not isinstance(message, dict):
        return TOKENS_PER_MESSAGE + ctx.n(_dumps(message)), False
    total, exact = TOKENS_PER_MESSAGE, True
    for key, value in message.items():
        if value is None or key in unrendered:
            continue
        if key == "content":
            tokens, ok = _count_content(ctx, value)
        elif key == "tool_calls" and isinstance(value, list):
            tokens, ok = 0, True
            for call in value:
                call_tokens, call_ok = _count_call(ctx, call)
                tokens, ok = tokens + call_tokens, ok and call_ok
        elif key == "function_call":
            tokens, ok = _count_call(ctx, value)
        elif isinstance(value, str):
            tokens, ok = ctx.n(value) + (TOKENS_PER_NAME if key == "name" else 0), True
        else:
            tokens, ok = ctx.n(_dumps(value)), False
        total, exact = total + tokens, exact and ok
    return total, exact


def _count_item(ctx: _Ctx, item: Any) -> Counted:
    """One Responses API input item."""
    if isinstance(item, str):
        return TOKENS_PER_MESSAGE + ctx.n("user") + ctx.n(item), True
    if not isinstance(item, dict):
        return TOKENS_PER_MESSAGE + ctx.n(_dumps(item)), False
    kind = item.get("type", "message")
    if kind == "message" or ("role" in item and "type" not in item):
        return _count_message(ctx, item, _RESPONSES_UNRENDERED)
    if kind == "function_call" or kind == "custom_tool_call":
        args = item.get("arguments", item.get("input"))
        tokens = sum(ctx.n(v) for v in (item.get("name"), args) if isinstance(v, str))
        return TOKENS_PER_MESSAGE + tokens, False
    if kind in ("function_call_output", "custom_tool_call_output"):
        tokens, _ = _count_content(ctx, item.get("output"))
        return TOKENS_PER_MESSAGE + tokens, False
    if kind == "reasoning":
        tokens, _ = _count_content(ctx, item.get("summary") or [])
        return tokens, False
    return TOKENS_PER_MESSAGE + ctx.n(_dumps(item)), False


def _function_of(tool: Any) -> dict[str, Any] | None:
    if not isinstance(tool, dict):
        return None
    fn = tool.get("function")
    if isinstance(fn, dict):
        return fn  # chat shape {"type": "function", "function": {...}}
    if tool.get("type") == "function" and "name" in tool:
        return tool  # responses shape {"type": "function", "name": ..., "parameters": ...}
    return None


def _count_tools(ctx: _Ctx, tools: Any) -> Counted:
    if not isinstance(tools, list):
        return ctx.n(_dumps(tools)), False
    total, exact = 0, True
    for tool in tools:
        fn = _function_of(tool)
        if fn is None:
            total, exact = total + ctx.n(_dumps(tool)), False
            continue
        desc = str(fn.get("description") or "").removesuffix(".")
        total += ctx.func_init + ctx.n(f"{fn.get('name', '')}:{desc}")
        params = fn.get("parameters")
        props = params.get("properties") if isinstance(params, dict) else None
        if not isinstance(props, dict) or not props:
            continue
        total += _PROP_INIT
        for key, prop in props.items():
            tokens, ok = _count_property(ctx, key, prop)
            total, exact = total + _PROP_KEY + tokens, exact and ok
    if tools:
        total += _FUNC_END
    return total, exact


def _count_property(ctx: _Ctx, key: str, prop: Any) -> Counted:
    if not isinstance(prop, dict):
        return ctx.n(f"{key}:{_dumps(prop)}"), False
    total, exact = 0, True
    kind = prop.get("type", "")
    if not isinstance(kind, str):
        kind, exact = _dumps(kind), False
    enum = prop.get("enum")
    if isinstance(enum, list):
        total += _ENUM_INIT + sum(_ENUM_ITEM + ctx.n(str(item)) for item in enum)
    desc = str(prop.get("description") or "").removesuffix(".")
    total += ctx.n(f"{key}:{kind}:{desc}")
    extra = {k: v for k, v in prop.items() if k not in ("type", "description", "enum")}
    if extra:  # nested objects, arrays, defaults...: not modelled by the cookbook
        total, exact = total + ctx.n(_dumps(extra)), False
    return total, exact


# ---------------------------------------------------------------------------------------------- cache


class _LRU:
    """Bounded by the summed size of its keys; a lock guards every read and write."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._data: OrderedDict[Hashable, tuple[int, bool, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.size = self.hits = self.misses = self.evictions = self.encoded_chars = 0

    def lookup(self, slots: list[_Slot]) -> None:
        """Fill ``slot.value`` for every cached slot, under one lock acquisition."""
        data = self._data
        with self._lock:
            for slot in slots:
                entry = data.get(slot.key) if slot.key is not None else None
                if entry is None:
                    self.misses += 1
                    continue
                data.move_to_end(slot.key)
                self.hits += 1
                slot.value = (entry[0], entry[1])

    def put(self, key: Hashable, value: Counted, size: int) -> None:
        size += _ENTRY_OVERHEAD
        if size > self.max_size:
            return
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self.size -= old[2]
            self._data[key] = (value[0], value[1], size)
            self.size += size
            while self.size > self.max_size:
                _, evicted = self._data.popitem(last=False)
                self.size -= evicted[2]
                self.evictions += 1

    def add_encoded(self, chars: int) -> None:
        with self._lock:
            self.encoded_chars += chars

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self.hits, self.misses, len(self._data), self.size, self.evictions, self.encoded_chars)


class _Slot:
    """One cacheable piece of a prompt: its bucket, cache key, size, and how to count it on a miss."""

    __slots__ = ("bucket", "count", "key", "obj", "size", "value")

    def __init__(
        self, bucket: str, key: Hashable | None, size: int, count: Callable[[_Ctx, Any], Counted], obj: Any
    ) -> None:
        self.bucket, self.key, self.size, self.count, self.obj = bucket, key, size, count, obj
        self.value: Counted | None = None


def _buckets_for(roles: list[str | None]) -> list[str]:
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

    def __init__(self, *, cache_bytes: int = 64 * 1024 * 1024) -> None:
        self._cache = _LRU(cache_bytes)

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

    def completion(self, prompt: Any, *, model: str, encoding: str | None) -> Estimate:
        ctx = self._ctx(model, encoding)
        tokens, exact = self._plain(ctx, prompt)
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

    async def acompletion(self, prompt: Any, *, model: str, encoding: str | None) -> Estimate:
        if _plain_size(prompt) > THREAD_THRESHOLD_CHARS:
            return await asyncio.to_thread(self.completion, prompt, model=model, encoding=encoding)
        return self.completion(prompt, model=model, encoding=encoding)

    async def aembeddings(self, input: Any, *, model: str, encoding: str | None) -> Estimate:
        return await self.acompletion(input, model=model, encoding=encoding)

    # -- internals ---------------------------------------------------------------------------------

    def _ctx(self, model: str, encoding: str | None) -> _Ctx:
        name, known = _resolve(model, encoding)
        enc = get_encoding(name)
        cache = self._cache

        def n(text: str) -> int:
            cache.add_encoded(len(text))
            return len(enc.encode_ordinary(text))

        func_init = _FUNC_INIT_CL100K if name == "cl100k_base" else _FUNC_INIT_O200K
        return _Ctx(name, enc, known, image_profile_for_model(model), func_init, n)

    @staticmethod
    def _slot(ctx: _Ctx, bucket: str, tag: str, obj: Any, count: Callable[[_Ctx, Any], Counted]) -> _Slot:
        key: Hashable | None
        if (
            type(obj) is dict
            and obj.keys() <= _SIMPLE_KEYS
            and type(obj.get("content")) is str
            and isinstance(obj.get("role"), str)
            and isinstance(obj.get("name", ""), str)
        ):
            # Plain text message: a tuple of the strings themselves, no serialisation; shared by
            # chat and responses (the rule is the same for both).
            role, content, name = obj["role"], obj["content"], obj.get("name")
            key = ("m", ctx.enc_name, role, name, content)
            size = len(content) + len(role) + len(name or "")
        else:
            try:
                raw = orjson.dumps(obj)
            except TypeError:  # not JSON (a caller's own objects): count, don't cache
                key, size = None, len(str(obj))
            else:
                key, size = (tag, ctx.enc_name, ctx.images.name, raw), len(raw)
        return _Slot(bucket, key, size, count, obj)

    def _plan_chat(self, messages: Any, tools: Any, model: str, encoding: str | None) -> tuple[_Ctx, list[_Slot]]:
        ctx = self._ctx(model, encoding)
        if not isinstance(messages, list):  # not an array: one odd "message", counted as its JSON text
            messages = [] if messages is None else [messages]
        buckets = _buckets_for([_role(m) for m in messages])
        slots = [self._slot(ctx, bucket, "j", m, _count_message) for bucket, m in zip(buckets, messages, strict=True)]
        if tools is not None and tools != []:
            slots.append(self._slot(ctx, "tools", "f", tools, _count_tools))
        self._cache.lookup(slots)
        return ctx, slots

    def _plan_responses(
        self, input: Any, instructions: Any, tools: Any, model: str, encoding: str | None
    ) -> tuple[_Ctx, list[_Slot]]:
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
            self._slot(ctx, bucket, "r", item, _count_item)
            for bucket, item in zip(_buckets_for(roles), items, strict=True)
        ]
        if tools is not None and tools != []:
            slots.append(self._slot(ctx, "tools", "f", tools, _count_tools))
        self._cache.lookup(slots)
        return ctx, slots

    def _finish(self, ctx: _Ctx, slots: list[_Slot]) -> Estimate:
        sums = {"system": 0, "tools": 0, "history": 0, "new": REPLY_PRIMER}
        exact = ctx.known
        for slot in slots:
            value = slot.value
            if value is None:
                value = slot.count(ctx, slot.obj)
                if slot.key is not None:
                    self._cache.put(slot.key, value, slot.size)
            sums[slot.bucket] += value[0]
            exact = exact and value[1]
        parts = Parts(sums["system"], sums["tools"], sums["history"], sums["new"])
        return Estimate(parts.system + parts.tools + parts.history + parts.new, exact, parts)

    def _plain(self, ctx: _Ctx, value: Any) -> Counted:
        if isinstance(value, str):
            return ctx.n(value), True
        if isinstance(value, list):
            if all(type(v) is int for v in value):
                return len(value), True
            total, exact = 0, True
            for v in value:
                if isinstance(v, list) and all(type(t) is int for t in v):
                    total += len(v)
                elif isinstance(v, str):
                    total += ctx.n(v)
                else:
                    total, exact = total + ctx.n(_dumps(v)), False
            return total, exact
        if value is None:
            return 0, True
        return ctx.n(_dumps(value)), False


def _plain_size(value: Any) -> int:
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list):
        return sum(len(v) for v in value if isinstance(v, str))
    return 0


def count_chat_parts(counter: Counter, messages: Any, tools: Any, *, model: str, encoding: str | None) -> Parts:
    """The partition of a chat prompt: system / tools / history / new (see ``Parts``)."""
    return counter.chat(messages, tools, model=model, encoding=encoding).parts

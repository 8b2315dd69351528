"""Chat messages and Responses API input items (conventions.md section 4): the cookbook's
``num_tokens_from_messages`` (3 per message, every rendered value, +1 per ``name``); list content part by
part; images, audio and files estimated. No I/O."""

from __future__ import annotations

from typing import Any

from .context import Counted, Ctx, dumps
from .images import ASSUMED_SIZE, data_url_image_size, patch_image_tokens, tile_image_tokens

TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
_CHAT_UNRENDERED = frozenset({"tool_call_id"})
_RESPONSES_UNRENDERED = frozenset({"type", "id", "status", "call_id"})


def _b64_len(data: str) -> int:
    return len(data) * 3 // 4


def _count_image(ctx: Ctx, url: Any, detail: Any) -> Counted:
    profile = ctx.images
    detail = detail if detail in ("low", "high") else "auto"  # auto: count as high (conservative)
    if profile.multiplier == 0.0 and detail == "low":
        return profile.base, profile.verified
    size = data_url_image_size(url) if isinstance(url, str) else None
    exact = size is not None and profile.verified
    w, h = size or ASSUMED_SIZE
    if profile.multiplier:
        return patch_image_tokens(w, h, profile.multiplier), False
    return tile_image_tokens(w, h, detail, profile.base, profile.tile), exact


def _count_audio(audio: Any) -> Counted:
    # Rough: ~10 audio tokens per second; wav assumed 24 kHz 16-bit mono (48 KB/s), others ~128 kbit/s.
    if not isinstance(audio, dict) or not isinstance(audio.get("data"), str):
        return 0, False
    per_token = 4800 if audio.get("format", "wav") == "wav" else 1600
    return max(1, _b64_len(audio["data"]) // per_token), False


def _count_file(ctx: Ctx, file: Any) -> Counted:
    # Rough: extracted text + page images, ~1 token per 8 bytes of file; 1024 when only an id is given.
    if not isinstance(file, dict):
        return 0, False
    name = file.get("filename")
    total = ctx.n(name) if isinstance(name, str) else 0
    data = file.get("file_data")
    total += max(256, _b64_len(data) // 8) if isinstance(data, str) else 1024
    return total, False


def _count_part(ctx: Ctx, part: Any) -> Counted:
    if isinstance(part, str):
        return ctx.n(part), True
    if not isinstance(part, dict):
        return ctx.n(dumps(part)), False
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
    return ctx.n(dumps(part)), False


def _count_content(ctx: Ctx, content: Any) -> Counted:
    if isinstance(content, str):
        return ctx.n(content), True
    if isinstance(content, list):
        total, exact = 0, True
        for part in content:
            tokens, part_exact = _count_part(ctx, part)
            total, exact = total + tokens, exact and part_exact
        return total, exact
    return ctx.n(dumps(content)), False


def _count_call(ctx: Ctx, call: Any) -> Counted:
    fn = call.get("function", call) if isinstance(call, dict) else None
    if not isinstance(fn, dict):
        return ctx.n(dumps(call)), False
    total = 0
    for key in ("name", "arguments"):
        value = fn.get(key)
        if isinstance(value, str):
            total += ctx.n(value)
    return total, True


def count_message(ctx: Ctx, message: Any, unrendered: frozenset[str] = _CHAT_UNRENDERED) -> Counted:
    if not isinstance(message, dict):
        return TOKENS_PER_MESSAGE + ctx.n(dumps(message)), False
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
            tokens, ok = ctx.n(dumps(value)), False
        total, exact = total + tokens, exact and ok
    return total, exact


def count_item(ctx: Ctx, item: Any) -> Counted:
    """One Responses API input item."""
    if isinstance(item, str):
        return TOKENS_PER_MESSAGE + ctx.n("user") + ctx.n(item), True
    if not isinstance(item, dict):
        return TOKENS_PER_MESSAGE + ctx.n(dumps(item)), False
    kind = item.get("type", "message")
    if kind == "message" or ("role" in item and "type" not in item):
        return count_message(ctx, item, _RESPONSES_UNRENDERED)
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
    return TOKENS_PER_MESSAGE + ctx.n(dumps(item)), False

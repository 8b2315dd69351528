"""Anthropic Messages input (conventions.md 5.1), counted with a bundled encoding: Claude's tokenizer is not
public, so every count here is inexact and the adapter scales it by the model's pre-count factor (the
bound that reservations use, proxy/precount.py). No I/O.

What is counted: the text of every block (``text``, ``thinking``, a ``tool_use`` name and its input as JSON,
a ``tool_result``'s content, a text ``document``), the system prompt, and each tool's name, description and
input schema as JSON. Images follow Anthropic's vision guide: ``width * height / 750`` tokens after the
image is scaled to fit 1568 px on its long edge (about 1,600 tokens at most); an image whose size cannot be
read is counted at that maximum. A PDF is bounded by its size (one token per 3 bytes, pages being text
plus page images). Shapes the API does not define are counted as their JSON text.
"""

from __future__ import annotations

import binascii
from typing import Any

from .context import Counted, Ctx, dumps
from .images import image_size

TOKENS_PER_MESSAGE = 3  # role and turn markers (an estimate: the real template is not published)
TOKENS_PER_TOOL = 8
_MAX_EDGE = 1568
_MAX_IMAGE_TOKENS = 1600


def image_tokens(width: int, height: int) -> int:
    scale = min(1.0, _MAX_EDGE / max(width, height))
    w, h = width * scale, height * scale
    return min(_MAX_IMAGE_TOKENS, max(1, int(-(-(w * h) // 750))))


def _b64_bytes(data: str) -> int:
    return len(data) * 3 // 4


def _image(block: dict[str, Any]) -> int:
    source = block.get("source")
    data = source.get("data") if isinstance(source, dict) and source.get("type") == "base64" else None
    if not isinstance(data, str):
        return _MAX_IMAGE_TOKENS  # a URL or a file id: the size is not known here
    for head in (data[:4096], data[:262_144], data):
        try:
            size = image_size(binascii.a2b_base64(head[: len(head) // 4 * 4]))
        except (binascii.Error, ValueError):
            return _MAX_IMAGE_TOKENS
        if size is not None:
            return image_tokens(*size)
    return _MAX_IMAGE_TOKENS


def _document(ctx: Ctx, block: dict[str, Any]) -> int:
    source = block.get("source")
    if not isinstance(source, dict):
        return ctx.n(dumps(block))
    if source.get("type") == "text" and isinstance(source.get("data"), str):
        return ctx.n(source["data"])
    if source.get("type") == "content":
        return count_content(ctx, source.get("content"))[0]
    data = source.get("data")
    return max(1024, _b64_bytes(data) // 3) if isinstance(data, str) else 2048


def _block(ctx: Ctx, block: Any) -> int:
    if isinstance(block, str):
        return ctx.n(block)
    if not isinstance(block, dict):
        return ctx.n(dumps(block))
    kind = block.get("type")
    if kind == "text" and isinstance(block.get("text"), str):
        return ctx.n(block["text"])
    if kind == "image":
        return _image(block)
    if kind == "document":
        return _document(ctx, block)
    if kind in ("tool_use", "server_tool_use"):
        return ctx.n(str(block.get("name", ""))) + ctx.n(dumps(block.get("input")))
    if kind == "tool_result":
        return 3 + count_content(ctx, block.get("content"))[0]
    if kind == "thinking" and isinstance(block.get("thinking"), str):
        return ctx.n(block["thinking"])
    if kind == "redacted_thinking" and isinstance(block.get("data"), str):
        return _b64_bytes(block["data"]) // 4
    return ctx.n(dumps(block))


def count_content(ctx: Ctx, content: Any) -> Counted:
    if isinstance(content, list):
        return sum(_block(ctx, b) for b in content), False
    if content is None:
        return 0, False
    return _block(ctx, content), False


def count_message(ctx: Ctx, message: Any) -> Counted:
    if not isinstance(message, dict):
        return ctx.n(dumps(message)), False
    return TOKENS_PER_MESSAGE + count_content(ctx, message.get("content"))[0], False


def count_system(ctx: Ctx, system: Any) -> Counted:
    return (0, False) if system is None else (TOKENS_PER_MESSAGE + count_content(ctx, system)[0], False)


def count_tools(ctx: Ctx, tools: Any) -> Counted:
    if not isinstance(tools, list):
        return ctx.n(dumps(tools)), False
    total = 0
    for tool in tools:
        if not isinstance(tool, dict):
            total += ctx.n(dumps(tool))
            continue
        total += TOKENS_PER_TOOL + ctx.n(str(tool.get("name", ""))) + ctx.n(str(tool.get("description", "")))
        rest = {k: v for k, v in tool.items() if k not in ("name", "description", "cache_control")}
        total += ctx.n(dumps(rest))
    return total, False

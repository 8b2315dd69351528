"""Read usage out of responses without getting in their way. No I/O.

``StreamTap`` watches an SSE stream as it goes by: it finds the usage event, keeps the ``data:`` payloads
so that output can be counted when no usage arrives (stream cut, client gone, provider silent), and,
only when asked to, holds each event until it is complete so it can drop the usage-only chunk that
quotagate forced upstream but the client never requested. Otherwise the bytes pass through untouched.
"""

from __future__ import annotations

import re
from typing import Any

import orjson

from .usage import Usage, from_openai

_USAGE = re.compile(rb'"usage"\s*:\s*\{')


def _loads(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None


class StreamTap:
    __slots__ = ("_buf", "_payloads", "_strip", "fingerprint", "saw_done", "usage")

    def __init__(self, *, strip_usage_chunk: bool) -> None:
        self._strip = strip_usage_chunk
        self._buf = b""
        self._payloads: list[bytes] = []
        self.usage: Usage | None = None
        self.fingerprint: str | None = None
        self.saw_done = False

    def feed(self, chunk: bytes) -> bytes:
        """Take bytes from upstream; return the bytes to send to the client now."""
        buf = self._buf + chunk
        end = buf.rfind(b"\n\n")
        if end < 0:
            self._buf = buf
            return b"" if self._strip else chunk
        complete, self._buf = buf[: end + 2], buf[end + 2 :]
        if not self._strip:
            self._scan(complete)
            return chunk
        return self._scan(complete)

    def finish(self) -> bytes:
        """The stream ended; whatever is left (an unterminated event) is scanned and passed on."""
        rest, self._buf = self._buf, b""
        if not rest:
            return b""
        kept = self._scan(rest + b"\n\n")
        return kept[:-2] if kept.endswith(b"\n\n") and not rest.endswith(b"\n\n") else kept

    def _scan(self, events: bytes) -> bytes:
        kept: list[bytes] = []
        for event in events.replace(b"\r\n", b"\n").split(b"\n\n"):
            if not event:
                continue
            data = b"\n".join(
                line[5:].lstrip(b" ") for line in event.split(b"\n") if line.startswith(b"data:")
            )
            if data == b"[DONE]":
                self.saw_done = True
            elif data:
                self._payloads.append(data)
                if _USAGE.search(data) and self._take_usage(data):
                    continue
            kept.append(event + b"\n\n")
        return b"".join(kept)

    def _take_usage(self, data: bytes) -> bool:
        """Record the usage in ``data``; True when the event is the usage-only chunk to strip."""
        obj = _loads(data)
        if not isinstance(obj, dict):
            return False
        resp = obj.get("response")
        holder = resp if isinstance(resp, dict) and "usage" in resp else obj
        usage = from_openai(holder.get("usage"))
        if usage.known:
            self.usage = usage
        fp = obj.get("system_fingerprint")
        if isinstance(fp, str):
            self.fingerprint = fp
        return self._strip and obj.get("choices") == [] and usage.known

    def output_text(self) -> str:
        """All generated text seen so far (content, reasoning, tool-call names and arguments)."""
        parts: list[str] = []
        for payload in self._payloads:
            obj = _loads(payload)
            if isinstance(obj, dict):
                _collect_chunk(obj, parts)
        return "".join(parts)


def _collect_chunk(obj: dict[str, Any], out: list[str]) -> None:
    kind = obj.get("type")
    if isinstance(kind, str):  # Responses API events
        if kind.endswith(".delta") and isinstance(obj.get("delta"), str):
            out.append(obj["delta"])
        return
    for choice in obj.get("choices") or ():
        if not isinstance(choice, dict):
            continue
        if isinstance(choice.get("text"), str):
            out.append(choice["text"])
        delta = choice.get("delta")
        if isinstance(delta, dict):
            _collect_message(delta, out)


def _collect_message(msg: dict[str, Any], out: list[str]) -> None:
    for key in ("content", "reasoning_content", "reasoning", "refusal"):
        v = msg.get(key)
        if isinstance(v, str):
            out.append(v)
    for call in msg.get("tool_calls") or ():
        fn = call.get("function") if isinstance(call, dict) else None
        if isinstance(fn, dict):
            for key in ("name", "arguments"):
                if isinstance(fn.get(key), str):
                    out.append(fn[key])


def read_body(raw: bytes) -> tuple[Usage, str | None, Any]:
    """A non-streamed response: (usage, system_fingerprint, parsed body or None)."""
    obj = _loads(raw)
    if not isinstance(obj, dict):
        return Usage(), None, None
    fp = obj.get("system_fingerprint")
    return from_openai(obj.get("usage")), fp if isinstance(fp, str) else None, obj


def body_output_text(obj: Any) -> str:
    """Generated text of a non-streamed response, for counting when the provider gave no usage."""
    out: list[str] = []
    if not isinstance(obj, dict):
        return ""
    for choice in obj.get("choices") or ():
        if isinstance(choice, dict):
            if isinstance(choice.get("text"), str):
                out.append(choice["text"])
            if isinstance(choice.get("message"), dict):
                _collect_message(choice["message"], out)
    for item in obj.get("output") or ():
        if not isinstance(item, dict):
            continue
        if isinstance(item.get("arguments"), str):
            out.append(item["arguments"])
        for part in item.get("content") or ():
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                out.append(part["text"])
    return "".join(out)

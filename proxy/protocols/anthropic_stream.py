"""Read an Anthropic Messages stream as it passes (conventions.md 5.1). No I/O; the bytes pass untouched.

``message_start`` carries the message id and the input usage (cache reads and writes included) with a
first small ``output_tokens``; each ``message_delta`` carries running totals (``output_tokens`` always,
input and cache fields when the API sends them). The usage is the start's merged with the last delta's,
fields overwritten, never added (``service_tier`` comes with the start's usage). Until a ``message_delta``
arrives the output is unknown (``None``): a stream cut before it is charged the output counted from the
text relayed. ``content_block_delta`` events are kept unread and read only if that count is needed.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from ..sse import EVENT_BOUNDARY, data_of, json_or_none
from ..usage import Usage, from_anthropic

_DELTA = b'"content_block_delta"'


class AnthropicTap:
    __slots__ = ("_buf", "_deltas", "_final", "_start", "fingerprint", "object_id", "raw_usage", "usage")

    def __init__(self) -> None:
        self._buf = b""
        self._deltas: list[bytes] = []
        self._start: dict[str, Any] | None = None
        self._final: dict[str, Any] | None = None  # the last message_delta's usage
        self.usage: Usage | None = None
        self.raw_usage: dict[str, Any] | None = None
        self.fingerprint: str | None = None
        self.object_id: str | None = None

    def feed(self, chunk: bytes) -> bytes:
        buf = self._buf + chunk if self._buf else chunk
        ends = [m.end() for m in EVENT_BOUNDARY.finditer(buf)]
        if not ends:
            self._buf = buf
            return chunk
        self._scan(buf[: ends[-1]])
        self._buf = buf[ends[-1] :]
        return chunk

    def finish(self) -> bytes:
        rest, self._buf = self._buf, b""
        if rest.strip():
            self._scan(rest)
        return b""

    def _scan(self, events: bytes) -> None:
        for event in EVENT_BOUNDARY.split(events):
            data = data_of(event)
            if not data:
                continue
            if _DELTA in data[:64]:
                self._deltas.append(data)
                continue
            obj = json_or_none(data)
            if isinstance(obj, dict):
                self._event(obj)

    def _event(self, obj: dict[str, Any]) -> None:
        kind = obj.get("type")
        if kind == "message_start" and isinstance(obj.get("message"), dict):
            message = obj["message"]
            if isinstance(message.get("id"), str):
                self.object_id = message["id"]
            if isinstance(message.get("usage"), dict):
                self._start = message["usage"]
        elif kind == "message_delta" and isinstance(obj.get("usage"), dict):
            self._final = obj["usage"]
        else:
            return
        merged = {**(self._start or {}), **{k: v for k, v in (self._final or {}).items() if v is not None}}
        self.raw_usage = merged
        usage = from_anthropic(merged)
        if self._final is None:  # only message_start's placeholder output so far
            usage = replace(usage, output=None, reasoning=None)
        self.usage = usage if usage.input is not None or usage.output is not None else None

    def output_text(self) -> str:
        """Generated text seen so far: text, thinking and tool input deltas."""
        out: list[str] = []
        for payload in self._deltas:
            obj = json_or_none(payload)
            delta = obj.get("delta") if isinstance(obj, dict) else None
            if isinstance(delta, dict):
                for key in ("text", "thinking", "partial_json"):
                    if isinstance(delta.get(key), str):
                        out.append(delta[key])
        return "".join(out)

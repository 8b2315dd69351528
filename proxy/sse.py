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
# An event ends at a blank line; lines end in \n or \r\n (sse-starlette, used by many servers, sends \r\n).
EVENT_BOUNDARY = re.compile(rb"(?:\r\n|\n)(?:\r\n|\n)")
_LINE = re.compile(rb"\r\n|\n|\r")


def json_or_none(payload: bytes) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return None


def data_of(event: bytes) -> bytes:
    """The joined ``data:`` lines of one event (without its terminating blank line)."""
    return b"\n".join(line[5:].lstrip(b" ") for line in _LINE.split(event) if line.startswith(b"data:"))


class StreamTap:
    """Most events carry no usage: a run of complete events without ``"usage": {`` is passed on (or kept)
    as one segment without being split; segments are only taken apart later, and only if the output has
    to be counted because no usage arrived."""

    __slots__ = (
        "_buf", "_done", "_id_open", "_payloads", "_segments", "_strip",
        "fingerprint", "object_id", "raw_usage", "usage",
    )  # fmt: skip

    def __init__(self, *, strip_usage_chunk: bool) -> None:
        self._strip = strip_usage_chunk
        self._buf = b""
        self._payloads: list[bytes] = []
        self._segments: list[bytes] = []  # complete events not yet read one by one
        self._done = False
        self.usage: Usage | None = None
        self.raw_usage: Any = None  # OpenAI's usage holds nothing the normalised fields do not
        self.fingerprint: str | None = None
        self._id_open = True  # until the first event with a payload is read
        self.object_id: str | None = None  # the chunk's `id`, or a Responses event's `response.id`

    @property
    def saw_done(self) -> bool:
        self._read_segments()
        return self._done

    def _read_segments(self) -> None:
        segments, self._segments = self._segments, []
        for segment in segments:
            self._scan(segment)

    def feed(self, chunk: bytes) -> bytes:
        """Take bytes from upstream; return the bytes to send to the client now.

        Without stripping, ``chunk`` is returned as is (events are only read); with stripping, only whole
        events are returned, byte for byte, minus the usage-only chunk.
        """
        buf = self._buf + chunk if self._buf else chunk
        if b"\r" in buf:
            end = -1
            for boundary in EVENT_BOUNDARY.finditer(buf):
                end = boundary.end()
        else:
            end = buf.rfind(b"\n\n")
            end = end + 2 if end >= 0 else -1
        if end < 0:
            self._buf = buf
            return b"" if self._strip else chunk
        complete, self._buf = buf[:end], buf[end:]
        if self._id_open:
            self._find_id(complete)
        m: re.Match[bytes] | None = _USAGE.search(complete)
        if m is None:  # the common case: nothing to read now, nothing to drop
            self._segments.append(complete)
            return complete if self._strip else chunk
        if b"\r" in complete:  # rare line endings: read every event
            self._read_segments()
            kept = self._scan(complete)
            return kept if self._strip else chunk
        # Only the event that carries the usage is read now; the events around it stay one segment each.
        out: list[bytes] = []
        pos = 0
        while m is not None:
            start = complete.rfind(b"\n\n", pos, m.start())
            start = pos if start < 0 else start + 2
            end = complete.find(b"\n\n", m.end())
            end = len(complete) if end < 0 else end + 2
            if start > pos:
                self._segments.append(complete[pos:start])
                out.append(complete[pos:start])
            self._read_segments()
            if self._event(complete[start:end]):
                out.append(complete[start:end])
            pos = end
            m = _USAGE.search(complete, pos)
        if pos < len(complete):
            self._segments.append(complete[pos:])
            out.append(complete[pos:])
        return b"".join(out) if self._strip else chunk

    def finish(self) -> bytes:
        """The stream ended: the unterminated last event, if any, is read and (when stripping) passed on.

        Without stripping its bytes were already returned by ``feed``, so nothing is returned here.
        """
        rest, self._buf = self._buf, b""
        if not rest.strip():
            return rest if self._strip else b""
        if self._id_open:
            self._find_id(rest)
        self._read_segments()
        keep = self._event(rest)
        return rest if self._strip and keep else b""

    def _find_id(self, events: bytes) -> None:
        """Read the first event that has a payload, and only that one: the id of the object streamed."""
        start = 0
        while start < len(events):
            m = EVENT_BOUNDARY.search(events, start)
            data = data_of(events[start : m.start() if m else len(events)])
            if data and data != b"[DONE]":
                self._id_open = False
                self.object_id = object_id_of(json_or_none(data))
                return
            if m is None:
                return
            start = m.end()

    def _scan(self, events: bytes) -> bytes:
        kept: list[bytes] = []
        pos = 0
        for m in EVENT_BOUNDARY.finditer(events):
            if self._event(events[pos : m.start()]):
                kept.append(events[pos : m.end()])
            pos = m.end()
        return b"".join(kept)

    def _event(self, event: bytes) -> bool:
        """Read one event; False when it is the usage-only chunk to drop."""
        data = data_of(event)
        if data == b"[DONE]":
            self._done = True
        elif data:
            self._payloads.append(data)
            if _USAGE.search(data) and self._take_usage(data):
                return False
        return True

    def _take_usage(self, data: bytes) -> bool:
        """Record the usage in ``data``; True when the event is the usage-only chunk to strip."""
        obj = json_or_none(data)
        if not isinstance(obj, dict):
            return False
        resp = obj.get("response")
        holder = resp if isinstance(resp, dict) and "usage" in resp else obj
        # the served tier is in the same event: every chat chunk's `service_tier`, the Responses `response`'s
        usage = from_openai(holder.get("usage"), holder.get("service_tier"))
        if usage.known:
            self.usage = usage
        fp = obj.get("system_fingerprint")
        if isinstance(fp, str):
            self.fingerprint = fp
        return self._strip and obj.get("choices") == [] and usage.known

    def output_text(self) -> str:
        """All generated text seen so far (content, reasoning, tool-call names and arguments)."""
        self._read_segments()
        parts: list[str] = []
        for payload in self._payloads:
            obj = json_or_none(payload)
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
    """A non-streamed response: (usage and the tier that served it, system_fingerprint, parsed body or None)."""
    obj = json_or_none(raw)
    if not isinstance(obj, dict):
        return Usage(), None, None
    fp = obj.get("system_fingerprint")
    return from_openai(obj.get("usage"), obj.get("service_tier")), fp if isinstance(fp, str) else None, obj


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


def object_id_of(obj: Any) -> str | None:
    """The id of the object a response (or its stream's first event) describes: a chat completion's or chunk's
    ``id``, a Responses event's ``response.id``; the stateful endpoints route and isolate by it."""
    if not isinstance(obj, dict):
        return None
    inner = obj.get("response")
    holder = inner if isinstance(inner, dict) else obj
    found = holder.get("id")
    return found if isinstance(found, str) and found else None

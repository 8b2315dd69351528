"""Who a request is for and what it is part of, as the client says: the end user (the body's
``safety_identifier`` or ``user`` on OpenAI routes, ``metadata.user_id`` on Anthropic's) and tags (the
``x-quotagate-tags: a,b`` header, and the body's ``metadata.tags``). Recorded in the ledger for analysis,
held by the tag budgets of the team (proxy/limits.py); never metric labels.

Bounded, never refused: an end user is cut to ``MAX_END_USER`` characters; tags are trimmed, deduplicated
in order, cut to ``MAX_TAG`` characters each and to the first ``MAX_TAGS``.
"""

from __future__ import annotations

from typing import Any

MAX_END_USER = 128
MAX_TAG = 64
MAX_TAGS = 16
TAGS_HEADER = b"x-quotagate-tags"
SESSION_HEADER = b"x-quotagate-session"
MAX_SESSION = 128


def session_from_headers(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The request's session (an agent's run), as ``x-quotagate-session`` names it, bounded."""
    for k, v in headers:
        if k == SESSION_HEADER:
            return v.decode("latin-1").strip()[:MAX_SESSION] or None
    return None


def end_user(value: Any) -> str | None:
    return value[:MAX_END_USER] if isinstance(value, str) and value else None


def tags_from_headers(headers: list[tuple[bytes, bytes]], body: Any = None) -> str | None:
    """The request's tags, comma-joined as recorded (None: none given): from ``x-quotagate-tags`` (repeated
    headers add up), then from the body's ``metadata.tags`` (OpenAI's metadata holds strings: ``"a,b"``; a
    list of strings is read too)."""
    seen: dict[str, None] = {}
    texts = [v.decode("latin-1") for k, v in headers if k == TAGS_HEADER]
    meta = body.get("metadata") if isinstance(body, dict) else None
    found = meta.get("tags") if isinstance(meta, dict) else None
    if isinstance(found, str):
        texts.append(found)
    elif isinstance(found, list):
        texts += [t for t in found if isinstance(t, str)]
    for text in texts:
        for tag in text.split(","):
            tag = tag.strip()[:MAX_TAG]
            if tag and len(seen) < MAX_TAGS:
                seen.setdefault(tag, None)
    return ",".join(seen) if seen else None

"""Who a request is for and what it is part of, as the client says: the end user (the body's
``safety_identifier`` or ``user`` on OpenAI routes, ``metadata.user_id`` on Anthropic's) and tags (the
``x-quotagate-tags: a,b`` header). Recorded in the ledger for analysis; never metric labels.

Bounded, never refused: an end user is cut to ``MAX_END_USER`` characters; tags are trimmed, deduplicated
in order, cut to ``MAX_TAG`` characters each and to the first ``MAX_TAGS``.
"""

from __future__ import annotations

from typing import Any

MAX_END_USER = 128
MAX_TAG = 64
MAX_TAGS = 16
TAGS_HEADER = b"x-quotagate-tags"


def end_user(value: Any) -> str | None:
    return value[:MAX_END_USER] if isinstance(value, str) and value else None


def tags_from_headers(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The request's tags, comma-joined as recorded (None: none given); repeated headers add up."""
    seen: dict[str, None] = {}
    for k, v in headers:
        if k != TAGS_HEADER:
            continue
        for tag in v.decode("latin-1").split(","):
            tag = tag.strip()[:MAX_TAG]
            if tag and len(seen) < MAX_TAGS:
                seen.setdefault(tag, None)
    return ",".join(seen) if seen else None

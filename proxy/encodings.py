"""tiktoken encodings loaded from the files bundled in this package: no network, ever.

The BPE files ship under ``proxy/data/tiktoken/`` with the names tiktoken's cache uses (sha1 of the
download URL) and are checked by tiktoken against the sha256 it expects. ``TIKTOKEN_CACHE_DIR`` is pointed
at that folder only while an encoding is built, under a lock, so the process environment stays as it was.
"""

from __future__ import annotations

import os
import threading
from functools import cache
from pathlib import Path

import tiktoken

DATA_DIR = Path(__file__).parent / "data" / "tiktoken"
BUNDLED = ("cl100k_base", "o200k_base", "o200k_harmony")  # o200k_harmony reuses o200k_base's file
_lock = threading.Lock()


class EncodingUnavailable(LookupError):
    pass


@cache
def get_encoding(name: str) -> tiktoken.Encoding:
    if name not in BUNDLED:
        raise EncodingUnavailable(f"encoding {name!r} is not bundled (bundled: {', '.join(BUNDLED)})")
    with _lock:
        saved = os.environ.get("TIKTOKEN_CACHE_DIR")
        os.environ["TIKTOKEN_CACHE_DIR"] = str(DATA_DIR)
        try:
            return tiktoken.get_encoding(name)
        finally:
            if saved is None:
                del os.environ["TIKTOKEN_CACHE_DIR"]
            else:
                os.environ["TIKTOKEN_CACHE_DIR"] = saved


# Model-name prefixes -> encoding (openai/tiktoken tiktoken/model.py v0.14, conventions.md 4.4)
_PREFIXES: tuple[tuple[str, str], ...] = (
    ("gpt-oss", "o200k_harmony"),
    ("gpt-4o", "o200k_base"),
    ("chatgpt-4o", "o200k_base"),
    ("ft:gpt-4o", "o200k_base"),
    ("gpt-4.1", "o200k_base"),
    ("gpt-4.5", "o200k_base"),
    ("gpt-5", "o200k_base"),
    ("o1", "o200k_base"),
    ("o3", "o200k_base"),
    ("o4", "o200k_base"),
    ("gpt-4", "cl100k_base"),
    ("gpt-3.5", "cl100k_base"),
    ("gpt-35", "cl100k_base"),
    ("ft:gpt-4", "cl100k_base"),
    ("ft:gpt-3.5", "cl100k_base"),
    ("text-embedding-", "cl100k_base"),
    ("davinci-002", "cl100k_base"),
    ("babbage-002", "cl100k_base"),
)


def encoding_name_for_model(model: str) -> str | None:
    """The tiktoken encoding of an OpenAI model family, or None when no exact tokenizer is known."""
    lowered = model.lower()
    for prefix, name in _PREFIXES:
        if lowered.startswith(prefix):
            return name
    return None

"""What one count runs with: the encoding, whether it is the model's own, its image profile, and the
tokens of a text (which also tallies the characters handed to the tokenizer)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import tiktoken

from .images import ImageProfile

Counted = tuple[int, bool]  # (tokens, exact)


@dataclass(frozen=True, slots=True)
class Ctx:
    enc_name: str
    enc: tiktoken.Encoding
    known: bool
    images: ImageProfile
    func_init: int
    n: Callable[[str], int]  # tokens of a text


def dumps(value: Any) -> str:
    """A shape the API does not define, as the JSON text it is counted as."""
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return str(value)

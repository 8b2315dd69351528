"""What one count runs with: the encoding, whether it is the model's own, its image profile, and the
tokens of a text (which also tallies the characters handed to the tokenizer)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import orjson
import tiktoken

from ..values import value
from .images import ImageProfile

Counted = tuple[int, bool]  # (tokens, exact)


@value
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


def count_plain(value: Any, n: Callable[[str], int]) -> Counted:
    """A completions prompt or embeddings input, with ``n`` the tokens of a text: a string, token ids, or a
    list of either; any other shape is counted as its JSON text, inexact."""
    if isinstance(value, str):
        return n(value), True
    if isinstance(value, list):
        if all(type(v) is int for v in value):
            return len(value), True
        total, exact = 0, True
        for v in value:
            if isinstance(v, list) and all(type(t) is int for t in v):
                total += len(v)
            elif isinstance(v, str):
                total += n(v)
            else:
                total, exact = total + n(dumps(v)), False
        return total, exact
    if value is None:
        return 0, True
    return n(dumps(value)), False

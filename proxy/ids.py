"""Unique ids without a uuid4 per request: a random per-process prefix and a counter (requests, leases,
objects)."""

from __future__ import annotations

import itertools
import os
from collections.abc import Iterator


def ids(kind: str) -> Iterator[str]:
    """``kind`` + 12 random hex digits + ``-`` + a hex counter: unique across processes, cheap per id."""
    prefix = f"{kind}{os.urandom(6).hex()}-"
    return (f"{prefix}{n:x}" for n in itertools.count(1))

"""``@value``: the frozen, slotted dataclass every typed value between quotagate's layers is declared with.

Frozen to the type checker (mypy strict refuses an assignment to a field anywhere in proxy/, tests/ and
bench/), a plain slotted dataclass at run time, hashed by its fields as a frozen one is. Why not
``@dataclass(frozen=True)``: on CPython 3.11 its ``__init__`` sets each field through
``object.__setattr__``, 6x the cost of a plain one (1.6 us vs 0.27 us for 16 fields, measured with
timeit), and a request builds a dozen such values (admission, lease meta, holds, usage, relayed, ledger
record, metrics outcome): about 15 us of a 300 us request (py-spy, bench/ab.py).

``dataclasses.replace`` and ``dataclasses.fields`` work on these as on any dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar, dataclass_transform

T = TypeVar("T")


@dataclass_transform(frozen_default=True)
def value(cls: type[T]) -> type[T]:
    return dataclass(slots=True, unsafe_hash=True)(cls)

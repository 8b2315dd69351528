"""The per-message count cache: an LRU keyed by everything that affects a count, bounded by the summed
size of its keys, safe to share across threads."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

from ..values import value
from .context import Counted, Ctx

_ENTRY_OVERHEAD = 64  # bytes charged per cache entry on top of its key text


@value
class CacheStats:
    hits: int
    misses: int
    entries: int
    size: int  # characters/bytes charged against cache_bytes
    evictions: int
    encoded_chars: int  # characters handed to the tokenizer by this Counter (misses and uncached text)


class LRU:
    """Bounded by the summed size of its keys; a lock guards every read and write."""

    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self._data: OrderedDict[Hashable, tuple[int, bool, int]] = OrderedDict()
        self._lock = threading.Lock()
        self.size = self.hits = self.misses = self.evictions = self.encoded_chars = 0

    def lookup(self, slots: list[Slot]) -> None:
        """Fill ``slot.value`` for every cached slot, under one lock acquisition."""
        data = self._data
        with self._lock:
            for slot in slots:
                entry = data.get(slot.key) if slot.key is not None else None
                if entry is None:
                    self.misses += 1
                    continue
                data.move_to_end(slot.key)
                self.hits += 1
                slot.value = (entry[0], entry[1])

    def put(self, key: Hashable, value: Counted, size: int) -> None:
        size += _ENTRY_OVERHEAD
        if size > self.max_size:
            return
        with self._lock:
            old = self._data.pop(key, None)
            if old is not None:
                self.size -= old[2]
            self._data[key] = (value[0], value[1], size)
            self.size += size
            while self.size > self.max_size:
                _, evicted = self._data.popitem(last=False)
                self.size -= evicted[2]
                self.evictions += 1

    def add_encoded(self, chars: int) -> None:
        with self._lock:
            self.encoded_chars += chars

    def stats(self) -> CacheStats:
        with self._lock:
            return CacheStats(self.hits, self.misses, len(self._data), self.size, self.evictions, self.encoded_chars)


class Slot:
    """One cacheable piece of a prompt: its bucket, cache key, size, and how to count it on a miss."""

    __slots__ = ("bucket", "count", "key", "obj", "size", "value")

    def __init__(
        self, bucket: str, key: Hashable | None, size: int, count: Callable[[Ctx, Any], Counted], obj: Any
    ) -> None:
        self.bucket, self.key, self.size, self.count, self.obj = bucket, key, size, count, obj
        self.value: Counted | None = None

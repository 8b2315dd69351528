"""The output histograms of one process, shared with every other through the store (``proxy/observed.py``
has the rule).

Off the hot path both ways: a served request's output tokens go into an in-process buffer (``record``), which
the accounting loop (``proxy/reaper.py``) adds to the store about once a second, one atomic add per (team,
model) slot; a reserve reads the quantile this process last computed (``output``), which the same loop
recomputes from the store's histograms about every 10 seconds, for the (team, model) pairs asked for. A pair
first asked for has no answer until the next refresh: the worst case is held meanwhile.

What cannot be written while the store is away stays buffered (bounded: past ``_PENDING_MAX`` slots the
buffer is dropped, these are statistics, not charges).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from .observed import ObservedPolicy, bucket, merged, quantile
from .settings import Settings
from .store.base import Store

log = logging.getLogger("quotagate.settle")
_PAIRS_MAX = 10_000  # (team, model) pairs whose quantile is kept; past it, forgotten and asked for afresh
_PENDING_MAX = 10_000
_READ_CHUNK = 1000


class ObservedOutputs:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        *,
        clock: Callable[[], float] = time.time,
        flush_seconds: float = 1.0,
        refresh_seconds: float = 10.0,
    ) -> None:
        self._store = store
        self._clock = clock
        self._flush_s = flush_seconds
        self._refresh_s = refresh_seconds
        self._policies = {name: ObservedPolicy.of(t) for name, t in settings.teams.items()}
        self._pending: dict[str, dict[int, int]] = {}  # slot key -> bucket -> count not yet in the store
        self._expires: dict[str, float] = {}
        self._wanted: set[tuple[str, str]] = set()
        self._known: dict[tuple[str, str], tuple[int, int | None]] = {}  # -> (samples in window, quantile)
        self._next_flush = 0.0
        self._next_refresh = 0.0

    def policy(self, team: str) -> ObservedPolicy:
        return self._policies.get(team) or ObservedPolicy()

    # ---- the hot path: dicts only ------------------------------------------------------------------------
    def record(self, team: str, model: str, output_tokens: int) -> None:
        """A served request's output tokens, for the histogram of its team and model."""
        key, expires = self.policy(team).slot_key(team, model, self._clock())
        counts = self._pending.get(key)
        if counts is None:
            if len(self._pending) >= _PENDING_MAX:
                log.warning("observed output buffer full (store away?): dropping %d slots", len(self._pending))
                self._pending.clear()
                self._expires.clear()
            counts = self._pending[key] = {}
            self._expires[key] = expires
        b = bucket(output_tokens)
        counts[b] = counts.get(b, 0) + 1

    def output(self, team: str, model: str) -> int | None:
        """The team's quantile of output tokens for ``model`` over its window, as of the last refresh; None
        while the window holds fewer than ``observed_min_samples`` (or the pair was never asked for)."""
        pair = (team, model)
        if pair not in self._wanted:
            if len(self._wanted) >= _PAIRS_MAX:
                self._wanted.clear()
                self._known.clear()
            self._wanted.add(pair)
        found = self._known.get(pair)
        if found is None or found[0] < self.policy(team).min_samples:
            return None
        return found[1]

    def samples(self, team: str, model: str) -> int:
        """Samples in the window as of the last refresh (0: none, or not refreshed yet)."""
        found = self._known.get((team, model))
        return found[0] if found is not None else 0

    # ---- the accounting loop -----------------------------------------------------------------------------
    async def tick(self) -> None:
        """Flush and refresh when each is due (called about every second)."""
        now = time.monotonic()
        if now >= self._next_flush:
            self._next_flush = now + self._flush_s
            await self.flush()
        if now >= self._next_refresh and self._wanted:
            self._next_refresh = now + self._refresh_s
            await self.refresh()

    async def flush(self) -> None:
        """Add the buffered counts to the store, one atomic add per slot; what fails stays buffered, and
        the first error (``StoreUnavailable``: the store is away) is raised once the rest is written."""
        if not self._pending:
            return
        pending, expires = self._pending, self._expires
        self._pending, self._expires = {}, {}
        keys = list(pending)
        outcomes = await asyncio.gather(
            *(self._store.add_histogram(k, pending[k], expires[k]) for k in keys), return_exceptions=True
        )
        failed: BaseException | None = None
        for key, outcome in zip(keys, outcomes, strict=True):
            if isinstance(outcome, BaseException):
                failed = failed or outcome
                self._merge_back(key, pending[key], expires[key])
        if failed is not None:
            raise failed

    def _merge_back(self, key: str, counts: dict[int, int], expires: float) -> None:
        mine = self._pending.setdefault(key, {})
        for b, n in counts.items():
            mine[b] = mine.get(b, 0) + n
        self._expires[key] = expires

    async def refresh(self) -> None:
        """Recompute the quantile of every pair asked for from the store's histograms over its window."""
        now = self._clock()
        wanted = {pair: self.policy(pair[0]).window_keys(*pair, now) for pair in self._wanted}
        keys = [k for ks in wanted.values() for k in ks]
        found: dict[str, dict[int, int]] = {}
        for i in range(0, len(keys), _READ_CHUNK):
            found.update(await self._store.histograms(keys[i : i + _READ_CHUNK]))
        for (team, model), ks in wanted.items():
            counts = merged(found.get(k, {}) for k in ks)
            self._known[(team, model)] = (sum(counts.values()), quantile(counts, self.policy(team).quantile))

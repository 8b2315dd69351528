"""Reservations sized from observed output (``reserve: observed``): the histogram, its quantile, and which
limits hold the observed amount instead of the worst case. No I/O (``observed_outputs.py`` keeps the
histograms in the store).

A worst-case hold is counted input + the output cap: a 4096-token cap on requests that answer in 250 holds
16x what they use, and a budget refuses long before it is spent. An observed hold is counted input +
min(cap, q), q the ``reserve_quantile`` (default p99) of the output tokens the team's requests to that model
produced over ``observed_window`` (default 24h), read from a log-scale histogram every replica adds to. Below
``observed_min_samples`` in the window (cold start, a new model) the hold is the worst case. Settlement
charges what was used, as always.

The bound. A counter admits a hold only while ``used + reserved + amount <= limit``; settling request i moves
its hold ``h_i`` out of ``reserved`` and its actual usage ``a_i`` into ``used``. Between the last admission
on a counter and any later moment, only settlements change it, so::

    used <= limit + sum over requests in flight at that last admission of max(0, a_i - h_i)
         <= limit + sum over the same requests of (cap_i - reserved_output_i)

in tokens (the counted input taken as exact, as for the worst case), and in micro-USD with
``worst_micro_usd_i - reserved_micro_usd_i``. With N requests in flight at most, the overshoot is at most
N x (cap - q) tokens; a worst-case hold (``q = cap``) never overshoots. A reaped lease commits its hold, so
it adds nothing. ``tests/test_observed_reservations.py`` checks the bound on random interleavings.

Buckets: edges 0, 1, 2, ... growing by 1.25x to past 2**24 (73 buckets); a count in bucket k is a value in
(EDGES[k-1], EDGES[k]]. The quantile is the upper edge of the bucket it falls in, so it never under-states
the sample's quantile, and over-states it by under 25%. A value past the last edge lands in an overflow
bucket whose quantile is "no bound" (the worst case).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable, Mapping, Sequence

from .limits import Limit
from .settings import BudgetSettings, TeamSettings
from .settings_budget import duration_seconds
from .store.base import hash_tag
from .values import value


def _edges(top: int = 2**24, growth: float = 1.25) -> tuple[int, ...]:
    out = [0, 1]
    while out[-1] < top:
        out.append(max(out[-1] + 1, math.ceil(out[-1] * growth)))
    return tuple(out)


EDGES = _edges()  # a stored histogram's bucket k is EDGES[k]: changing them needs a new key version (h1)
OVERFLOW = len(EDGES)  # the bucket of a value past the last edge


def bucket(tokens: int) -> int:
    """The bucket holding ``tokens`` output tokens: the first whose upper edge is at least that."""
    return bisect.bisect_left(EDGES, max(tokens, 0))


def quantile(counts: Mapping[int, int], q: float) -> int | None:
    """The upper edge of the bucket holding the ``q`` quantile (None: empty, or past the last edge)."""
    total = sum(n for n in counts.values() if n > 0)
    if total == 0:
        return None
    rank = max(1, math.ceil(q * total))  # the sample's rank-th smallest value
    seen = 0
    for k in sorted(counts):
        seen += max(counts[k], 0)
        if seen >= rank:
            return EDGES[k] if k < OVERFLOW else None
    return None


def merged(histograms: Iterable[Mapping[int, int]]) -> dict[int, int]:
    out: dict[int, int] = {}
    for h in histograms:
        for k, n in h.items():
            out[k] = out.get(k, 0) + n
    return out


@value
class ObservedPolicy:
    """A team's observed-reservation settings, read once."""

    quantile: float = 0.99
    window_s: float = 86_400.0
    min_samples: int = 100

    @classmethod
    def of(cls, team: TeamSettings | None) -> ObservedPolicy:
        if team is None:
            return cls()
        return cls(team.reserve_quantile, duration_seconds(team.observed_window), team.observed_min_samples)

    @property
    def slot_s(self) -> int:
        """The histogram's time slot: a 24th of the window (an hour of a day), a minute at least; the
        trailing window is the sum of its slots, so it is exact to within one slot."""
        return max(60, int(self.window_s) // 24)

    def slot_key(self, team: str, model: str, now: float) -> tuple[str, float]:
        """The key of the slot ``now`` falls in, and when it expires (once it has left the window)."""
        index = int(now // self.slot_s)
        return _key(team, model, self.slot_s, index), (index + 1) * self.slot_s + self.window_s

    def window_keys(self, team: str, model: str, now: float) -> list[str]:
        last = int(now // self.slot_s)
        n = math.ceil(self.window_s / self.slot_s)
        return [_key(team, model, self.slot_s, i) for i in range(last - n + 1, last + 1)]


def _key(team: str, model: str, slot_s: int, index: int) -> str:
    return f"{hash_tag(team)}:h1:out:{model}:{slot_s}:{index}"


def observed_limit(lim: Limit, team: TeamSettings | None) -> bool:
    """Whether ``lim`` holds the observed amount: its budget's own ``reserve``, else the team's (a TPM limit
    follows its team; the org's limits are shared by every team, so only the org budget's own setting
    counts). Request and concurrency limits hold 1 either way."""
    if lim.unit not in ("tokens", "usd"):
        return False
    own = lim.budget.reserve if isinstance(lim.budget, BudgetSettings) else None
    if own is not None:
        return own == "observed"
    return lim.scope != "org" and team is not None and team.reserve == "observed"


@value
class Sizing:
    """What one request may use, for sizing its holds: the counted input, the output cap reserved for the
    worst case, and the worst-case price with a given number of output tokens (the tier and cache-write
    rules of ``Price.worst_case``)."""

    input_tokens: int
    output_cap: int
    micro_usd: Callable[[int], int]


def observed_holds(
    lims: Sequence[Limit], team: TeamSettings | None, sizing: Sizing, output: Callable[[], int | None]
) -> dict[str, tuple[int, int]]:
    """limit key -> (tokens, micro-USD) to hold instead of the worst case, for the limits in observed mode;
    empty when none is, or ``output()`` (the quantile; read only when needed) has no answer yet, or it is
    no smaller than the cap."""
    which = [lim.key for lim in lims if observed_limit(lim, team)]
    if not which:
        return {}
    q = output()
    if q is None or q >= sizing.output_cap:
        return {}
    amounts = (sizing.input_tokens + q, sizing.micro_usd(q))
    return dict.fromkeys(which, amounts)


def largest_hold(
    lims: Iterable[Limit], worst: tuple[int, int], sized: Mapping[str, tuple[int, int]]
) -> tuple[int, int] | None:
    """(tokens, micro-USD) of the largest hold any token or USD limit has: the worst case if any of them
    holds it, else the observed amount; None when only request or concurrency limits apply. What
    ``x-quotagate-reserved-tokens`` says, and what a reaped lease is recorded as."""
    amounts = [sized.get(lim.key, worst) for lim in lims if lim.unit in ("tokens", "usd")]
    return max(amounts) if amounts else None

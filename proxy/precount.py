"""Pre-count factors for models without a public tokenizer (Anthropic's): the bound reservations use.

A protocol whose local count is only an approximation (``Adapter.precount_scaled``) has it multiplied by
the model's factor before the context cap and the reservation see it, so that a budget never overshoots
on a count that came out low. The factor is learned from traffic: after each request the provider
reports its input for, the ratio ``provider input / local count`` is kept (the latest ``window`` per
model), and the factor is a high quantile of those ratios times a small margin; until ``min_samples``
ratios are known it is the configured ``factor``. It never goes below ``min_factor``.

The observations persist in the store as ledger rows (``counted_input`` is the local count,
``input_tokens`` the provider's), so a restarted process relearns the factor from its recent ledger.
No I/O here except ``load``.
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from dataclasses import dataclass

from .count import Estimate, Parts
from .settings import PrecountSettings, Settings
from .store.base import Store

log = logging.getLogger("quotagate")

_MARGIN = 1.02


@dataclass(frozen=True, slots=True)
class Factor:
    value: float
    learned: bool  # from at least ``min_samples`` observations
    samples: int


class _Model:
    __slots__ = ("cfg", "ratios", "value")

    def __init__(self, cfg: PrecountSettings) -> None:
        self.cfg = cfg
        self.ratios: deque[float] = deque(maxlen=cfg.window)
        self.value = cfg.factor

    def add(self, ratio: float) -> None:
        self.ratios.append(ratio)
        if len(self.ratios) >= self.cfg.min_samples:
            ordered = sorted(self.ratios)
            q = ordered[min(len(ordered) - 1, math.ceil(self.cfg.quantile * len(ordered)) - 1)]
            self.value = max(self.cfg.min_factor, q * _MARGIN)


class Precount:
    def __init__(self, settings: Settings) -> None:
        self._models = {name: _Model(m.precount or PrecountSettings()) for name, m in settings.models.items()}

    def factor(self, model: str) -> Factor:
        m = self._models.get(model)
        if m is None:
            return Factor(1.0, False, 0)
        return Factor(m.value, len(m.ratios) >= m.cfg.min_samples, len(m.ratios))

    def bound(self, model: str, est: Estimate) -> Estimate:
        """``est`` scaled by the model's factor (the extra tokens go to the latest turn)."""
        factor = self.factor(model).value
        tokens = math.ceil(est.tokens * factor)
        p = est.parts
        new = p.new + tokens - est.tokens
        return Estimate(tokens, False, Parts(p.system, p.tools, p.history, new), est.unseen, est.tokens)

    def observe(self, model: str, local: int, provider: int) -> None:
        m = self._models.get(model)
        if m is not None and local > 0 and provider > 0:
            m.add(provider / local)

    def samples(self) -> list[tuple[str, float]]:
        return [(name, m.value) for name, m in self._models.items()]

    async def load(self, store: Store, endpoints: frozenset[str], *, days: float = 7.0, limit: int = 5000) -> int:
        """Relearn from the ledger's recent rows on ``endpoints`` (those counted without the model's
        tokenizer); the number of observations taken."""
        if not endpoints:
            return 0
        try:
            rows = await store.ledger(time.time() - days * 86400, limit=limit)
        except Exception as e:  # the factor starts from config; the store's own errors are logged elsewhere
            log.warning("pre-count factors not relearned from the ledger: %s", e)
            return 0
        taken = 0
        for r in reversed(rows):  # oldest first: the window keeps the latest
            if r.endpoint in endpoints and r.charged and r.counted_input and r.input_tokens and not r.error:
                self.observe(r.model, r.counted_input, r.input_tokens)
                taken += 1
        return taken

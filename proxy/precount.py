"""Pre-count factors for models without a public tokenizer (Anthropic's): the bound reservations use.

A protocol whose local count is only an approximation (``Adapter.precount_scaled``) has it multiplied by
the model's factor before the context cap and the reservation see it, so that a budget never overshoots
on a count that came out low. The factor is learned from traffic: after each request the provider
reports its input for, the ratio ``provider input / local count`` is kept (the latest ``window`` per
model), and the factor is a high quantile of those ratios times a small margin; until ``min_samples``
ratios are known it is the configured ``factor``. It never goes below ``min_factor``.

The observations persist as ledger rows, in the store or the ``ledger:`` database (``counted_input`` is
the local count, ``input_tokens`` the provider's), so a restarted process relearns the factor from its recent
ledger.

With ``precount.source: provider`` the provider's own token-count endpoint is asked instead (Anthropic's
``/messages/count_tokens``), cached per count body; when it does not answer in ``provider_timeout_s`` (or
fails) the local bound is used, and the fallback is logged once per model.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from collections import OrderedDict, deque

import orjson

from .count import Estimate, Parts
from .ledger_sink import LedgerReads
from .parse import ParsedRequest
from .settings import PrecountSettings, Settings
from .upstream import Upstream
from .values import value

log = logging.getLogger("quotagate")

_MARGIN = 1.02
_CACHED_COUNTS = 10_000


@value
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
    def __init__(self, settings: Settings, upstream: Upstream | None = None) -> None:
        self._s = settings
        self._upstream = upstream
        self._counts: OrderedDict[bytes, int] = OrderedDict()  # digest of a count body -> the provider's count
        self._fallback_logged: set[str] = set()
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
        return Estimate(
            tokens, False, Parts(p.system, p.tools, p.history, new, p.history_messages), est.unseen, est.tokens
        )

    async def provider_count(self, model: str, req: ParsedRequest, upstream_model: str) -> int | None:
        """The provider's count of ``req`` where the model asks for it (``precount.source: provider``) and the
        protocol has a count endpoint; None: count locally."""
        settings = self._s.models.get(model)
        cfg = settings.precount if settings is not None else None
        call = req.endpoint.protocol.count_request(req, upstream_model)
        if settings is None or cfg is None or cfg.source != "provider" or call is None or self._upstream is None:
            return None
        path, body = call
        key = hashlib.sha256(orjson.dumps(body, option=orjson.OPT_SORT_KEYS)).digest()
        if (hit := self._counts.get(key)) is not None:
            self._counts.move_to_end(key)
            return hit
        answer = await self._upstream.post_json(
            self._s.providers[settings.provider], path, body, cfg.provider_timeout_s
        )
        n = answer.get("input_tokens") if isinstance(answer, dict) else None
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            if model not in self._fallback_logged:
                self._fallback_logged.add(model)
                log.warning("model %s: the provider's token count did not answer in time; counting locally", model)
            return None
        self._counts[key] = n
        if len(self._counts) > _CACHED_COUNTS:
            self._counts.popitem(last=False)
        return n

    @staticmethod
    def counted_by_provider(est: Estimate, tokens: int) -> Estimate:
        """``est`` (the local count, before any unseen input is added) replaced by the provider's ``tokens``;
        the difference goes to the latest turn."""
        p = est.parts
        new = max(p.new + tokens - est.tokens, 0)
        return Estimate(tokens, False, Parts(p.system, p.tools, p.history, new, p.history_messages))

    def observe(self, model: str, local: int, provider: int) -> None:
        m = self._models.get(model)
        if m is not None and local > 0 and provider > 0:
            m.add(provider / local)

    def samples(self) -> list[tuple[str, float]]:
        return [(name, m.value) for name, m in self._models.items()]

    async def load(self, store: LedgerReads, endpoints: frozenset[str], *, days: float = 7.0, limit: int = 5000) -> int:
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

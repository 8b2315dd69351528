"""One governed request, in order: admit (auth -> parse -> count -> policy -> reserve) -> forward -> finish
(settle -> record).

Each step hands the next a frozen value: ``admit.Admission`` (who, which model, what was counted and
reserved) with the ``Outbound`` request, then ``forward.Relayed`` (what came back); ``finish`` builds the
ledger record, the metrics and the log line from the two. The steps never name an endpoint: what depends
on the wire protocol is asked of the endpoint's adapter (proxy/protocols/).

Raw ASGI on purpose (proxy/asgi.py). Whatever happens, exactly one ``finish`` runs per request: it
settles the reservation, queues the ledger record and records metrics, from an app-owned task so that a
client disconnect or a shutdown cannot skip it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from .admit import Admission, Admitter, Refused
from .asgi import Receive, Scope, Send
from .auth import KeyRing
from .count import Counter
from .finish import Finisher
from .forward import Forwarder, Relayed, answer_error
from .ledger import Ledger
from .metrics import Metrics
from .parse import Endpoint
from .precount import Precount
from .settings import Settings
from .settle import Accountant
from .upstream import Upstream

if TYPE_CHECKING:  # proxy.objects serves the stateful endpoints; routes.Router hands its Ownership here
    from .objects import Ownership


class Pipeline:
    def __init__(
        self,
        settings: Settings,
        keyring: KeyRing,
        counter: Counter,
        accountant: Accountant,
        upstream: Upstream,
        ledger: Ledger,
        metrics: Metrics,
        spawn: Callable[[Awaitable[None]], None],
        precount: Precount,
    ) -> None:
        self._admitter = Admitter(settings, keyring, counter, accountant, precount)
        self._finisher = Finisher(settings, accountant, ledger, metrics, spawn, precount)
        self._forwarder = Forwarder(settings, counter, accountant, upstream, self._finisher.attempt_failed)

    @property
    def objects(self) -> Ownership | None:
        return self._admitter.objects

    @objects.setter
    def objects(self, ownership: Ownership | None) -> None:
        """Set by routes.Router, which serves what is recorded: checked at admission, recorded at the finish."""
        self._admitter.objects = self._finisher.objects = ownership

    async def handle(self, scope: Scope, receive: Receive, send: Send, endpoint: Endpoint) -> None:
        try:
            adm, out = await self._admitter.admit(endpoint, scope, receive)
        except Refused as refused:
            adm = refused.admission
            self._finisher.finish(adm, await answer_error(send, adm, refused.error, adm.provider))
            return
        relayed: Relayed | None = None
        try:
            relayed = await self._forwarder.forward(scope, receive, send, adm, out)
        finally:
            self._finisher.finish(adm, relayed or _unanswered(adm))
        if relayed.interrupted:
            raise asyncio.CancelledError  # a shutdown stopped the stream: finished above, now it may go on


def _unanswered(adm: Admission) -> Relayed:
    """Cancelled (a shutdown) while waiting on the provider: sent, so charged what was counted."""
    return Relayed(adm.provider, 0, time.perf_counter())

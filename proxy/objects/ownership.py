"""Which team each object created through quotagate belongs to: recorded in the store when the provider
creates it, looked up whenever a request names it."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from ..errors import NotFound, ProxyError, StoreUnavailable
from ..parse import Endpoint, ParsedRequest
from ..store.base import ObjectRecord, Store
from .routes import COMPLETION, CONVERSATION, RESPONSE, not_found

log = logging.getLogger("quotagate.objects")

_CREATED_BY = {"responses": RESPONSE, "chat": COMPLETION}  # governed endpoint -> what it creates


class Ownership:
    """Which team each object created through quotagate belongs to: the one place that says yes or 404."""

    def __init__(self, store: Store, clock: Callable[[], float]) -> None:
        self._store = store
        self._clock = clock
        # Recorded here, the store write still under way: a client that names an id right after receiving
        # it must not get 404 because the write is a little late.
        self._fresh: dict[tuple[str, str], ObjectRecord] = {}

    def created(self, endpoint: Endpoint | str, object_id: str, team: str | None, provider: str) -> Awaitable[None]:
        """Record an id the provider created for ``team``'s request (a governed endpoint's, or a kind): known
        in this process at once, in the store once the returned awaitable has run (a store outage only logs)."""
        kind = _CREATED_BY.get(endpoint.name) if isinstance(endpoint, Endpoint) else endpoint
        if kind is None or not team:
            return self._save(None)
        record = ObjectRecord(kind, object_id, team, provider, self._clock())
        self._fresh[(kind, object_id)] = record
        return self._save(record)

    async def _save(self, record: ObjectRecord | None) -> None:
        if record is None:
            return
        try:
            await self._store.put_object(record)
        except StoreUnavailable as e:  # the owner's later requests naming it get 404
            log.warning("%s %s of team %s not recorded: %s", record.kind, record.object_id, record.team, e.message)
        finally:
            self._fresh.pop((record.kind, record.object_id), None)

    async def owned(self, kind: str, object_id: str, team: str, refusal: ProxyError | None = None) -> ObjectRecord:
        """The record of ``team``'s object ``object_id`` (deleted or not: the provider says whether it is still
        there), else ``refusal`` (a 404) is raised."""
        record = self._fresh.get((kind, object_id))
        if record is None:
            record = (await self._store.find_objects(kind, [object_id])).get(object_id)
        if record is None or record.team != team:
            raise refusal or not_found(kind, object_id)
        return record

    async def owned_ids(self, kind: str, team: str, object_ids: Sequence[str]) -> set[str]:
        found = await self._store.find_objects(kind, object_ids)
        found.update({i: r for (k, i), r in self._fresh.items() if k == kind and i in object_ids})
        return {i for i, r in found.items() if r.team == team and not r.deleted}

    async def deleted(self, record: ObjectRecord) -> None:
        try:
            await self._store.delete_object(record.kind, record.object_id)
        except StoreUnavailable as e:  # only the list reads the mark; the provider no longer lists it anyway
            log.warning("%s %s deleted upstream, not marked: %s", record.kind, record.object_id, e.message)

    async def check_references(self, team: str, req: ParsedRequest) -> None:
        """POST /v1/responses (and /compact) may continue only the caller team's response or conversation."""
        if req.endpoint.stored_context:
            await self.check_body(team, req.body)

    async def check_body(self, team: str, body: dict[str, Any]) -> ObjectRecord | None:
        """Check ``previous_response_id`` and ``conversation``; the previous response's record, if any."""
        previous = body.get("previous_response_id")
        record = None
        if isinstance(previous, str):
            refusal = NotFound(
                f"Previous response with id '{previous}' not found.",
                code="previous_response_not_found",
                param="previous_response_id",
            )
            record = await self.owned(RESPONSE, previous, team, refusal)
        conversation = body.get("conversation")
        if isinstance(conversation, dict):
            conversation = conversation.get("id")
        if isinstance(conversation, str):
            refusal = NotFound(f"Conversation with id '{conversation}' not found.", param="conversation")
            await self.owned(CONVERSATION, conversation, team, refusal)
        return record

"""GET /v1/chat/completions: the providers' lists of stored chat completions, only the caller team's
entries kept, read page by page until the caller's page is full (or ``LIST_PAGES`` pages were read)."""

from __future__ import annotations

import time
from typing import Any
from urllib.parse import parse_qsl, urlencode

import aiohttp
import orjson

from ..asgi import Scope, Send, respond
from ..errors import UpstreamError, normalise_upstream_error
from ..settings import Settings
from ..upstream import transport_error
from .ownership import Ownership
from .relay import Relay, Relayed
from .routes import COMPLETION
from .target import Targets

LIST_PAGE = 100  # provider list entries read per upstream page when filtering stored chat completions
LIST_PAGES = 10  # upstream pages read at most for one list request


class CompletionList:
    def __init__(self, settings: Settings, ownership: Ownership, targets: Targets, relay: Relay) -> None:
        self._s = settings
        self._ownership = ownership
        self._targets = targets
        self._relay = relay

    async def serve(self, scope: Scope, send: Send, team: str, rid: str) -> Relayed:
        query = parse_qsl(scope.get("query_string", b"").decode("latin-1"), keep_blank_values=True)
        asked = dict(query)
        limit, as_given = _limit(asked.get("limit"))
        params = [(k, v) for k, v in query if k not in ("limit", "after", "model")]
        providers, model = self._targets.providers(team, asked.get("model"))
        if model is not None:
            params.append(("model", model))
        after = asked.get("after") or None
        if after is not None:  # continue where the caller's last page ended, at that entry's provider
            at = (await self._ownership.owned(COMPLETION, after, team)).provider
            providers = providers[providers.index(at) :] if at in providers else [at]
        data: list[dict[str, Any]] = []
        more, pages, t_up = False, 0, time.perf_counter()
        for i, name in enumerate(providers):
            cursor = after if i == 0 else None
            while True:
                if pages == LIST_PAGES:  # give up on filling the page: the rest is for the next one
                    more = True
                    break
                size = as_given if pages == 0 and as_given is not None else str(LIST_PAGE)
                page = [*params, ("limit", size), *([("after", cursor)] if cursor else [])]
                listed = await self._page(scope, name, page, rid)
                pages += 1
                if listed is None:  # this provider keeps no stored completions
                    break
                items, upstream_more = listed
                owned = await self._ownership.owned_ids(COMPLETION, team, [item["id"] for item in items])
                mine = [item for item in items if item["id"] in owned]
                taken = mine[: limit - len(data)]
                data += taken
                if len(data) == limit:
                    more = len(mine) > len(taken) or upstream_more or i + 1 < len(providers)
                    break
                if not upstream_more or not items:
                    break
                cursor = items[-1]["id"]
            if len(data) == limit or pages == LIST_PAGES:
                break
        await respond(send, 200, {"content-type": "application/json"}, orjson.dumps(_page_body(data, more)), rid)
        return Relayed(200, time.perf_counter() - t_up)

    async def _page(
        self, scope: Scope, name: str, params: list[tuple[str, str]], rid: str
    ) -> tuple[list[dict[str, Any]], bool] | None:
        """One page of provider ``name``'s list: its entries and whether it has more; None if it keeps none."""
        resp = await self._relay.request(
            scope, self._s.providers[name], "GET", f"/chat/completions?{urlencode(params)}", None, rid
        )
        try:
            raw = await resp.read()
        except (aiohttp.ClientError, TimeoutError) as e:
            raise transport_error(e, "body") from None
        finally:
            resp.release()
        if resp.status in (404, 405):
            return None
        if resp.status >= 400:
            raise normalise_upstream_error(resp.status, raw)
        try:
            page = orjson.loads(raw)
        except orjson.JSONDecodeError:
            page = None
        if not isinstance(page, dict) or not isinstance(page.get("data"), list):
            raise UpstreamError(502, {"message": "The upstream provider answered an unreadable list."})
        items = [d for d in page["data"] if isinstance(d, dict) and isinstance(d.get("id"), str)]
        return items, page.get("has_more") is True


def _page_body(data: list[dict[str, Any]], more: bool) -> dict[str, Any]:
    return {
        "object": "list",
        "data": data,
        "first_id": data[0]["id"] if data else None,
        "last_id": data[-1]["id"] if data else None,
        "has_more": more,
    }


def _limit(value: str | None) -> tuple[int, str | None]:
    """How many of the caller's entries to return, and the client's ``limit`` when it is one quotagate would
    not send itself: that goes upstream as given on the first page, for the provider to accept or refuse
    (validating it is the provider's job). An entry count quotagate cannot read is OpenAI's default, 20."""
    if value is None or value == "":
        return 20, None
    try:
        limit = int(value)
    except ValueError:
        return 20, value
    return min(max(limit, 1), 100), None if 1 <= limit <= 100 else value

"""The ledger in process (tests/inprocess.py): a burst of concurrent requests of every outcome leaves exactly
one row per request, under the id the client was answered with, with the tokens the provider reported for
that very request, and the rows add up to what the budget counters were charged; a failed-over attempt
has its own uncharged row; what is queued at shutdown is in the store when the gateway is back."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest
from aiohttp import web

from tests.inprocess import (
    KEYS,
    chat_answer,
    chat_stream,
    json_reply,
    running,
    sse_reply,
)


def usage_for(n: int) -> tuple[int, int]:
    """What the provider reports for request ``n``: (prompt, completion) tokens."""
    return 10 + n, 3 + 2 * n


async def by_marker(request: web.Request, body: Any) -> web.StreamResponse:
    """Answers each request by the marker in its last message: ``ok N``, ``stream N``, ``fail``."""
    marker = body["messages"][-1]["content"]
    kind, _, n = marker.partition(" ")
    if kind == "fail":
        return await json_reply({"error": {"message": "overloaded", "type": "server_error"}}, 500)(request, body)
    prompt, completion = usage_for(int(n))
    if kind == "stream":
        return await sse_reply(chat_stream(["a", "b"], prompt, completion))(request, body)
    return await json_reply(chat_answer("done", prompt, completion))(request, body)


def chat(marker: str, **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": marker}], "max_tokens": 64, **extra}


@pytest.mark.parametrize("store", ["sqlite", "memory"])
async def test_a_burst_of_every_outcome_leaves_one_row_per_request(tmp_path: Path, store: str) -> None:
    async with running(tmp_path, store) as gw:
        gw.provider.on("/v1/chat/completions", by_marker)
        embedding = {"object": "list", "data": [], "model": "text-embedding-3-small", "usage": {"prompt_tokens": 6}}
        gw.provider.on("/v1/embeddings", json_reply(embedding))
        long = "lorem ipsum dolor sit amet " * 800
        asks: list[tuple[str, dict[str, Any], str]] = (
            [("/v1/chat/completions", chat(f"ok {n}"), KEYS["search-app"]) for n in range(6)]
            + [("/v1/chat/completions", chat(f"stream {n}", stream=True), KEYS["search-batch"]) for n in range(6, 9)]
            + [("/v1/embeddings", {"model": "text-embedding-3-small", "input": "x y"}, KEYS["search-app"])] * 2
            + [("/v1/chat/completions", chat("ok 0"), "sk-wrong-wrong-wrong")] * 2
            + [("/v1/chat/completions", chat("fail"), KEYS["search-app"])] * 2
            + [("/v1/chat/completions", chat(long), KEYS["search-app"])]
            + [("/v1/chat/completions", chat("ok 0", max_tokens=6000), KEYS["research"])] * 2
            + [("/v1/chat/completions", chat("ok 0", model="offline"), KEYS["search-app"])]
        )

        answers: list[httpx.Response] = await asyncio.gather(*(gw.post(p, b, key=k) for p, b, k in asks))
        rows = await gw.ledger()

        assert len(rows) == len(asks) == 19
        by_id = {r.request_id: r for r in rows}
        assert len(by_id) == len(rows)
        assert set(by_id) == {a.headers["x-quotagate-request-id"] for a in answers}
        for a in answers:
            assert by_id[a.headers["x-quotagate-request-id"]].status == a.status_code
        assert Counter((r.status, r.outcome) for r in rows) == {
            (200, "ok"): 11,
            (401, "unauthorized"): 2,
            (500, "upstream_error"): 2,
            (400, "context_rejected"): 1,
            (429, "budget_exceeded"): 2,
            (502, "upstream_error"): 1,
        }

        # each served request has the usage the provider reported for it (the provider saw its id)
        for call in gw.provider.calls:
            row = by_id[call.headers["x-request-id"]]
            content = call.body["messages"][-1]["content"] if call.path == "/v1/chat/completions" else "embed"
            kind, _, n = content.partition(" ")
            if kind in ("ok", "stream"):
                prompt, completion = usage_for(int(n))
                assert (row.input_tokens, row.output_tokens, row.stream) == (prompt, completion, kind == "stream")
                assert row.cost_micro_usd == -(-(prompt * 150_000 + completion * 600_000) // 1_000_000)
            elif kind == "embed":
                assert (row.endpoint, row.input_tokens, row.output_tokens, row.cost_micro_usd) == (
                    "embeddings",
                    6,
                    0,
                    1,
                )
            else:
                assert (row.outcome, row.charged, row.cost_micro_usd) == ("upstream_error", False, 0)
        assert len(gw.provider.calls) == 6 + 3 + 2 + 2

        # the rows add up to what search's budgets were charged, and nothing is still held
        search = [r for r in rows if r.team == "search"]
        tokens = sum((r.input_tokens or 0) + (r.output_tokens or 0) for r in search if r.charged)
        cost = sum(r.cost_micro_usd for r in search)
        status = (await gw.admin("GET", "/admin/teams/search/budgets")).json()["status"]
        assert [(b["window"], b["used"], b["reserved"]) for b in status] == [("day", tokens, 0), ("month", cost, 0)]
        assert tokens > 0 and cost > 0


async def test_a_failed_over_attempt_has_its_own_uncharged_row(tmp_path: Path) -> None:
    async with running(tmp_path) as gw:
        gw.provider.on("/v1/chat/completions", json_reply(chat_answer("ok", prompt=10, completion=5)))
        r = await gw.post("/v1/chat/completions", chat("hello", model="resilient"))
        assert r.status_code == 200, r.text
        assert r.headers["x-quotagate-provider"] == "openai"
        rid = r.headers["x-quotagate-request-id"]
        (sent,) = gw.provider.bodies("/v1/chat/completions")
        assert sent["model"] == "gpt-4o-mini"

        rows = {row.request_id: row for row in await gw.ledger()}
        assert set(rows) == {f"{rid}.1", rid}
        attempt, served = rows[f"{rid}.1"], rows[rid]
        assert (attempt.provider, attempt.status, attempt.outcome, attempt.charged, attempt.cost_micro_usd) == (
            "down",
            502,
            "upstream_error",
            False,
            0,
        )
        assert (served.provider, served.status, served.outcome, served.charged) == ("openai", 200, "ok", True)
        assert served.cost_micro_usd == 30  # 10 x 1 + 5 x 4 (the config's price for this model)


async def test_rows_queued_at_shutdown_are_written(tmp_path: Path) -> None:
    async with running(tmp_path, ledger_flush_seconds=60) as gw:  # nothing is flushed while it runs
        gw.provider.on("/v1/chat/completions", json_reply(chat_answer("ok", prompt=10, completion=5)))
        ids = [(await gw.post("/v1/chat/completions", chat("hi"))).headers["x-quotagate-request-id"] for _ in range(3)]
    async with running(tmp_path) as again:  # the same SQLite file
        assert [r.request_id for r in await again.ledger()] == ids

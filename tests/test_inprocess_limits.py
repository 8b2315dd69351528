"""Budgets, rate limits and context caps in process (tests/inprocess.py), on the gateway's own clock: a team's
day-token and month-USD budgets and a key's budget refuse with OpenAI's 429 ``insufficient_quota`` once what
was settled leaves too little; RPM refuses with ``rate_limit_exceeded`` and the x-ratelimit-* headers until
the minute rolls over; a team's context cap rejects (or trims) before anything is sent. Every refusal is
answered before the provider is asked, and recorded as one uncharged ledger row."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.inprocess import KEYS, Harness, arrived, chat_answer, gated, json_reply, running


@pytest.fixture
async def gw(tmp_path: Path) -> AsyncIterator[Harness]:
    async with running(tmp_path) as h:
        yield h


def chat(text: str = "Summarise the report.", **extra: Any) -> dict[str, Any]:
    return {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": text}], **extra}


def quota_error(r: httpx.Response) -> dict[str, Any]:
    """The 429 of a budget: OpenAI's insufficient_quota, not to be retried."""
    assert r.status_code == 429, r.text
    assert r.headers["x-should-retry"] == "false"
    error: dict[str, Any] = r.json()["error"]
    assert (error["type"], error["code"], error["param"]) == ("insufficient_quota", "insufficient_quota", None)
    assert error["message"].startswith("You exceeded your current quota, please check your plan and billing details.")
    return error


async def test_day_token_budget_refuses_once_settled_usage_leaves_too_little(gw: Harness) -> None:
    # research: 5000 tokens a day. The first request reserves its worst case and is settled at what was used.
    gw.provider.on("/v1/chat/completions", json_reply(chat_answer("...", prompt=1200, completion=3000)))
    first = await gw.post("/v1/chat/completions", chat(max_tokens=3000), key=KEYS["research"])
    assert first.status_code == 200, first.text
    await gw.settled()  # settlement runs after the answer, in a task of the gateway's

    second = await gw.post("/v1/chat/completions", chat(max_tokens=1000), key=KEYS["research"])

    error = quota_error(second)
    assert "The team budget of team 'research' for this day (5000 tokens) cannot cover this request" in error["message"]
    assert "used 4200 tokens, held by requests in flight 0 tokens" in error["message"]
    assert error["message"].endswith("The budget renews in 11h59m30s.")  # the fixed clock: 12:00:30 UTC
    assert second.headers["retry-after"] == str(11 * 3600 + 59 * 60 + 30)
    assert second.headers["retry-after-ms"] == str((11 * 3600 + 59 * 60 + 30) * 1000)
    assert len(gw.provider.calls) == 1  # the refused request never reached the provider

    # a smaller request still fits what is left (800 tokens)
    small = await gw.post("/v1/chat/completions", chat("ok?", max_tokens=100), key=KEYS["research"])
    await gw.settled()
    assert small.status_code == 200, small.text

    rows = await gw.ledger()
    assert [(r.status, r.outcome, r.charged) for r in rows] == [
        (200, "ok", True),
        (429, "budget_exceeded", False),
        (200, "ok", True),
    ]
    assert rows[1].cost_micro_usd == 0 and rows[1].input_tokens is None
    assert rows[1].request_id == second.headers["x-quotagate-request-id"]


async def test_a_request_in_flight_holds_its_worst_case(gw: Harness) -> None:
    gate = asyncio.Event()
    gw.provider.on("/v1/chat/completions", gated(gate, json_reply(chat_answer("...", prompt=10, completion=20))))
    # research: 5000 tokens a day; the first request holds ~3000 while the provider works on it
    first = asyncio.create_task(gw.post("/v1/chat/completions", chat(max_tokens=3000), key=KEYS["research"]))
    await arrived(gw.provider, 1)

    second = await gw.post("/v1/chat/completions", chat(max_tokens=3000), key=KEYS["research"])

    error = quota_error(second)
    held = int(error["message"].split("held by requests in flight ")[1].split(" tokens")[0])
    assert 3000 < held < 3020 and "used 0 tokens" in error["message"]
    gate.set()
    assert (await first).status_code == 200
    await gw.settled()  # settled at what was used: 30 tokens, the hold released
    status = (await gw.admin("GET", "/admin/teams/research/budgets")).json()["status"]
    assert [(b["window"], b["used"], b["reserved"]) for b in status if b["unit"] == "tokens"] == [("day", 30, 0)]
    third = await gw.post("/v1/chat/completions", chat(max_tokens=3000), key=KEYS["research"])
    assert third.status_code == 200, third.text
    assert [r.outcome for r in await gw.ledger()] == ["ok", "budget_exceeded", "ok"]  # by arrival


async def test_month_usd_budget_refuses_in_dollars(gw: Harness) -> None:
    # interns: 0.01 USD (10000 micro-USD) a month; gpt-4o-mini costs 0.15 / 0.60 USD per 1M tokens
    gw.provider.on("/v1/chat/completions", json_reply(chat_answer("...", prompt=1000, completion=12_000)))
    first = await gw.post("/v1/chat/completions", chat(max_tokens=12_000), key=KEYS["interns"])
    assert first.status_code == 200, first.text  # worst case ~7200 micro-USD; charged 150 + 7200
    await gw.settled()

    again = await gw.post("/v1/chat/completions", chat(max_tokens=12_000), key=KEYS["interns"])

    error = quota_error(again)
    assert "The team budget of team 'interns' for this month (0.01 USD)" in error["message"]
    assert "used 0.007350 USD, held by requests in flight 0.000000 USD" in error["message"]
    assert error["message"].endswith("The budget renews in 515h59m30s.")  # at 2026-04-01 00:00 UTC
    assert again.headers["retry-after"] == str(21 * 86400 + 11 * 3600 + 59 * 60 + 30)
    rows = await gw.ledger()
    assert [(r.outcome, r.cost_micro_usd) for r in rows] == [("ok", 7350), ("budget_exceeded", 0)]

    status = (await gw.admin("GET", "/admin/teams/interns/budgets")).json()["status"]
    assert [(b["window"], b["unit"], b["used"], b["remaining"]) for b in status] == [("month", "usd", 7350, 2650)]


async def test_key_budget_refuses_only_that_key(gw: Harness) -> None:
    gw.provider.on("/v1/chat/completions", json_reply(chat_answer("...", prompt=20, completion=10)))
    # search-batch has a day budget of its own (1500 tokens); search-app shares only the team's
    refused = await gw.post("/v1/chat/completions", chat(max_tokens=2000), key=KEYS["search-batch"])
    admitted = await gw.post("/v1/chat/completions", chat(max_tokens=2000), key=KEYS["search-app"])
    fits = await gw.post("/v1/chat/completions", chat(max_tokens=500), key=KEYS["search-batch"])
    await gw.settled()

    error = quota_error(refused)
    assert "The key budget of team 'search' for this day (1500 tokens)" in error["message"]
    assert admitted.status_code == 200 and fits.status_code == 200
    assert len(gw.provider.calls) == 2
    rows = await gw.ledger()
    assert [(r.key_name, r.outcome) for r in rows] == [
        ("search-batch", "budget_exceeded"),
        ("search-app", "ok"),
        ("search-batch", "ok"),
    ]
    usage = (await gw.client.get("/v1/usage", headers={"authorization": f"Bearer {KEYS['search-app']}"})).json()
    (key_budget,) = usage["keys"]["search-batch"]
    assert (key_budget["scope"], key_budget["limit"], key_budget["used"]) == ("key", 1500, 30)


async def test_rpm_refuses_with_rate_limit_headers_until_the_minute_rolls_over(gw: Harness) -> None:
    gw.provider.on("/v1/chat/completions", json_reply(chat_answer("ok", prompt=5, completion=1)))
    remaining = []
    for _ in range(3):  # research: 3 requests a minute
        r = await gw.post("/v1/chat/completions", chat(max_tokens=10), key=KEYS["research"])
        assert r.status_code == 200, r.text
        assert (r.headers["x-ratelimit-limit-requests"], r.headers["x-ratelimit-reset-requests"]) == ("3", "30s")
        remaining.append(r.headers["x-ratelimit-remaining-requests"])
    assert remaining == ["2", "1", "0"]

    limited = await gw.post("/v1/chat/completions", chat(max_tokens=10), key=KEYS["research"])

    assert limited.status_code == 429, limited.text
    assert limited.json() == {
        "error": {
            "message": "Rate limit reached for gpt-4o-mini in team 'research' on requests per min (RPM): Limit 3, "
            "Used 3, Requested 1. Please try again in 30s.",
            "type": "requests",
            "param": None,
            "code": "rate_limit_exceeded",
        }
    }
    assert (limited.headers["retry-after"], limited.headers["retry-after-ms"]) == ("30", "30000")
    assert limited.headers["x-ratelimit-limit-requests"] == "3"
    assert limited.headers["x-ratelimit-remaining-requests"] == "0"
    assert "x-should-retry" not in limited.headers  # waiting helps

    gw.clock.advance(30)  # the next minute
    later = await gw.post("/v1/chat/completions", chat(max_tokens=10), key=KEYS["research"])
    assert later.status_code == 200 and later.headers["x-ratelimit-remaining-requests"] == "2"
    assert later.headers["x-ratelimit-reset-requests"] == "1m0s"

    assert len(gw.provider.calls) == 4
    assert [r.outcome for r in await gw.ledger()] == ["ok"] * 3 + ["rate_limited", "ok"]


async def test_context_cap_rejects_before_anything_is_sent(gw: Harness) -> None:
    long = "lorem ipsum dolor sit amet " * 800  # ~4000 tokens; search allows 3000 input tokens
    r = await gw.post("/v1/chat/completions", chat(long, max_tokens=10))

    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert (error["type"], error["code"], error["param"]) == (
        "invalid_request_error",
        "context_length_exceeded",
        "messages",
    )
    assert error["message"].startswith("This model's maximum context length is 3000 tokens. However, your messages")
    assert "team 'search' allows at most 3000 input tokens per request" in error["message"]
    assert gw.provider.calls == []
    (row,) = await gw.ledger()
    assert (row.status, row.outcome, row.charged, row.cost_micro_usd) == (400, "context_rejected", False, 0)
    assert row.counted_input is not None and f"resulted in {row.counted_input} tokens" in error["message"]

    # the Responses API's input is capped the same way
    r = await gw.post("/v1/responses", {"model": "gpt-4o-mini", "input": long, "max_output_tokens": 10})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    assert r.json()["error"]["param"] == "input"


async def test_context_cap_trims_the_oldest_turns(gw: Harness) -> None:
    # research trims to 120 input tokens: the system message and the last user turn stay
    gw.provider.on("/v1/chat/completions", json_reply(chat_answer("Sure.", prompt=40, completion=2)))
    history = [{"role": "system", "content": "You are a research assistant."}]
    for i in range(6):
        history.append({"role": "user", "content": f"Question {i}: " + "tell me more about the topic " * 4})
        history.append({"role": "assistant", "content": f"Answer {i}: " + "here is more on the topic " * 4})
    history.append({"role": "user", "content": "And finally?"})

    r = await gw.post(
        "/v1/chat/completions", {"model": "gpt-4o-mini", "messages": history, "max_tokens": 20}, key=KEYS["research"]
    )

    assert r.status_code == 200, r.text
    trimmed = int(r.headers["x-quotagate-trimmed-tokens"])
    assert trimmed > 0
    (sent,) = gw.provider.bodies("/v1/chat/completions")
    kept = sent["messages"]
    assert kept[0] == history[0] and kept[-1] == history[-1]
    assert 2 <= len(kept) < len(history)
    assert kept[1:] == history[len(history) - len(kept) + 1 :]  # the newest turns, in order
    (row,) = await gw.ledger()
    assert row.trimmed_tokens == trimmed and row.counted_input is not None and row.counted_input <= 120

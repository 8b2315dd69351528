"""What the ledger keeps for analysis (issue 12): each request's counted input by part, the output cap it went
out with, the price version it was charged at, its end user and tags, on every store; and a SQLite ledger
written by the previous release (schema 3, tests/data/ledger-schema3.db) opens, keeps every row and gains
the new columns."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from proxy.attribution import MAX_END_USER, MAX_TAG, MAX_TAGS, tags_from_headers
from proxy.settings import parse
from proxy.store.base import LedgerRecord
from proxy.store.sqlite import SqliteStore
from proxy.store.sqlite_schema import SCHEMA_VERSION
from tests.inprocess import KEYS, chat_answer, config, json_reply, running

FIXTURE = Path(__file__).parent / "data" / "ledger-schema3.db"

CONVERSATION = [
    {"role": "system", "content": "You answer questions about the search index in one short sentence."},
    {"role": "user", "content": "What is an inverted index?"},
    {"role": "assistant", "content": "A map from each term to the documents that contain it."},
    {"role": "user", "content": "And a posting list?"},
]


@pytest.mark.parametrize("store", ["sqlite", "memory"])
async def test_a_request_is_recorded_with_its_parts_cap_price_user_and_tags(tmp_path: Path, store: str) -> None:
    async with running(tmp_path, store) as gw:
        gw.provider.on("/v1/chat/completions", json_reply(chat_answer("ok", 40, 5)))
        body = {"model": "gpt-4o-mini", "messages": CONVERSATION, "user": "u-123", "max_tokens": 50}
        r = await gw.post("/v1/chat/completions", body, headers={"x-quotagate-tags": " checkout, beta ,checkout,"})
        assert r.status_code == 200
        body = {"model": "gpt-4o-mini", "messages": CONVERSATION[-1:], "safety_identifier": "sid-9", "user": "u-1"}
        assert (await gw.post("/v1/chat/completions", body)).status_code == 200
        first, second = await gw.new_rows()
    assert first.input_system and first.input_history and first.input_new and first.input_tools == 0
    assert first.input_system + first.input_tools + first.input_history + first.input_new == first.counted_input
    assert (first.output_cap, first.end_user, first.tags) == (50, "u-123", "checkout,beta")
    assert first.history_messages == 2  # the first question and its answer
    assert first.price_version == "prices.yaml@2026-11-01"  # gpt-4o-mini's price is the shipped table's
    # no cap from the client: the team's max_output_tokens (2000) is injected, and recorded as sent
    assert (second.output_cap, second.end_user, second.tags) == (2000, "sid-9", None)
    assert (second.input_system, second.input_history, second.history_messages) == (0, 0, None)
    assert second.input_new == second.counted_input


async def test_a_refused_request_keeps_who_it_was_for(tmp_path: Path) -> None:
    async with running(tmp_path, "sqlite") as gw:
        big = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "word " * 5000}], "user": "u-8"}
        r = await gw.post("/v1/chat/completions", big, headers={"x-quotagate-tags": "t2"})
        assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
        rows = await gw.new_rows()
    (refused,) = rows
    assert (refused.outcome, refused.end_user, refused.tags) == ("context_rejected", "u-8", "t2")
    assert refused.counted_input is not None and refused.counted_input > 3000
    assert refused.input_new == refused.counted_input


def test_a_price_set_in_the_config_is_versioned_by_its_digest() -> None:
    def price_version(price: dict[str, Any]) -> str:
        from proxy.pricing import price_of

        raw = {"providers": {"p": {"base_url": "http://x/v1"}}, "models": {"m": {"provider": "p", "price": price}}}
        return price_of(parse(raw, env={}).models["m"]).version

    a, b = price_version({"input": 1, "output": 2}), price_version({"input": 1, "output": 3})
    assert a.startswith("config:") and b.startswith("config:") and a != b
    assert price_version({"output": 2, "input": 1}) == a  # the same price, the same version


def test_tags_are_bounded_not_refused() -> None:
    many = ",".join(f"t{i}" for i in range(40))
    assert tags_from_headers([(b"x-quotagate-tags", many.encode())]) == ",".join(f"t{i}" for i in range(MAX_TAGS))
    long = "x" * 500
    assert tags_from_headers([(b"x-quotagate-tags", long.encode())]) == "x" * MAX_TAG
    assert tags_from_headers([(b"x-quotagate-tags", b"a"), (b"x-quotagate-tags", b"b, a")]) == "a,b"
    assert tags_from_headers([(b"x-quotagate-tags", b" , ,")]) is None


async def test_an_end_user_is_bounded(tmp_path: Path) -> None:
    async with running(tmp_path, "memory") as gw:
        gw.provider.on("/v1/chat/completions", json_reply(chat_answer("ok", 9, 2)))
        body = {"model": "gpt-4o-mini", "messages": CONVERSATION[-1:], "user": "u" * 1000}
        assert (await gw.post("/v1/chat/completions", body)).status_code == 200
        (row,) = await gw.new_rows()
    assert row.end_user == "u" * MAX_END_USER


async def test_a_ledger_written_by_the_previous_release_opens_with_every_row(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    shutil.copy(FIXTURE, path)
    with sqlite3.connect(path) as con:
        assert con.execute("SELECT version FROM schema_version").fetchone() == (3,)
        before = con.execute("SELECT request_id, cost_micro_usd, usage_raw FROM ledger ORDER BY rowid").fetchall()
    assert len(before) == 7
    store = SqliteStore(path)
    await store.open()
    try:
        rows = await store.ledger(0.0, limit=100)
        assert sorted((r.request_id, r.cost_micro_usd, r.usage_raw) for r in rows) == sorted(before)
        assert all(r.version == 1 and r.input_system is None and r.price_version is None for r in rows)
        new = LedgerRecord(
            request_id="qg-new", ts=1764550000.0, team="search", key_name="k1", model="gpt-4o-mini",
            provider="openai", endpoint="chat", stream=False, status=200, outcome="ok", counted_input=30,
            counted_output=None, input_tokens=30, cached_input_tokens=0, output_tokens=4, reasoning_tokens=0,
            cost_micro_usd=7, latency_ms=3.0, ttft_ms=None, input_system=10, input_tools=0, input_history=12,
            input_new=8, output_cap=64, price_version="prices.yaml@2026-11-01", end_user="u-1", tags="a,b",
        )  # fmt: skip
        await store.write_ledger([new])
        (got,) = [r for r in await store.ledger(0.0, limit=100) if r.request_id == "qg-new"]
        assert got == new
        assert await store.get_overrides() == {"search": [{"window": "day", "usd": 5}]}
        assert [k.name for k in await store.list_keys()] == ["k2"]
    finally:
        await store.close()
    with sqlite3.connect(path) as con:
        assert con.execute("SELECT version FROM schema_version").fetchone() == (SCHEMA_VERSION,)


@pytest.mark.parametrize("store", ["sqlite", "memory"])
async def test_a_huge_output_cap_or_seed_does_not_make_the_row_unwritable(tmp_path: Path, store: str) -> None:
    """Found by the malformed-bodies fuzz: a max_tokens past 2**63 (orjson reads integers up to 2**64 - 1;
    forwarded as sent, for the provider to refuse) overflowed SQLite's signed 64-bit integers in its ledger
    row, and the batch holding it failed forever. Served or refused, the rows are written."""
    raw = config("", "", "")
    teams = {**raw["teams"], "open": {}}
    keys = [*raw["keys"], {"team": "open", "name": "open", "key": "sk-qg-open-team-0000001"}]
    async with running(tmp_path, store, teams=teams, keys=keys) as gw:
        gw.provider.on("/v1/chat/completions", json_reply(chat_answer("ok", 9, 2)))
        huge = {"model": "gpt-4o-mini", "messages": CONVERSATION[-1:], "max_tokens": 2**64 - 1, "seed": 2**63}
        assert (await gw.post("/v1/chat/completions", huge, key="sk-qg-open-team-0000001")).status_code == 200
        assert (await gw.post("/v1/chat/completions", huge, key=KEYS["research"])).status_code == 429
        fine = {"model": "gpt-4o-mini", "messages": CONVERSATION[-1:], "max_tokens": 7, "seed": 2**63 - 1}
        assert (await gw.post("/v1/chat/completions", fine, key="sk-qg-open-team-0000001")).status_code == 200
        served, refused, ok = await gw.new_rows()
    assert (served.output_cap, served.seed, served.outcome) == (None, None, "ok")
    assert (refused.output_cap, refused.outcome) == (None, "budget_exceeded")
    assert (ok.output_cap, ok.seed) == (7, 2**63 - 1)

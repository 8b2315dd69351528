"""``quotagate explain``: the spend change between two periods decomposed (LMDI-I) into effects per team, model
and driver that add up to the change exactly, to the micro-dollar; the sentence that opens the answer; the
JSON; on SQLite and PostgreSQL (the same rows in both)."""

from __future__ import annotations

import asyncio
import re
import sqlite3
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psycopg
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.analysis import lmdi
from proxy.analysis.db_sqlite import SqliteLedgerDB
from proxy.analysis.explain import Explanation, Sums, all_factors, explain
from proxy.analysis.periods import Period, parse_period
from proxy.cli import main
from proxy.store.base import LedgerRecord
from tests.analysis_rows import DAY, PRICES, Load, day, load, row, write_sqlite
from tests.inprocess import chat_answer, json_reply, running
from tests.pg_server import pg_server, postgres_url

__all__ = ["load", "pg_server", "postgres_url"]  # fixtures

BASELINE = parse_period("2026-02-25..2026-03-04", 0)
PERIOD = parse_period("2026-03-04..2026-03-11", 0)


def history_grows() -> list[LedgerRecord]:
    """The seed's story: two weeks of flat traffic; team assistant's history 2.9K -> 11.8K from 2026-03-04."""
    rows = []
    for d in range(14):
        t = day("2026-02-25") + d * DAY
        hist = 2900 if d < 7 else 11800
        rows += [row(t + 60 * i, "assistant", "gpt-4o", history=hist) for i in range(10)]
        rows += [row(t + 60 * i + 7, "search", "gpt-4o-mini", history=300, output=200 + d) for i in range(10)]
    return rows


def total(e: Explanation) -> int:
    return sum(x.micro_usd for x in e.effects)


def effect(e: Explanation, team: str, driver: str) -> int:
    return sum(x.micro_usd for x in e.effects if x.team == team and x.driver == driver)


async def test_the_sentence_names_the_driver_its_values_and_the_day(load: Load) -> None:
    db = await load(history_grows())
    e = await explain(db, PERIOD, BASELINE, prices=PRICES)
    m = re.fullmatch(
        r"Spend rose from \$([\d.]+) to \$([\d.]+) \((\d\.\d)x\) while requests were flat \(\+0%\); (\d+)% of the "
        r"increase is history tokens per request in team assistant, which rose from 2\.9K to 11\.8K after "
        r"2026-03-04\.",
        e.sentence,
    )
    assert m, e.sentence
    assert 95 <= int(m.group(4)) <= 100
    assert (e.baseline_requests, e.period_requests) == (140, 140)
    assert total(e) == e.change_micro == e.period_cost_micro - e.baseline_cost_micro
    assert effect(e, "assistant", "input_history") > 0.99 * e.change_micro
    assert effect(e, "search", "output") > 0  # search's output per request crept up


async def test_the_json_keeps_exact_decimal_dollars(load: Load) -> None:
    db = await load(history_grows())
    doc = (await explain(db, PERIOD, BASELINE, prices=PRICES)).to_json()
    assert {"baseline", "period", "change_usd", "effects", "sentence"} <= set(doc)
    assert {"cost_usd", "requests"} <= set(doc["baseline"]) and {"cost_usd", "requests"} <= set(doc["period"])
    assert {e["driver"] for e in doc["effects"]} <= set(lmdi.DRIVERS)
    assert all(set(e) >= {"team", "model", "driver", "usd"} for e in doc["effects"])
    change = Decimal(doc["period"]["cost_usd"]) - Decimal(doc["baseline"]["cost_usd"])
    assert sum(Decimal(e["usd"]) for e in doc["effects"]) == Decimal(doc["change_usd"]) == change
    assert sum(e["micro_usd"] for e in doc["effects"]) == doc["change_micro_usd"]


async def test_a_new_price_is_the_price_effect(load: Load) -> None:
    before = [row(BASELINE.start + i * 600, history=1000) for i in range(50)]
    after = [row(PERIOD.start + i * 600, history=1000, price_version="prices.yaml@2027") for i in range(50)]
    after = [_costing(r, r.cost_micro_usd * 3) for r in after]
    e = await explain(await load(before + after), PERIOD, BASELINE, prices=PRICES)
    assert total(e) == e.change_micro > 0
    assert effect(e, "assistant", "price") == e.change_micro  # nothing else moved
    assert "100% of the increase is price changes in team assistant" in e.sentence


def _costing(r: LedgerRecord, cost: int) -> LedgerRecord:
    from dataclasses import replace

    return replace(r, cost_micro_usd=cost)


async def test_more_requests_is_the_requests_effect(load: Load) -> None:
    before = [row(BASELINE.start + i * DAY / 4) for i in range(28)]
    after = [row(PERIOD.start + i * DAY / 8) for i in range(56)]
    e = await explain(await load(before + after), PERIOD, BASELINE, prices=PRICES)
    assert effect(e, "assistant", "requests") == e.change_micro == e.baseline_cost_micro
    assert e.sentence == (
        "Spend rose from $0.0059 to $0.012 (2.0x) while requests rose 100%; 100% of the increase is request volume "
        "in team assistant, which rose from 28 to 56 after 2026-03-04."
    )


async def test_a_team_or_model_of_one_period_only_is_requests_or_model_mix(tmp_path: Path) -> None:
    rows = [row(BASELINE.start + i * 600, "a", "gpt-4o-mini") for i in range(20)]
    rows += [row(PERIOD.start + i * 600, "a", "gpt-4o-mini") for i in range(10)]
    rows += [row(PERIOD.start + i * 600 + 1, "a", "gpt-4o") for i in range(10)]
    rows += [row(PERIOD.start + i * 600 + 2, "b", "gpt-4o-mini", history=5000) for i in range(5)]
    await write_sqlite(tmp_path / "l.db", rows)
    e = await explain(SqliteLedgerDB(tmp_path / "l.db"), PERIOD, BASELINE, prices=PRICES)
    assert total(e) == e.change_micro
    by_cell: dict[tuple[str, str], dict[str, int]] = {}
    for x in e.effects:
        if x.micro_usd:
            by_cell.setdefault((x.team, x.model), {})[x.driver] = x.micro_usd
    assert set(by_cell[("b", "gpt-4o-mini")]) == {"requests"}  # a new team: its whole spend is volume
    assert set(by_cell[("a", "gpt-4o")]) == {"model_mix"}  # a new model of a known team: the mix
    assert set(by_cell[("a", "gpt-4o-mini")]) == {"model_mix"}  # half its requests moved away
    assert by_cell[("a", "gpt-4o-mini")]["model_mix"] < 0


async def test_cache_hits_are_the_cache_effect(tmp_path: Path) -> None:
    rows = [row(BASELINE.start + i * 600, history=4000) for i in range(20)]
    rows += [row(PERIOD.start + i * 600, history=4000, cached=4096) for i in range(20)]
    await write_sqlite(tmp_path / "l.db", rows)
    e = await explain(SqliteLedgerDB(tmp_path / "l.db"), PERIOD, BASELINE, prices=PRICES)
    assert e.change_micro < 0 and total(e) == e.change_micro
    # the gateway rounds each request up to a micro-dollar: what that moves is price, at most 1 per request
    assert abs(effect(e, "assistant", "price")) <= 40
    assert effect(e, "assistant", "cache") + effect(e, "assistant", "price") == e.change_micro
    assert "of the decrease is the cache hit share in team assistant, which rose from 0% to 89%" in e.sentence


async def test_rows_without_parts_count_as_new_input_and_say_so(tmp_path: Path) -> None:
    rows = [row(BASELINE.start + i * 600, system=None, new=800) for i in range(10)]
    rows += [row(PERIOD.start + i * 600, system=200, new=600) for i in range(10)]
    await write_sqlite(tmp_path / "l.db", rows)
    e = await explain(SqliteLedgerDB(tmp_path / "l.db"), PERIOD, BASELINE, prices=PRICES)
    assert e.notes == [
        "10 of 20 requests were recorded without input parts (an older ledger): their input is counted as input_new."
    ]
    assert effect(e, "assistant", "input_new") < 0 < effect(e, "assistant", "input_system")
    assert total(e) == e.change_micro


async def test_filters_and_an_empty_period(tmp_path: Path) -> None:
    await write_sqlite(tmp_path / "l.db", history_grows())
    db = SqliteLedgerDB(tmp_path / "l.db")
    e = await explain(db, PERIOD, BASELINE, team="search", prices=PRICES)
    assert {x.team for x in e.effects} == {"search"} and total(e) == e.change_micro
    none = await explain(db, Period(0, 1), Period(1, 2))
    assert (none.effects, none.sentence) == ([], "Spend was unchanged at $0.00 while there were no requests.")


cell = st.builds(
    Sums,
    st.integers(1, 10_000),
    st.integers(0, 10**10),
    st.integers(0, 10**8),
    st.integers(0, 10**7),
    st.integers(0, 10**6),
    st.integers(0, 10**6),
    st.integers(0, 10**7),
    st.tuples(*[st.integers(0, 10**7)] * 4),
    st.integers(0, 10),
)
cells = st.dictionaries(st.tuples(st.sampled_from("abc"), st.sampled_from([*PRICES, "unpriced"])), cell)


@settings(max_examples=300, deadline=None)
@given(before=cells, after=cells)
def test_effects_always_sum_to_the_change_exactly(before: dict[Any, Sums], after: dict[Any, Sums]) -> None:
    change = sum(s.cost for s in after.values()) - sum(s.cost for s in before.values())
    split = lmdi.decompose(all_factors(before, PRICES), all_factors(after, PRICES), change)
    assert sum(split.values()) == change
    assert {d for _, _, d in split} <= set(lmdi.DRIVERS)


def _billed(request: Any, body: Any) -> Any:
    """The provider bills a token per 4 bytes of the messages (so that input grows with the history)."""
    return json_reply(chat_answer("ok", len(orjson.dumps(body["messages"])) // 4, 20))(request, body)


async def test_through_the_gateway(tmp_path: Path) -> None:
    """Rows written by the real pipeline (then dated by their tag, as bench/context_growth.py does: the
    ledger's ts is the wall clock's): the re-sent history grows on day 4 of 6, nothing else does."""
    async with running(tmp_path, "sqlite") as gw:
        gw.provider.on("/v1/chat/completions", _billed)
        for d in range(6):
            turns = 4 if d < 3 else 40
            history = [{"role": ("user", "assistant")[i % 2], "content": f"turn {i} " * 20} for i in range(turns)]
            messages = [{"role": "system", "content": "Be brief."}, *history, {"role": "user", "content": "Next?"}]
            for _ in range(3):
                body = {"model": "gpt-4o-mini", "messages": messages}
                r = await gw.post("/v1/chat/completions", body, headers={"x-quotagate-tags": f"day{d}"})
                assert r.status_code == 200, r.text
        await gw.settled()
    with sqlite3.connect(tmp_path / "quotagate.db") as con:
        for d in range(6):
            con.execute(
                "UPDATE ledger SET ts = ? + (ts % 3600) WHERE tags = ?", (day("2026-03-01") + d * DAY, f"day{d}")
            )
    db = SqliteLedgerDB(tmp_path / "quotagate.db")
    e = await explain(db, parse_period("2026-03-04..2026-03-07", 0), parse_period("2026-03-01..2026-03-04", 0))
    assert (e.baseline_requests, e.period_requests) == (9, 9)
    assert total(e) == e.change_micro > 0
    assert "history tokens per request in team search" in e.sentence and "after 2026-03-04." in e.sentence
    assert effect(e, "search", "input_history") > 0.9 * e.change_micro


def _config(tmp_path: Path, store: str) -> Path:
    path = tmp_path / "q.yaml"
    path.write_text(
        orjson.dumps(
            {
                "store": store,
                "providers": {"openai": {"base_url": "http://127.0.0.1:1/v1", "api_key": "sk-x"}},
                "models": {"gpt-4o-mini": {"provider": "openai"}, "gpt-4o": {"provider": "openai"}},
            }
        ).decode()
    )
    return path


def test_the_command(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    asyncio.run(write_sqlite(tmp_path / "l.db", history_grows()))
    cfg = str(_config(tmp_path, f"sqlite:///{tmp_path / 'l.db'}"))
    args = ["explain", "--config", cfg, "--period", "2026-03-04..2026-03-11", "--baseline", "2026-02-25..2026-03-04"]
    assert main([*args, "--format", "json"]) == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert sum(Decimal(e["usd"]) for e in doc["effects"]) == Decimal(doc["change_usd"])
    assert main(args) == 0
    text = capsys.readouterr().out
    assert text.startswith("Spend rose from $") and "input_history" in text and "total" in text


def test_a_store_without_a_sql_ledger_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(_config(tmp_path, "memory://"))
    with pytest.raises(SystemExit) as exc:
        main(["explain", "--config", cfg, "--period", "7d..0d", "--baseline", "14d..7d"])
    assert exc.value.code == 1
    assert "set `ledger: postgresql://...`" in capsys.readouterr().err


def test_a_bad_period_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(_config(tmp_path, f"sqlite:///{tmp_path / 'l.db'}"))
    with pytest.raises(SystemExit) as exc:
        main(["explain", "--config", cfg, "--period", "last week", "--baseline", "14d..7d"])
    assert exc.value.code == 2
    assert "--period: 'last week' is not a period: give START..END" in capsys.readouterr().err


def test_the_command_reads_the_postgresql_ledger(
    postgres_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``ledger: postgresql://...`` in the config: the commands read it (the store's SQLite file is not there)."""
    from proxy.store.pg_ledger import PostgresLedger

    async def fill() -> None:
        with psycopg.connect(postgres_url, autocommit=True) as con:
            con.execute("DROP TABLE IF EXISTS ledger, ledger_schema_version")
        db = PostgresLedger(postgres_url)
        await db.open()
        await db.write_ledger(history_grows())
        await db.close()

    asyncio.run(fill())
    cfg = _config(tmp_path, f"sqlite:///{tmp_path / 'absent.db'}")
    cfg.write_text(cfg.read_text()[:-1] + f', "ledger": "{postgres_url}"}}')
    args = [
        "explain",
        "--config",
        str(cfg),
        "--period",
        "2026-03-04..2026-03-11",
        "--baseline",
        "2026-02-25..2026-03-04",
    ]
    assert main([*args, "--format", "json"]) == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert doc["period"]["requests"] == 140 and "history tokens per request in team assistant" in doc["sentence"]


def test_a_missing_ledger_file_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = str(_config(tmp_path, f"sqlite:///{tmp_path / 'nowhere.db'}"))
    with pytest.raises(SystemExit) as exc:
        main(["reprice", "--config", cfg, "--prices", str(Path(__file__).parent.parent / "proxy/data/prices.yaml")])
    assert exc.value.code == 1
    assert f"no ledger at {tmp_path / 'nowhere.db'}" in capsys.readouterr().err

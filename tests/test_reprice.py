"""``quotagate reprice``: the recorded usage priced at another table, beside what was charged, per team and model;
the shipped table reproduces what was charged (long-context tier, service tier, cache reads and writes
included); recorded costs never change; on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import orjson
import pytest

from proxy.analysis.periods import parse_period
from proxy.analysis.proposal import repriced_settings
from proxy.analysis.reprice import reprice
from proxy.pricing import price_of
from proxy.settings import BUILTIN_PRICES
from proxy.store.base import LedgerRecord
from proxy.usage import Usage
from tests.analysis_rows import PRICES, Load, day, load, row, write_sqlite
from tests.pg_server import pg_server, postgres_url

__all__ = ["load", "pg_server", "postgres_url"]  # fixtures

SINCE = parse_period("2026-03-01..2026-03-08", 0)
T = day("2026-03-02")
TABLE = """
date: "2027-01-01"
models:
  gpt-4o-mini: {input: 0.30, cached_input: 0.15, output: 1.20}
  gpt-5:
    {input: 1.25, cached_input: 0.125, output: 10.00, tiers: {flex: {input: 0.5, cached_input: 0.05, output: 4.00}}}
  claude-sonnet-4-5:
    {input: 3.00, cached_input: 0.30, cache_write_5m: 3.75, cache_write_1h: 6.00, output: 15.00,
     long_context: {above: 200000, input: 3.0, cached_input: 2.0, cache_write: 2.0, output: 2.0}}
"""


def history() -> list[LedgerRecord]:
    rows = [row(T + i, "search", history=i * 40, cached=40 * (i % 3)) for i in range(10)]
    rows += [row(T + 20 + i, "search", "gpt-4o") for i in range(3)]
    rows += [row(T + 30 + i, "agents", "gpt-5", tier=("flex", None)[i % 2], output=1000) for i in range(4)]
    rows += [row(T + 40, "agents", "claude-sonnet-4-5", history=150_000, write_5m=10_000)]
    rows += [row(T + 41, "agents", "claude-sonnet-4-5", history=250_000, cached=100_000, write_5m=20_000)]
    rows.append(row(T + 50, "search", charged=False))
    return rows


@pytest.fixture
def table(tmp_path: Path) -> dict[str, object]:
    cfg, prices = tmp_path / "q.yaml", tmp_path / "prices.yaml"
    cfg.write_text(config(tmp_path))
    prices.write_text(TABLE)
    s, version, priced = repriced_settings(cfg, prices)
    return {"prices": {n: price_of(m) for n, m in s.models.items()}, "version": version, "priced": priced}


def config(tmp_path: Path) -> str:
    return orjson.dumps(
        {
            "store": f"sqlite:///{tmp_path / 'l.db'}",
            "providers": {"openai": {"base_url": "http://127.0.0.1:1/v1", "api_key": "sk-x"}},
            # gpt-4o-mini's price set in the config: the table's replaces it
            "models": {
                **{m: {"provider": "openai"} for m in PRICES},
                "gpt-4o-mini": {"provider": "openai", "price": {"input": 9, "output": 9}},
            },
        }
    ).decode()


async def test_the_shipped_table_reproduces_what_was_charged(load: Load) -> None:
    rows = history()
    got = await reprice(await load(rows), SINCE, PRICES)
    assert [(r.team, r.model, r.requests) for r in got] == [
        ("agents", "claude-sonnet-4-5", 2), ("agents", "gpt-5", 4),
        ("search", "gpt-4o", 3), ("search", "gpt-4o-mini", 10),
    ]  # fmt: skip
    for r in got:
        charged = sum(x.cost_micro_usd for x in rows if (x.team, x.model) == (r.team, r.model) and x.charged)
        assert r.charged_micro == charged
        # priced on sums, rounded up once: at most a micro-dollar per request below the per-request rounding
        assert r.repriced_micro is not None and 0 <= charged - r.repriced_micro < r.requests


async def test_another_table(load: Load, table: dict[str, object]) -> None:
    rows = history()
    prices = table["prices"]
    assert isinstance(prices, dict)
    got = {(r.team, r.model): r for r in await reprice(await load(rows), SINCE, prices)}
    assert table["version"] == "prices.yaml@2027-01-01"
    assert table["priced"] == frozenset({"gpt-4o-mini", "gpt-5", "claude-sonnet-4-5"})

    def expected(model: str) -> int:
        picos = 0
        for x in rows:
            if x.model == model and x.charged:
                u = Usage(x.input_tokens, x.cached_input_tokens, x.output_tokens, 0, x.cache_write_5m_tokens, None,
                          x.service_tier)  # fmt: skip
                picos += sum(prices[model].parts(u).values())
        return -(-picos // 1_000_000)

    for team, model in got:
        assert got[(team, model)].repriced_micro == expected(model), model
    mini = got[("search", "gpt-4o-mini")]
    assert mini.repriced_micro == 2 * mini.charged_micro  # every rate doubled
    assert got[("search", "gpt-4o")].repriced_micro == got[("search", "gpt-4o")].charged_micro  # not in the table
    # the long tier applies to the 250K request only: 3x input, 2x cache and output
    long, short = rows[-2], rows[-3]
    claude = prices["claude-sonnet-4-5"]
    assert long.input_tokens is not None and short.input_tokens is not None
    assert claude.rates(long.input_tokens) != claude.rates(short.input_tokens)


def test_the_command_and_recorded_costs_unchanged(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = history()
    asyncio.run(write_sqlite(tmp_path / "l.db", rows))
    cfg, prices = tmp_path / "q.yaml", tmp_path / "prices.yaml"
    cfg.write_text(config(tmp_path))
    prices.write_text(TABLE)
    before = sqlite3.connect(tmp_path / "l.db").execute("SELECT request_id, cost_micro_usd FROM ledger").fetchall()
    argv = ["reprice", "--config", str(cfg), "--prices", str(prices), "--since", "2026-03-01..2026-03-08"]
    assert main_ok([*argv, "--format", "json"])
    doc = orjson.loads(capsys.readouterr().out)
    assert doc["prices"] == "prices.yaml@2027-01-01" and doc["not_in_table"] == ["gpt-4o"]
    keys = {"team", "model", "requests", "charged_usd", "repriced_usd", "change_usd"}
    assert all(keys <= set(r) for r in doc["rows"])
    assert doc["total"]["charged_micro_usd"] == sum(r.cost_micro_usd for r in rows)
    assert main_ok(argv)
    text = capsys.readouterr().out
    assert "recorded costs unchanged" in text and "repriced at the current price: gpt-4o" in text
    after = sqlite3.connect(tmp_path / "l.db").execute("SELECT request_id, cost_micro_usd FROM ledger").fetchall()
    assert after == before


def main_ok(argv: list[str]) -> bool:
    from proxy.cli import main

    return main(argv) == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (None, "cannot read"),
        ("[1]", "has no `models:` mapping"),
        ("models: {gpt-4o: {input: -1, output: 1}}", "models.gpt-4o.price.input"),
    ],
)  # fmt: skip
def test_a_bad_table_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str | None, message: str
) -> None:
    from proxy.cli import main

    cfg, prices = tmp_path / "q.yaml", tmp_path / "prices.yaml"
    cfg.write_text(config(tmp_path))
    if text is not None:
        prices.write_text(text)
    with pytest.raises(SystemExit) as exc:
        main(["reprice", "--config", str(cfg), "--prices", str(prices)])
    assert exc.value.code == 2
    assert message in capsys.readouterr().err


def test_the_builtin_table_file_reprices_like_the_config(tmp_path: Path) -> None:
    cfg = tmp_path / "q.yaml"
    cfg.write_text(config(tmp_path))
    s, version, _ = repriced_settings(cfg, BUILTIN_PRICES)
    assert version == "prices.yaml@2026-11-01"
    assert price_of(s.models["gpt-4o-mini"]).base == PRICES["gpt-4o-mini"].base  # the config's own price replaced

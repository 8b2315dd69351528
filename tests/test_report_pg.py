"""The report's SQL is written once: the same ledger in SQLite and in PostgreSQL (a real server,
tests/pg_server.py) gives the same aggregates, budget burn, explanation and page, byte for byte."""

from __future__ import annotations

from pathlib import Path

import psycopg

from proxy.analysis.db_sqlite import SqliteLedgerDB
from proxy.analysis.periods import Period
from proxy.analysis.report import collect
from proxy.analysis.report_page import render
from proxy.settings import load
from proxy.store.pg_ledger import PostgresLedger
from tests.pg_server import pg_server, postgres_url
from tests.test_report_browser import DAY, demo_config, demo_records, write_sqlite

__all__ = ["pg_server", "postgres_url"]  # the fixtures, imported for pytest

NOW = 1_796_000_000.0  # 2026-11-30T01:33:20Z: a fixed clock, so that both reads see the same windows


async def test_sqlite_and_postgresql_give_the_same_report(postgres_url: str, tmp_path: Path) -> None:
    with psycopg.connect(postgres_url, autocommit=True) as con:
        con.execute("DROP TABLE IF EXISTS ledger, ledger_schema_version")
    records = demo_records(NOW, days=40)
    await write_sqlite(tmp_path / "ledger.db", records)
    pg = PostgresLedger(postgres_url)
    await pg.open()
    lite = SqliteLedgerDB(tmp_path / "ledger.db")
    try:
        await pg.write_ledger(records)
        settings = load(demo_config(tmp_path, tmp_path / "ledger.db"))
        period = Period(NOW - 14 * DAY, NOW)
        from_sqlite = await collect(lite, settings, period, NOW)
        from_pg = await collect(pg, settings, period, NOW)
    finally:
        await pg.close()
        await lite.close()
    assert from_sqlite.totals.requests > 3000 and len(from_sqlite.spend) >= 4 * 14
    assert len(from_sqlite.costs) > 5 and from_sqlite.explain is not None
    assert from_pg == from_sqlite
    assert render(from_pg) == render(from_sqlite)

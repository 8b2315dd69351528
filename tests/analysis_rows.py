"""Ledger rows for the analysis tests (explain, whatif, reprice), and the ledgers they are read from.

``row(...)`` builds one charged chat request with its input parts, charged at the price the gateway would
charge (``Price.cost`` of the shipped table's price of the model, unless ``cost`` is given). ``ledger`` is a
fixture over both databases: ``await load(rows)`` writes the rows with the store's own ``write_ledger``
(``SqliteStore``, or ``PostgresLedger`` on a fresh table of the test cluster) and returns the ``LedgerDB``
the commands read.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest

from proxy.analysis.db import LedgerDB
from proxy.analysis.db_sqlite import SqliteLedgerDB
from proxy.pricing import Price, price_of
from proxy.settings import Settings, parse
from proxy.store.base import LedgerRecord
from proxy.store.sqlite import SqliteStore
from proxy.usage import Usage

DAY = 86_400
Load = Callable[[Sequence[LedgerRecord]], Awaitable[LedgerDB]]


def day(text: str) -> float:
    return datetime.strptime(text, "%Y-%m-%d").replace(tzinfo=UTC).timestamp()


def settings(**teams: Any) -> Settings:
    raw = {
        "store": "memory://",
        "providers": {"openai": {"base_url": "http://127.0.0.1:1/v1", "api_key": "sk-x"}},
        "models": {m: {"provider": "openai"} for m in ("gpt-4o-mini", "gpt-4o", "gpt-4.1-nano", "gpt-5",
                                                       "claude-sonnet-4-5", "text-embedding-3-small")},
        "teams": teams,
    }  # fmt: skip
    return parse(raw, env={})


SETTINGS = settings()
PRICES: dict[str, Price] = {name: price_of(m) for name, m in SETTINGS.models.items()}
_n = 0


def row(
    ts: float,
    team: str = "assistant",
    model: str = "gpt-4o-mini",
    *,
    system: int | None = 500,
    tools: int = 0,
    history: int = 0,
    new: int = 100,
    output: int = 200,
    cached: int = 0,
    cost: int | None = None,
    charged: bool = True,
    endpoint: str = "chat",
    tier: str | None = None,
    write_5m: int | None = None,
    output_cap: int | None = None,
    price_version: str | None = None,
) -> LedgerRecord:
    """One request; ``system=None``: a row of an older ledger, without input parts."""
    global _n
    _n += 1
    inp = (system or 0) + tools + history + new
    usage = Usage(inp, cached, output, 0, write_5m, None, tier)
    price = PRICES[model]
    return LedgerRecord(
        request_id=f"qg-{_n:07d}", ts=ts, team=team, key_name="k", model=model, provider="openai",
        endpoint=endpoint, stream=False, status=200 if charged else 429, outcome="ok" if charged else "budget",
        counted_input=inp, counted_output=output if charged else None, input_tokens=inp if charged else None,
        cached_input_tokens=cached if charged else None, output_tokens=output if charged else None,
        reasoning_tokens=0, cost_micro_usd=(price.cost(usage) if cost is None else cost) if charged else 0,
        latency_ms=1.0, ttft_ms=None, charged=charged, cache_write_5m_tokens=write_5m, service_tier=tier,
        input_system=system, input_tools=None if system is None else tools,
        input_history=None if system is None else history, input_new=None if system is None else new,
        output_cap=output_cap, price_version=price_version or price.version,
    )  # fmt: skip


async def write_sqlite(path: Path, rows: Sequence[LedgerRecord]) -> None:
    store = SqliteStore(path)
    await store.open()
    try:
        await store.write_ledger(list(rows))
    finally:
        await store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
async def load(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Load]:
    """``await load(rows)``: a ``LedgerDB`` holding exactly ``rows`` (SQLite file, or PostgreSQL)."""
    opened: list[LedgerDB] = []

    async def sqlite(rows: Sequence[LedgerRecord]) -> LedgerDB:
        path = tmp_path / f"ledger-{len(opened)}.db"
        await write_sqlite(path, rows)
        opened.append(SqliteLedgerDB(path))
        return opened[-1]

    async def postgresql(rows: Sequence[LedgerRecord]) -> LedgerDB:
        from proxy.store.pg_ledger import PostgresLedger

        url: str = request.getfixturevalue("postgres_url")
        with psycopg.connect(url, autocommit=True) as con:
            con.execute("DROP TABLE IF EXISTS ledger, ledger_schema_version")
        db = PostgresLedger(url)
        await db.open()
        opened.append(db)
        for i in range(0, len(rows), 2000):
            await db.write_ledger(list(rows[i : i + 2000]))
        return db

    try:
        yield sqlite if request.param == "sqlite" else postgresql
    finally:
        for db in opened:
            await db.close()

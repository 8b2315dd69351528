"""``quotagate report --since 30d --out report.html``: one self-contained HTML page of spend (proxy/analysis/)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from ..analysis.report import build_report
from ..analysis.report_db import SqliteLedgerDB, sqlite_path
from ..settings import Settings
from .common import add_config_option, fail, load_or_exit, parse_since


async def _render(settings: Settings, since: float, now: float) -> str:
    if settings.ledger is not None:
        fail("the report reads a SQLite ledger only for now (settings.ledger is PostgreSQL)", code=2)
    if not settings.store.startswith("sqlite:///"):
        fail(f"the ledger is in the store {settings.store.split(':', 1)[0]}://: the report reads SQLite", code=2)
    path = sqlite_path(settings.store)
    if not path.is_file():
        fail(f"no ledger at {path} (has a gateway run with this config?)")
    db = SqliteLedgerDB(path)
    try:
        return await build_report(db, settings, start=now - since, end=now, now=now)
    finally:
        await db.close()


def cmd_report(args: argparse.Namespace) -> int:
    _, settings = load_or_exit(args.config)
    now = time.time()
    page = asyncio.run(_render(settings, args.since, now))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(page, encoding="utf-8")
    print(f"wrote {out} ({len(page.encode()) / 1024:.0f} KB)", file=sys.stderr)
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Registers report."""
    p = sub.add_parser(
        "report",
        help="one self-contained HTML page of spend: per day and team, context parts, costs, what changed, budgets",
        description="Write one HTML file (inline SVG, nothing loaded when viewed): spend per day per team, input "
        "tokens per request by context part, the cost-per-request distribution, what changed against the "
        "equally long period before, and each budget's burn in its current window.",
    )
    p.add_argument(
        "--since",
        type=parse_since,
        default=parse_since("30d"),
        metavar="DURATION",
        help="the period: how far back from now, e.g. 7d, 30d, 2w (default: 30d)",
    )
    p.add_argument("--out", default="report.html", metavar="FILE", help="where to write (default: %(default)s)")
    add_config_option(p)
    p.set_defaults(fn=cmd_report)

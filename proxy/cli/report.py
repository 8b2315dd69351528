"""``quotagate report --since 30d --out report.html``: one self-contained HTML page of spend (proxy/analysis/)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from ..analysis.db_sqlite import LedgerUnavailable
from ..analysis.periods import Period, PeriodError, parse_since
from ..analysis.report import build_report
from ..analysis.source import open_ledger_db
from ..settings import Settings
from .common import add_config_option, fail, load_or_exit


async def _render(settings: Settings, period: Period, now: float) -> str:
    try:
        db = await open_ledger_db(settings)
        try:
            return await build_report(db, settings, period, now)
        finally:
            await db.close()
    except LedgerUnavailable as e:
        fail(str(e))


def cmd_report(args: argparse.Namespace) -> int:
    _, settings = load_or_exit(args.config)
    now = time.time()
    try:
        period = parse_since(args.since, now)
    except PeriodError as e:
        fail(f"--since: {e}", code=2)
    page = asyncio.run(_render(settings, period, now))
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
        default="30d",
        metavar="WHEN",
        help="the period: from a time ago (7d, 30d, 2w), a date or an RFC 3339 time to now, or START..END "
        "(default: %(default)s)",
    )
    p.add_argument("--out", default="report.html", metavar="FILE", help="where to write (default: %(default)s)")
    add_config_option(p)
    p.set_defaults(fn=cmd_report)

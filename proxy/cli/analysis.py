"""``quotagate explain | whatif | reprice``: why spend changed, what a proposed policy would have done, and what
history costs at another price table, read from the ledger (proxy/analysis/).

Each reads the ledger the config names (``proxy/analysis/source.open_ledger_db``: the SQLite store's file,
or ``ledger: postgresql://...``), never writes. Bad input (a period, a policy or price file) is a message on
stderr and exit code 2; a ledger that cannot be read, exit code 1.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import orjson

from ..analysis.db import LedgerDB
from ..analysis.db_sqlite import LedgerUnavailable
from ..analysis.explain import dollars, explain
from ..analysis.explain_text import render
from ..analysis.periods import Period, PeriodError, parse_period, parse_since
from ..analysis.proposal import proposed_settings, repriced_settings
from ..analysis.reprice import RepriceRow, reprice
from ..analysis.whatif import LIMITS, TeamReplay, whatif
from ..errors import StoreUnavailable
from ..pricing import price_of
from ..settings import ConfigError, Settings
from ..units import rfc3339
from .common import add_config_option, fail, load_or_exit

T = TypeVar("T")


def _period(text: str, flag: str, parse: Callable[[str, float], Period]) -> Period:
    try:
        return parse(text, time.time())
    except PeriodError as e:
        fail(f"{flag}: {e}", code=2)


def _on_ledger(settings: Settings, fn: Callable[[LedgerDB], Awaitable[T]]) -> T:
    from ..analysis.source import open_ledger_db

    async def run() -> T:
        db = await open_ledger_db(settings)
        try:
            return await fn(db)
        finally:
            await db.close()

    try:
        return asyncio.run(run())
    except (LedgerUnavailable, StoreUnavailable) as e:
        fail(str(e))


def _print_json(doc: Any) -> None:
    sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n")


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    cells = [[str(c) for c in r] for r in (header, *rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    for r in cells:
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))))


def cmd_explain(args: argparse.Namespace) -> int:
    _, settings = load_or_exit(args.config)
    period = _period(args.period, "--period", parse_period)
    baseline = _period(args.baseline, "--baseline", parse_period)
    prices = {name: price_of(m) for name, m in settings.models.items()}
    e = _on_ledger(settings, lambda db: explain(db, period, baseline, team=args.team, model=args.model, prices=prices))
    if args.format == "json":
        _print_json(e.to_json())
    else:
        print(render(e))
    return 0


def _proposal(fn: Callable[[], T]) -> T:
    try:
        return fn()
    except ConfigError as e:
        fail(str(e), code=2)


def cmd_whatif(args: argparse.Namespace) -> int:
    choice, settings = load_or_exit(args.config)
    since = _period(args.since, "--since", parse_since)
    proposed = _proposal(lambda: proposed_settings(choice.path, Path(args.policy)))
    teams = _on_ledger(settings, lambda db: whatif(db, proposed, since, team=args.team))
    if args.format == "json":
        doc = {"since": rfc3339(since.start), "until": rfc3339(since.end), "policy": args.policy}
        _print_json({**doc, "teams": [t.to_json() for t in teams], "limits": list(LIMITS)})
        return 0
    print(f"whatif {args.policy} over {since.label()}, {sum(t.requests for t in teams):,} charged requests replayed")
    _table(
        ("team", "ran out", "requests", "cost_usd", "would_cost_usd", "rejected", "trimmed", "trimmed_tokens",
         "downgraded", "budget_refused", "not_charged"),
        [_whatif_row(t) for t in teams],
    )  # fmt: skip
    if not teams:
        print("(no requests in this period)")
    print("limits: " + "\n        ".join(LIMITS))
    return 0


def _whatif_row(t: TeamReplay) -> tuple[Any, ...]:
    out = ", ".join(f"{b} {d} ({n}d)" for b, (d, n, _) in sorted(t.ran_out.items())) or "-"
    return (t.team, out, t.requests, dollars(t.cost_micro), dollars(t.would_cost_micro), t.rejected, t.trimmed,
            t.trimmed_tokens, t.downgraded, t.budget_refused, t.not_charged)  # fmt: skip


def cmd_reprice(args: argparse.Namespace) -> int:
    choice, settings = load_or_exit(args.config)
    since = _period(args.since, "--since", parse_since)
    table, version, priced = _proposal(lambda: repriced_settings(choice.path, Path(args.prices)))
    prices = {name: price_of(m) for name, m in table.models.items()}
    rows = _on_ledger(settings, lambda db: reprice(db, since, prices, team=args.team))
    charged = sum(r.charged_micro for r in rows)
    repriced = sum(r.repriced_micro or 0 for r in rows)
    unpriced = [f"{r.team}/{r.model}" for r in rows if r.repriced_micro is None]
    current = sorted({r.model for r in rows if r.model not in priced and r.repriced_micro is not None})
    total = RepriceRow("total", "", sum(r.requests for r in rows), charged, repriced)
    if args.format == "json":
        doc = {"since": rfc3339(since.start), "until": rfc3339(since.end), "prices": version}
        rest = {"unpriced": unpriced, "not_in_table": current}
        _print_json({**doc, "rows": [r.to_json() for r in rows], "total": total.to_json(), **rest})
        return 0
    print(f"reprice at {version} over {since.label()} (recorded costs unchanged)")
    _table(
        ("team", "model", "requests", "charged_usd", "repriced_usd", "change_usd"),
        [_reprice_row(r) for r in [*rows, total]],
    )
    if current:
        print(f"not in {args.prices}, repriced at the current price: {', '.join(current)}")
    if unpriced:
        print(f"not in the table or the config (not repriced, left out of the total): {', '.join(unpriced)}")
    return 0


def _reprice_row(r: RepriceRow) -> tuple[Any, ...]:
    j = r.to_json()
    return (r.team, r.model, r.requests, j["charged_usd"], j["repriced_usd"] or "-", j["change_usd"] or "-")


def _common(p: argparse.ArgumentParser, *, since: bool) -> None:
    if since:
        what = "from when (to now), or START..END: a date, an RFC 3339 time or a time ago (default: %(default)s)"
        p.add_argument("--since", default="30d", metavar="BOUND", help=what)
    p.add_argument("--team", help="only this team (default: every team)")
    p.add_argument("--format", choices=("text", "json"), default="text", help="output format (default: %(default)s)")
    add_config_option(p)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Registers explain, whatif and reprice."""
    e = sub.add_parser(
        "explain",
        help="why spend changed between two periods: effects per team, model and driver",
        description="Decompose the spend change from --baseline to --period (LMDI-I) into request volume, input "
        "tokens per request by part, output, cache, model mix and price effects that sum to the change exactly. "
        "Periods are START..END, each a date (2026-03-04, UTC midnight), an RFC 3339 time or a time ago "
        "(7d, 2h, 30m; 0d = now); the end is excluded.",
    )
    e.add_argument("--period", required=True, help="the period to explain, e.g. 7d..0d or 2026-03-04..2026-03-11")
    e.add_argument("--baseline", required=True, help="the period to compare with, e.g. 14d..7d")
    e.add_argument("--model", help="only this model (default: every model)")
    _common(e, since=False)
    e.set_defaults(fn=cmd_explain)
    w = sub.add_parser(
        "whatif",
        help="what a proposed policy would have done to the ledger's requests",
        description="Replay the ledger's requests against the config with --policy (a YAML fragment: teams' "
        "context and output caps, budgets, downgrade_to; models' prices) merged over it: cost then and would-be "
        "cost per team, requests trimmed, rejected, downgraded or refused by a budget.",
    )
    w.add_argument("--policy", required=True, metavar="FILE", help="the proposed config fragment (YAML)")
    _common(w, since=True)
    w.set_defaults(fn=cmd_whatif)
    r = sub.add_parser(
        "reprice",
        help="the cost of history at another price table, beside what was charged",
        description="Price the recorded usage at --prices (the shape of proxy/data/prices.yaml) per team and "
        "model, beside what was charged; recorded costs are never changed.",
    )
    r.add_argument("--prices", required=True, metavar="FILE", help="a price table (YAML, as proxy/data/prices.yaml)")
    _common(r, since=True)
    r.set_defaults(fn=cmd_reprice)

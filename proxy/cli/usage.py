"""``quotagate usage``: requests by outcome (ok / refused / failed), tokens by kind and cost, from the ledger.

Refused requests count as requests, never as spend: tokens and cost add up only requests that reached
the provider (``charged``), exactly what the budgets were charged.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..ledger_sink import LedgerReads
from ..outcomes import verdict
from ..store.base import LedgerRecord, Store
from ..units import rfc3339, usd
from .common import add_config_option, add_format_option, emit, known_team, load_or_exit, parse_since, with_ledger

GROUPS: dict[str, tuple[tuple[str, ...], Callable[[LedgerRecord], tuple[str, ...]]]] = {
    "team": (("team",), lambda r: (r.team,)),
    "model": (("team", "model"), lambda r: (r.team, r.model)),
    "key": (("team", "key"), lambda r: (r.team, r.key_name)),
    "day": (("day",), lambda r: ((rfc3339(r.ts) or "")[:10],)),
}


@dataclass(slots=True)
class Row:
    requests: int = 0
    ok: int = 0
    refused: int = 0
    failed: int = 0
    input_tokens: int = 0
    cached_input_tokens: int = 0
    output_tokens: int = 0
    reasoning_tokens: int = 0
    cost_micro_usd: int = 0

    def add(self, r: LedgerRecord) -> None:
        self.requests += 1
        kind = verdict(r.outcome, r.status)
        setattr(self, kind, getattr(self, kind) + 1)
        if r.charged:
            self.input_tokens += r.input_tokens if r.input_tokens is not None else (r.counted_input or 0)
            self.cached_input_tokens += r.cached_input_tokens or 0
            self.output_tokens += r.output_tokens if r.output_tokens is not None else (r.counted_output or 0)
            self.reasoning_tokens += r.reasoning_tokens or 0
            self.cost_micro_usd += r.cost_micro_usd


def aggregate(records: list[LedgerRecord], by: str) -> dict[tuple[str, ...], Row]:
    key = GROUPS[by][1]
    out: dict[tuple[str, ...], Row] = {}
    for r in records:
        out.setdefault(key(r), Row()).add(r)
    return dict(sorted(out.items()))


def cmd_usage(args: argparse.Namespace) -> int:
    _, settings = load_or_exit(args.config)
    team = known_team(settings, args.team)
    since = time.time() - args.since

    async def read(_: Store, ledger: LedgerReads) -> list[LedgerRecord]:
        return await ledger.ledger(since, team, limit=10**9)

    rows = aggregate(with_ledger(settings, read), args.by)
    names = GROUPS[args.by][0]
    header = (*names, "requests", "ok", "refused", "failed", "input", "cached", "output", "reasoning", "cost_usd")
    cells = [
        (*k, r.requests, r.ok, r.refused, r.failed, r.input_tokens, r.cached_input_tokens, r.output_tokens,
         r.reasoning_tokens, f"{r.cost_micro_usd / 1e6:.6f}")
        for k, r in rows.items()
    ]  # fmt: skip
    objects: list[dict[str, Any]] = [
        {
            **dict(zip(names, k, strict=True)),
            "since": rfc3339(since),
            "requests": r.requests,
            "ok": r.ok,
            "refused": r.refused,
            "failed": r.failed,
            "input_tokens": r.input_tokens,
            "cached_input_tokens": r.cached_input_tokens,
            "output_tokens": r.output_tokens,
            "reasoning_tokens": r.reasoning_tokens,
            "cost_usd": usd(r.cost_micro_usd),
            "cost_micro_usd": r.cost_micro_usd,
        }
        for k, r in rows.items()
    ]
    emit(args.format, header, cells, objects)
    if not rows and args.format == "table":
        print("(no requests in this period)")
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    u = sub.add_parser(
        "usage",
        help="requests by outcome, tokens by kind and cost, per team, model, key or day",
        description="Requests (ok / refused / failed), input/cached/output/reasoning tokens and cost in dollars "
        "from the ledger. Refused requests are counted as requests, never as spend.",
    )
    u.add_argument("--team", help="only this team (default: every team); an unknown team is an error")
    u.add_argument(
        "--since",
        type=parse_since,
        default=parse_since("7d"),
        metavar="DURATION",
        help="how far back, e.g. 30m, 12h, 7d, 2w (default: 7d)",
    )
    u.add_argument(
        "--by", choices=tuple(GROUPS), default="model", help="one row per (default: %(default)s, with its team)"
    )
    add_format_option(u)
    add_config_option(u)
    u.set_defaults(fn=cmd_usage)

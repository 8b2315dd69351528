"""``quotagate budgets show --levels``: every level of a team's limits as ``GET /v1/usage`` shows them (the org,
the team, its keys, tags, models, end users and their top spenders, sessions; proxy/usage_view.py), read from
the store and the ledger directly: one table row per budget or rate limit, then the top end users; ``--format
json`` (or ``--json``): one document per team, the ``levels`` of ``GET /admin/usage``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator, Mapping
from typing import Any

import orjson

from ..budgets import BudgetsInForce
from ..errors import ProxyError
from ..ledger_sink import LedgerReads
from ..settings import Settings
from ..store.base import Store
from ..units import human_amount, human_usd
from ..usage_view import LevelsView, UsageQuery, usage_query
from .common import emit, fail, known_team, with_ledger

HEADER = ("team", "level", "entity", "window", "unit", "limit", "used", "held", "remaining", "used%", "resets_at")
TOP_HEADER = ("team", "end_user", "budget", "requests", "tokens", "cost")


def cmd_levels(args: argparse.Namespace, settings: Settings) -> int:
    teams = [t for t in [known_team(settings, args.team)] if t is not None] or list(settings.teams)
    try:
        query = usage_query(args.end_user, args.tag, args.session, args.top)
    except ProxyError as e:
        fail(e.message)
    if args.team is None and query != UsageQuery(top=query.top):
        fail("--end-user, --tag and --session name an entity of one team: give --team too")

    async def read(store: Store, ledger: LedgerReads) -> list[dict[str, Any]]:
        budgets = BudgetsInForce(settings, store)
        await budgets.load_overrides()
        view = LevelsView(settings, budgets, ledger)
        return [{"team": team, **await view.levels(team, query)} for team in teams]

    try:
        docs = with_ledger(settings, read)
    except ProxyError as e:  # a tag the team does not allow
        fail(e.message)
    if args.format == "json":
        sys.stdout.write(orjson.dumps(docs, option=orjson.OPT_INDENT_2).decode() + "\n")
        return 0
    rows = [_cells(team, level, entity, s) for doc in docs for team, level, entity, s in rows_of(doc)]
    emit(args.format, HEADER, rows, [])
    top = [
        (doc["team"], u["end_user"], u["budget"] or "-", u["requests"], u["tokens"], human_usd(u["cost_micro_usd"]))
        for doc in docs
        for u in doc["levels"]["end_users"]["top"]["end_users"]
    ]
    if top and args.format == "table":
        ranking = docs[0]["levels"]["end_users"]["top"]
        print(f"\ntop end users (by {ranking['by']}, since {ranking['since']}):")
        emit("table", TOP_HEADER, top, [])
    return 0


def rows_of(doc: Mapping[str, Any]) -> Iterator[tuple[str, str, str, Mapping[str, Any]]]:
    """(team, level, entity, status) for every budget and rate limit of a team's document, in the order shown."""
    team, lv = doc["team"], doc["levels"]
    groups: list[tuple[str, str, Mapping[str, Any]]] = []
    if lv["org"] is not None:
        groups.append(("org", "(shared)", lv["org"]))
    groups.append(("team", team, lv["team"]))
    groups += [("key", name, g) for name, g in lv["keys"].items()]
    groups += [("tag", name, {"budgets": b}) for name, b in lv["tags"]["budgets"].items()]
    groups += [("model", name, g) for name, g in lv["models"].items()]
    groups.append(("end_user", "(default, each)", lv["end_users"]["default"]))
    groups += [("end_user", f"{u['end_user']} ({u['budget']})", u) for u in lv["end_users"]["top"]["end_users"]]
    groups.append(("session", "(each)", {"budgets": lv["sessions"]["budgets"]}))
    for kind in ("end_user", "tag", "session"):
        if kind in doc:
            groups.append((kind, f"{doc[kind][kind]} (asked)", doc[kind]))
    for level, entity, group in groups:
        for status in (*group.get("budgets", ()), *group.get("rate_limits", ())):
            yield team, level, entity, status


def _cells(team: str, level: str, entity: str, s: Mapping[str, Any]) -> tuple[Any, ...]:
    unit = s["unit"]
    window = s["window"] or (f"rolling {s['rolling']}" if s.get("rolling") else "life" if level == "session" else "-")
    if "used" not in s:  # the terms each end user or session gets: no usage of anyone's
        return (team, level, entity, window, unit, human_amount(s["limit"], unit), "", "", "", "", s["resets_at"])
    return (
        team,
        level,
        entity,
        window,
        unit,
        human_amount(s["limit"], unit),
        human_amount(s["used"], unit),
        human_amount(s["reserved"], unit),
        human_amount(s["remaining"], unit),
        f"{100 * s['used'] / s['limit']:.0f}%" if s["limit"] else "-",
        s["resets_at"] or "-",
    )


def add_arguments(p: argparse.ArgumentParser) -> None:
    """``budgets show``'s options for the levels."""
    p.add_argument(
        "--levels",
        action="store_true",
        help="every level, as GET /v1/usage shows it: org, team, keys, tags, models, end users (top spenders), "
        "sessions",
    )
    p.add_argument("--json", dest="format", action="store_const", const="json", help="same as --format json")
    entities = (("--end-user", "ID", "end user"), ("--tag", "NAME", "tag"), ("--session", "ID", "session"))
    for flag, metavar, what in entities:
        help_ = f"with --levels: also this {what}'s status (needs --team; default: none)"
        p.add_argument(flag, metavar=metavar, help=help_)
    p.add_argument("--top", type=int, default=10, metavar="N", help="with --levels: top spenders shown (default: 10)")

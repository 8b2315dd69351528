"""``quotagate budgets show|set``: budgets in force and how much of them is used, held and left; runtime
overrides, written to the store exactly as ``PUT /admin/teams/{team}/budgets`` does (every running gateway
picks them up within ``overrides_refresh_seconds``). ``show --levels``: every level, as ``GET /v1/usage`` shows
it (proxy/cli/levels.py)."""

from __future__ import annotations

import argparse
from decimal import Decimal, InvalidOperation
from typing import Any, get_args

from pydantic import ValidationError

from ..budgets import BudgetsInForce
from ..settings import BudgetSettings, Settings, Window
from ..store.base import Store
from ..units import human_amount
from .common import add_config_option, add_format_option, emit, fail, known_team, load_or_exit, with_store
from .levels import add_arguments as add_level_arguments
from .levels import cmd_levels


async def _budgets(settings: Settings, store: Store) -> BudgetsInForce:
    budgets = BudgetsInForce(settings, store)
    await budgets.load_overrides()
    return budgets


def cmd_show(args: argparse.Namespace) -> int:
    _, settings = load_or_exit(args.config)
    if args.levels:
        return cmd_levels(args, settings)
    if args.end_user or args.tag or args.session:
        fail("--end-user, --tag and --session go with --levels")
    teams = [known_team(settings, args.team)] if args.team else list(settings.teams)

    async def read(store: Store) -> list[dict[str, Any]]:
        in_force = await _budgets(settings, store)
        out: list[dict[str, Any]] = []
        for team in teams:
            assert team is not None
            source = "override" if team in (await store.get_overrides()) else "config"
            rows = await in_force.budget_status(team)
            out += [{"team": team, "key": None, "source": source, **b.to_json()} for b in rows]
            for k in settings.keys:
                if k.team == team and k.budgets:
                    rows = await in_force.budget_status(team, k.digest)
                    out += [
                        {"team": team, "key": k.display_name, "source": "config", **b.to_json()}
                        for b in rows
                        if b.scope == "key"
                    ]
        return out

    objects = with_store(settings, read)
    header = ("team", "scope", "window", "unit", "limit", "used", "held", "remaining", "used%", "resets_at", "source")
    rows = [
        (
            o["team"],
            "team" if o["key"] is None else f"key {o['key']}",
            o["window"],
            o["unit"],
            human_amount(o["limit"], o["unit"]),
            human_amount(o["used"], o["unit"]),
            human_amount(o["reserved"], o["unit"]),
            human_amount(o["remaining"], o["unit"]),
            f"{100 * o['used'] / o['limit']:.0f}%" if o["limit"] else "-",
            o["resets_at"],
            o["source"],
        )
        for o in objects
    ]
    emit(args.format, header, rows, objects)
    if not objects and args.format == "table":
        print("(no budgets configured)")
    return 0


WINDOWS = get_args(Window)


def _amount(text: str) -> Decimal:
    try:
        return Decimal(text)
    except InvalidOperation:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None


def cmd_set(args: argparse.Namespace) -> int:
    _, settings = load_or_exit(args.config)
    team = known_team(settings, args.team)
    assert team is not None
    spec: dict[str, Any] = {"window": args.window, "warn_at": args.warn_at, "downgrade_to": args.downgrade_to}
    spec["usd" if args.usd is not None else "tokens"] = args.usd if args.usd is not None else args.tokens
    try:
        new = BudgetSettings.model_validate({k: v for k, v in spec.items() if v is not None})
    except ValidationError as e:
        first = e.errors()[0]
        fail(f"{'.'.join(str(p) for p in first['loc']) or 'budget'}: {first['msg']}")
    if new.downgrade_to is not None and new.downgrade_to not in settings.models:
        fail(f"unknown model {new.downgrade_to!r} in --downgrade-to")

    async def write(store: Store) -> tuple[BudgetSettings, ...]:
        in_force = await _budgets(settings, store)
        kept = [b for b in in_force.team_budgets(team) if (b.period, b.unit) != (new.period, new.unit)]
        budgets = (*kept, new)
        await in_force.set_override(team, budgets)
        return budgets

    budgets = with_store(settings, write)
    shown = ", ".join(
        f"{b.period} {human_amount(b.limit, b.unit)}{'' if b.unit == 'usd' else ' tokens'}" for b in budgets
    )
    print(f"team {team}: budgets now {shown} (runtime override; running gateways apply it within seconds)")
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    _, settings = load_or_exit(args.config)
    team = known_team(settings, args.team)
    assert team is not None

    async def reset(store: Store) -> int:
        return await (await _budgets(settings, store)).reset(team, args.window, args.unit)

    if not with_store(settings, reset):
        fail(f"team {team} has no {args.window}{' ' + args.unit if args.unit else ''} budget in force")
    print(f"team {team}: {args.window} budgets start over now (the window does not move; held amounts stay held)")
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    b = sub.add_parser("budgets", help="show budgets (limit, used, held, remaining, resets at); set overrides")
    bsub = b.add_subparsers(dest="budgets_command", required=True, metavar="{show,set,reset}")

    s = bsub.add_parser("show", help="every budget in force, in its unit, with human numbers")
    s.add_argument("--team", help="only this team (default: every team)")
    add_format_option(s)
    add_level_arguments(s)
    add_config_option(s)
    s.set_defaults(fn=cmd_show)

    t = bsub.add_parser(
        "set",
        help="set one budget of a team at runtime (same as PUT /admin/teams/{team}/budgets)",
        description="Replace (or add) the team's budget on this window and unit; its other budgets stay. "
        "Written to the store as a runtime override, which wins over the config's budgets.",
    )
    t.add_argument("--team", required=True, help="the team (declared under `teams:`)")
    t.add_argument("--window", required=True, choices=WINDOWS, help="calendar window, UTC")
    unit = t.add_mutually_exclusive_group(required=True)
    unit.add_argument("--usd", type=_amount, help="limit in dollars, e.g. 50 or 12.5 (required: this or --tokens)")
    unit.add_argument("--tokens", type=int, help="limit in tokens (required: this or --usd)")
    t.add_argument("--warn-at", type=float, help="used fraction (0-1) past which downgrade_to applies (default: none)")
    t.add_argument("--downgrade-to", metavar="MODEL", help="cheaper model to serve with past --warn-at (default: none)")
    add_config_option(t)
    t.set_defaults(fn=cmd_set)

    r = bsub.add_parser(
        "reset",
        help="start a team's budgets on a window over, now (same as POST /admin/teams/{team}/budgets/reset)",
        description="What the team's budgets on this window used in the current window goes back to zero; the "
        "window does not move, and what requests in flight hold stays held.",
    )
    r.add_argument("--team", required=True, help="the team (declared under `teams:`)")
    r.add_argument("--window", required=True, choices=WINDOWS, help="the budgets' window")
    r.add_argument("--unit", choices=("tokens", "usd"), help="only the budget in this unit (default: both)")
    add_config_option(r)
    r.set_defaults(fn=cmd_reset)

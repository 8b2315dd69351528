"""``quotagate keys create|list|revoke``: API keys, on the configured store directly (no admin API needed).

Only a key's sha256 is ever stored; ``create`` prints the key once. Running gateways cache a store key's
lookup for a few seconds, so a revoked key stops working within that time.
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from ..admin import new_key
from ..ledger_sink import LedgerReads
from ..settings import Settings, hash_key
from ..store.base import KeyRecord, Store
from ..units import rfc3339
from .common import (
    add_config_option,
    add_format_option,
    emit,
    fail,
    known_team,
    load_or_exit,
    parse_since,
    with_ledger,
    with_store,
)


def cmd_create(args: argparse.Namespace) -> int:
    _, settings = load_or_exit(args.config)
    known_team(settings, args.team)
    key = new_key()
    digest = hash_key(key)
    record = KeyRecord(digest, args.team, args.name or f"key-{digest[:8]}", time.time())

    async def put(store: Store) -> None:
        await store.put_key(record)

    with_store(settings, put)
    print(key)
    print(
        f"# team={record.team} name={record.name} sha256={digest} (shown once; only the hash is stored)",
        file=sys.stderr,
    )
    return 0


async def _last_used(ledger: LedgerReads, team: str | None, since: float) -> dict[tuple[str, str], float]:
    last: dict[tuple[str, str], float] = {}
    for r in await ledger.ledger(since, team, limit=10**9):
        k = (r.team, r.key_name)
        if r.ts > last.get(k, 0.0):
            last[k] = r.ts
    return last


def cmd_list(args: argparse.Namespace) -> int:
    _, settings = load_or_exit(args.config)
    team = known_team(settings, args.team)
    since = time.time() - args.since

    async def read(store: Store, ledger: LedgerReads) -> tuple[list[KeyRecord], dict[tuple[str, str], float]]:
        return await store.list_keys(team), await _last_used(ledger, team, since)

    stored, last = with_ledger(settings, read)
    objects: list[dict[str, Any]] = [
        {
            "team": k.team,
            "name": k.display_name,
            "sha256": k.digest,
            "source": "config",
            "created_at": None,
            "last_used_at": rfc3339(last.get((k.team, k.display_name))),
            "revoked": False,
        }
        for k in settings.keys
        if team is None or k.team == team
    ] + [
        {
            "team": r.team,
            "name": r.name,
            "sha256": r.sha256,
            "source": "store",
            "created_at": rfc3339(r.created_at),
            "last_used_at": rfc3339(last.get((r.team, r.name))),
            "revoked": r.revoked,
        }
        for r in stored
    ]
    header = ("team", "name", "id", "source", "created", "last_used", "revoked")
    rows = [
        (o["team"], o["name"], o["sha256"][:12], o["source"], o["created_at"] or "-", o["last_used_at"] or "-",
         "yes" if o["revoked"] else "no")
        for o in objects
    ]  # fmt: skip
    emit(args.format, header, rows, objects)
    return 0


def _find(settings: Settings, stored: list[KeyRecord], ident: str) -> KeyRecord:
    ident = ident.lower()
    if len(ident) < 8:
        fail("give the key's sha256, or at least its first 8 hex characters (`quotagate keys list` shows them)")
    if any(k.digest.startswith(ident) for k in settings.keys):
        fail("that is a config key: revoke it by removing it from the config")
    hits = [r for r in stored if r.sha256.startswith(ident)]
    if not hits:
        fail(f"no runtime key starts with {ident!r}")
    if len(hits) > 1:
        fail(f"{len(hits)} keys start with {ident!r}; give more of the sha256")
    return hits[0]


def cmd_revoke(args: argparse.Namespace) -> int:
    _, settings = load_or_exit(args.config)

    async def revoke(store: Store) -> KeyRecord:
        record = _find(settings, await store.list_keys(), args.id)
        await store.revoke_key(record.sha256)
        return record

    record = with_store(settings, revoke)
    print(f"revoked {record.sha256[:12]} (team {record.team}, name {record.name})")
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    k = sub.add_parser("keys", help="create, list and revoke API keys (on the store; no admin API needed)")
    ksub = k.add_subparsers(dest="keys_command", required=True, metavar="{create,list,revoke}")

    c = ksub.add_parser("create", help="create a key: printed once, only its sha256 is stored")
    c.add_argument("--team", required=True, help="the team the key spends for (declared under `teams:`)")
    c.add_argument("--name", help="a name for logs and reports (default: key-<first 8 hex of its sha256>)")
    add_config_option(c)
    c.set_defaults(fn=cmd_create)

    ls = ksub.add_parser("list", help="team, name, id, created, last used; never the key")
    ls.add_argument("--team", help="only this team's keys (default: every team)")
    ls.add_argument(
        "--since",
        type=parse_since,
        default=parse_since("30d"),
        metavar="DURATION",
        help="how far back the ledger is read for `last used` (default: 30d)",
    )
    add_format_option(ls)
    add_config_option(ls)
    ls.set_defaults(fn=cmd_list)

    r = ksub.add_parser("revoke", help="revoke a runtime key by its sha256 (or a unique prefix of 8+ hex)")
    r.add_argument("id", metavar="SHA256", help="the key's sha256 or a unique prefix (see `keys list`)")
    add_config_option(r)
    r.set_defaults(fn=cmd_revoke)

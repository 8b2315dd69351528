"""``quotagate check-config [PATH]``: validate the config that ``serve`` would load (or the one named)."""

from __future__ import annotations

import argparse
import sys

from ..settings import ConfigError
from .common import find_config, load_config


def cmd_check_config(args: argparse.Namespace) -> int:
    choice = find_config(args.path or args.config)
    try:
        s = load_config(choice)
    except ConfigError as e:
        print(f"{choice.path}: {e}", file=sys.stderr)
        return 1
    print(
        f"{choice.path}: ok ({len(s.providers)} providers, {len(s.models)} models, {len(s.teams)} teams, "
        f"{len(s.keys)} keys, store {s.store.split('://')[0]})"
    )
    if args.path is None and args.config is None:
        print(f"# found as {choice.source}; store {s.store}", file=sys.stderr)
    return 0


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    c = sub.add_parser(
        "check-config",
        help="validate a config; exit 1 naming the offending key path",
        description="Validate a config file. Without PATH: the config `quotagate serve` would load "
        "(--config, $QUOTAGATE_CONFIG, ./config/quotagate.yaml, else the packaged default).",
    )
    c.add_argument("path", nargs="?", metavar="PATH", help="config file (default: the one `serve` would load)")
    c.add_argument("--config", metavar="PATH", help="same as PATH (default: the config `serve` would load)")
    c.set_defaults(fn=cmd_check_config)

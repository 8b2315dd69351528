"""The ``quotagate`` command, one module per command group::

serve          serve.py       the gateway (and the built-in mock upstream when the config routes to it)
check-config   config.py      validate the config serve would load
keys           keys.py        create | list | revoke, on the store
budgets        budgets.py     show | set (runtime overrides)
usage          usage.py       requests by outcome, tokens, cost, from the ledger
explain        analysis.py    why spend changed between two periods (also whatif, reprice)
report         report.py      one self-contained HTML page of spend
dashboards     dashboards.py  Prometheus + Grafana files for a gateway on this machine
mock-upstream  mock.py        the OpenAI-compatible mock provider
"""

from __future__ import annotations

import argparse

from .. import __version__
from . import analysis, budgets, config, dashboards, keys, mock, report, serve, usage


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quotagate", description="A cost-governing gateway for LLM APIs.")
    p.add_argument("--version", action="version", version=f"quotagate {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in (serve, config, keys, budgets, usage, analysis, report, dashboards, mock):
        group.add_parsers(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.fn(args))

"""``quotagate explain | whatif | reprice``: why spend changed, what a proposed policy would have done, and what
history costs at another price table, read from the ledger (proxy/analysis/)."""

from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Registers explain, whatif and reprice."""

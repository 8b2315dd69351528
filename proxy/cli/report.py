"""``quotagate report --since 30d --out report.html``: one self-contained HTML page of spend (proxy/analysis/)."""

from __future__ import annotations

import argparse


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Registers report."""

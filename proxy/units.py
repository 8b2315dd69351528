"""How quotagate writes numbers and times for people and for JSON.

One convention everywhere (``/v1/usage``, ``/admin/*``, the CLI's JSON, logs): money as decimal dollars in
fields named ``*_usd`` (integer micro-USD only in fields named ``*_micro_usd``), times as RFC 3339 UTC
strings, tokens as integers. The human forms (``1.9M``, ``$4.12``) are for tables and log lines only.
"""

from __future__ import annotations

from datetime import UTC, datetime

MICRO = 1_000_000


def usd(micro_usd: int) -> float:
    """Micro-USD -> dollars, exact to the micro-dollar (a JSON number such as 0.000123)."""
    return round(micro_usd / MICRO, 6)


def rfc3339(ts: float | None) -> str | None:
    """Epoch seconds -> ``2026-11-24T18:03:07.123Z`` (UTC, milliseconds); None stays None."""
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def human_count(n: int | float) -> str:
    """1234 -> 1.2K, 1_900_000 -> 1.9M, 2_000_000 -> 2M: three significant figures at most."""
    for div, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if abs(n) >= div:
            return f"{n / div:.3g}{suffix}"
    return f"{n:.3g}" if isinstance(n, float) else str(n)


def human_usd(micro_usd: int) -> str:
    """Micro-USD -> ``$4.12``; sub-cent amounts keep their significant digits (``$0.00031``)."""
    dollars = micro_usd / MICRO
    if dollars == 0 or abs(dollars) >= 0.01:
        return f"${dollars:,.2f}"
    return f"${dollars:.6f}".rstrip("0")


def human_amount(value: int, unit: str) -> str:
    """A limit's amount in its unit: tokens and requests as counts, ``usd`` (micro-USD) as dollars."""
    return human_usd(value) if unit == "usd" else human_count(value)

"""Numbers and times as the report shows them to people: ``$1,236.40``, ``11.8K tokens``, ``Nov 3``."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from ..units import MICRO, human_count, human_usd

DAY = 86_400


def money(micro_usd: float) -> str:
    """``$1,236.40``; under a cent, its significant digits (``$0.00031``); ``$0.00`` for nothing."""
    return human_usd(round(micro_usd))


def signed_money(micro_usd: float) -> str:
    """``+$12.30`` / ``\u2212$3.10`` (a minus sign, U+2212, not a hyphen)."""
    if micro_usd < 0:
        return "\u2212" + money(-micro_usd)
    return "+" + money(micro_usd)


def money_tick(micro_usd: float) -> str:
    """An axis tick: ``$0``, ``$25``, ``$1.5K``, ``$0.002``."""
    dollars = micro_usd / MICRO
    if dollars == 0:
        return "$0"
    if abs(dollars) >= 1000:
        return "$" + human_count(dollars)
    if abs(dollars) >= 1 and dollars == int(dollars):
        return f"${dollars:,.0f}"
    if abs(dollars) >= 0.01:
        return f"${dollars:,.2f}"
    return f"${dollars:.6f}".rstrip("0")


def tokens(n: float, *, unit: bool = True) -> str:
    """``11.8K tokens`` (three significant figures), ``950 tokens``."""
    text = human_count(round(n)) if abs(n) >= 1 or n == 0 else f"{n:.2g}"
    return f"{text} tokens" if unit else text


def count(n: int) -> str:
    """``12,345``."""
    return f"{n:,}"


def percent(fraction: float) -> str:
    """``45%``; under one percent ``0.4%``; a fraction above 1 as it is (``130%``)."""
    pct = fraction * 100
    return f"{pct:.1f}%" if 0 < pct < 1 else f"{pct:,.0f}%"


def day_label(day: int) -> str:
    """Days since the epoch -> ``Nov 3``."""
    d = datetime.fromtimestamp(day * DAY, UTC)
    return f"{d:%b} {d.day}"


def day_iso(day: int) -> str:
    return datetime.fromtimestamp(day * DAY, UTC).strftime("%Y-%m-%d")


def when(ts: float) -> str:
    """``2026-12-03 18:04 UTC``."""
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def date(ts: float) -> str:
    """``Dec 3, 2026``."""
    d = datetime.fromtimestamp(ts, UTC)
    return f"{d:%b} {d.day}, {d.year}"


def nice_ticks(vmax: float, target: int = 5) -> list[float]:
    """0 and evenly spaced round ticks (1, 2, 2.5, 5 x 10^k) up to at least ``vmax``."""
    if not math.isfinite(vmax) or vmax <= 0:
        return [0.0, 1.0]
    raw = vmax / target
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    n = math.ceil(vmax / step - 1e-9)
    return [i * step for i in range(n + 1)]

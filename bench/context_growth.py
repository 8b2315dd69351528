"""The story quotagate exists for, as a demo and a test: traffic stays flat while one team's chat client raises
the history it re-sends from 4K to 16K tokens, and the bill triples. Then ``explain`` says why and ``whatif``
shows what a 4K cap with trimming would have cost.

    .venv/bin/python bench/context_growth.py [--per-day 12] [--out DIR]

Two weeks of traffic through the real gateway (``quotagate serve`` on SQLite, in front of the built-in mock
provider): team ``assistant`` (a chat app: a system prompt, the conversation so far, a new question) and team
``search`` (a system prompt and a query, no history), the same number of requests every day. Until
2026-03-04 the assistant's client keeps the last 4K tokens of history; from then on, 16K. Each request is
tagged with its scenario day (``x-quotagate-tags: day-N``); the rows the gateway wrote are then backdated to
that day (the gateway stamps rows with the wall clock), which is the only step that is not the real pipeline.
Prints the ``explain`` and ``whatif`` outputs (the README's "Why did spend change?" shows them).
"""

from __future__ import annotations

import argparse
import asyncio
import sqlite3
import sys
import tempfile
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

MODEL = "gpt-4o-mini"
KEYS = {"assistant": "sk-qg-scenario-assistant-0001", "search": "sk-qg-scenario-search-00001"}
START = datetime(2026, 2, 25, tzinfo=UTC).timestamp()  # day 0; the baseline week is days 0-6
GROWTH_DAY = 7  # 2026-03-04: the assistant's history window grows from 4K to 16K tokens
DAYS = 14
TURN_TOKENS = 200  # each earlier turn of the assistant's conversations, about
OUTPUT_TOKENS = 150
SYSTEM = (
    "You are the support assistant of a travel company. Answer in two or three sentences, cite the booking "
    "rule you rely on, and never promise a refund the rules do not allow. "
) * 4

Post = Callable[[str, dict[str, Any], dict[str, str]], Awaitable[int]]


def config(upstream: str, store: str) -> dict[str, Any]:
    """Two teams like a real organisation's: month USD and day token budgets, RPM and TPM limits."""
    limits = {"rpm": 600, "tpm": 5_000_000, "concurrent": 32}
    return {
        "store": store,
        "admin_key": "scenario-admin",
        "ledger_flush_seconds": 0.05,
        "providers": {"mock": {"base_url": upstream, "api_key": "sk-upstream"}},
        "models": {MODEL: {"provider": "mock"}, "gpt-4o": {"provider": "mock"}},
        "teams": {
            "assistant": {
                "budgets": [{"window": "month", "usd": 500}, {"window": "day", "tokens": 50_000_000}],
                "rate_limits": limits,
            },
            "search": {"budgets": [{"window": "month", "usd": 200}], "rate_limits": limits},
        },
        "keys": [{"team": t, "name": f"{t}-app", "key": k} for t, k in KEYS.items()],
    }


def _turn(n: int) -> str:
    """An earlier turn of about TURN_TOKENS tokens, different for every n (no prompt-cache luck)."""
    words = [f"itinerary{n % 97}", "booking", f"fare{n % 13}", "change", "window", "refund", "policy", "seat"]
    return " ".join(words[(n + i) % len(words)] + str(i % 7) for i in range(TURN_TOKENS // 2))


def history_turns(day: int) -> int:
    """How many earlier turns the assistant's client re-sends on ``day``: 4K, then 16K tokens' worth."""
    return (4_000 if day < GROWTH_DAY else 16_000) // TURN_TOKENS


def assistant_body(day: int, i: int) -> dict[str, Any]:
    turns = history_turns(day)
    history = [
        {"role": "user" if k % 2 == 0 else "assistant", "content": _turn(day * 1000 + i * 100 + k)}
        for k in range(turns)
    ]
    question = {"role": "user", "content": f"Can I move my day {day} flight {i} to the next morning for free?"}
    return {"model": MODEL, "messages": [{"role": "system", "content": SYSTEM}, *history, question]}


def search_body(day: int, i: int) -> dict[str, Any]:
    query = f"Rewrite as a search query: cheap direct flights for request {day}-{i}, flexible dates."
    return {"model": MODEL, "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": query}]}


async def drive(post: Post, per_day: int, days: int = DAYS) -> int:
    """Flat traffic, ``per_day`` requests per team per day; returns how many were answered 200."""
    ok = 0
    for day in range(days):
        for i in range(per_day):
            for team, body in (("assistant", assistant_body(day, i)), ("search", search_body(day, i))):
                headers = {
                    "authorization": f"Bearer {KEYS[team]}",
                    "x-quotagate-tags": f"day-{day}",
                    "x-mock-output-tokens": str(OUTPUT_TOKENS),
                }
                ok += await post("/v1/chat/completions", body, headers) == 200
    return ok


def backdate(db: Path) -> int:
    """Move each row to its scenario day (its ``day-N`` tag), spread over the day in arrival order."""
    con = sqlite3.connect(db)
    try:
        rows = con.execute("SELECT rowid, tags FROM ledger WHERE tags LIKE 'day-%' ORDER BY ts, rowid").fetchall()
        seen: dict[int, int] = {}
        for rowid, tags in rows:
            day = int(tags.split(",")[0].removeprefix("day-"))
            seen[day] = seen.get(day, 0) + 1
            con.execute("UPDATE ledger SET ts = ? WHERE rowid = ?", (START + day * 86_400 + seen[day] * 60.0, rowid))
        con.commit()
        return len(rows)
    finally:
        con.close()


def periods() -> tuple[str, str]:
    """(baseline, period) as ``explain`` takes them: the week before the growth, and the week after."""

    def d(day: int) -> str:
        return datetime.fromtimestamp(START + day * 86_400, UTC).strftime("%Y-%m-%d")

    return f"{d(0)}..{d(GROWTH_DAY)}", f"{d(GROWTH_DAY)}..{d(DAYS)}"


POLICY = """\
# The proposal: cap the assistant's input at about what it sent before the change, trimming old history.
teams:
  assistant:
    max_input_tokens: 4400
    on_context_overflow: trim
"""


def run(out: Path, per_day: int) -> int:
    """The scenario against a real ``quotagate serve`` on a free port; the CLI outputs printed."""
    import subprocess

    import httpx
    import yaml

    from tests.gateway import free_port, wait_ready

    mport, gport = free_port(), free_port()
    py = sys.executable
    mock = subprocess.Popen(
        [py, "-m", "proxy", "mock-upstream", "--port", str(mport)], cwd=ROOT, stdout=subprocess.DEVNULL
    )
    db = out / "scenario.db"
    cfg = out / "scenario.yaml"
    cfg.write_text(yaml.safe_dump(config(f"http://127.0.0.1:{mport}/v1", f"sqlite:///{db}"), sort_keys=False))
    gw = subprocess.Popen(
        [py, "-m", "proxy", "serve", "--config", str(cfg), "--port", str(gport), "--log-level", "warning"], cwd=ROOT
    )
    try:
        wait_ready(mock, f"http://127.0.0.1:{mport}/v1/models", 30, lambda: "")
        wait_ready(gw, f"http://127.0.0.1:{gport}/healthz", 30, lambda: "")

        async def go() -> int:
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gport}", timeout=60) as client:

                async def post(path: str, body: dict[str, Any], headers: dict[str, str]) -> int:
                    return (await client.post(path, json=body, headers=headers)).status_code

                return await drive(post, per_day)

        answered = asyncio.run(go())
    finally:
        gw.terminate()
        gw.wait(30)
        mock.terminate()
        mock.wait(30)
    print(f"{answered} requests answered; {backdate(db)} ledger rows moved to their scenario day", flush=True)
    baseline, period = periods()
    policy = out / "policy.yaml"
    policy.write_text(POLICY)
    since = period.split("..")[0]  # the week after the growth, to now (nothing later was recorded)
    for args in (
        ["explain", "--period", period, "--baseline", baseline],
        ["whatif", "--policy", str(policy), "--since", since],
    ):
        print(f"\n$ quotagate {' '.join(args)}", flush=True)
        subprocess.run([py, "-m", "proxy", *args, "--config", str(cfg)], cwd=ROOT, check=True)
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-day", type=int, default=12, help="requests per team per day (default 12)")
    ap.add_argument("--out", type=Path, default=None, help="keep the database and config here (default: a temp dir)")
    a = ap.parse_args()
    if a.out is not None:
        a.out.mkdir(parents=True, exist_ok=True)
        return run(a.out, a.per_day)
    with tempfile.TemporaryDirectory() as tmp:
        return run(Path(tmp), a.per_day)


if __name__ == "__main__":
    sys.exit(main())

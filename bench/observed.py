"""Worst-case vs observed reservations (``reserve: observed``, proxy/observed.py): how many requests a budget
admits, and by how much committed usage overshoots it, on one request stream.

    .venv/bin/python bench/observed.py [--requests 3000] [--budget 2000000] [--concurrency 64] [--seed 13]

A realistic chat stream (seeded): input tokens lognormal around 800, output tokens lognormal with median 250
and p99 about 1500, clipped to the 4096-token cap every request sends. It goes through the real
``Accountant`` on a real SQLite store, ``concurrency`` requests in flight, finishing in random order; a
refused request is dropped (the client got its 429). Observed mode starts from a day of history (2000 served
requests of the same distribution, in the store's histogram) and refreshes its quantile every 200
settlements, as the accounting loop would every 10 s. It measures admission, not speed.

Prints a markdown table: per budget (the day budget given, and a tenth of it, where worst-case holds of 64
requests in flight exceed what is left long before anything is spent) and mode, the requests admitted
before the first refusal and in all, the tokens committed, the overshoot (committed - limit: the largest
seen and at the end), utilisation (committed / limit), and the stated bound (concurrency x (cap - q)).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import math
import random
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from proxy.errors import BudgetExceeded  # noqa: E402
from proxy.observed import Sizing  # noqa: E402
from proxy.settings import hash_key, parse  # noqa: E402
from proxy.settle import Accountant, Reservation  # noqa: E402
from proxy.store import MemoryStore, SqliteStore  # noqa: E402

CAP = 4096
MODEL = "gpt-4o-mini"
KEY = "sk-bench-observed"
T0 = 1_773_144_030.0  # mid-day, UTC: the day window never rolls over during a run
HISTORY = 2000
REFRESH_EVERY = 200


@dataclass
class Result:
    mode: str
    budget: int
    admitted_first: int = 0  # before the first refusal
    admitted: int = 0
    committed_first: int = 0  # committed when the first refusal came
    refused: int = 0
    committed: int = 0
    max_over: int = 0
    quantile: int | None = None

    def row(self, concurrency: int) -> str:
        over_end = max(self.committed - self.budget, 0)
        bound = concurrency * (CAP - self.quantile) if self.quantile is not None else 0
        return (
            f"| {self.budget:,} | {self.mode} | {self.admitted_first:,} | {self.committed_first / self.budget:.1%} "
            f"| {self.admitted:,} | {self.refused:,} "
            f"| {self.committed:,} | {self.max_over:,} | {over_end:,} | {self.committed / self.budget:.1%} "
            f"| {self.quantile if self.quantile is not None else CAP} | {bound:,} |"
        )


def stream(n: int, seed: int) -> list[tuple[int, int]]:
    """(input tokens, output tokens) per request, deterministic for ``seed``."""
    rng = random.Random(seed)
    sigma = math.log(1500 / 250) / 2.326  # median 250, p99 1500
    out = []
    for _ in range(n):
        inp = min(max(int(rng.lognormvariate(math.log(800), 0.35)), 20), 8000)
        out.append((inp, min(max(int(rng.lognormvariate(math.log(250), sigma)), 1), CAP)))
    return out


def config(mode: str, budget: int, q: float) -> Any:
    team = {"reserve": mode, "reserve_quantile": q, "budgets": [{"window": "day", "tokens": budget}]}
    return parse(
        {
            "store": "memory://",
            "lease_seconds": 3600,
            "providers": {"p": {"base_url": "http://127.0.0.1:9/v1"}},
            "models": {MODEL: {"provider": "p"}},
            "teams": {"t": team},
            "keys": [{"team": "t", "key": KEY}],
        },
        env={},
    )


async def run(mode: str, q: float, budget: int, requests: list[tuple[int, int]], concurrency: int, seed: int) -> Result:
    clock = lambda: T0  # noqa: E731
    with tempfile.TemporaryDirectory() as tmp:
        store = SqliteStore(Path(tmp) / "bench.db", clock=clock)
        await store.open()
        try:
            acct = Accountant(config(mode, budget, q), store, MemoryStore(clock=clock), clock=clock)
            observed = acct.reservations.observed
            observed.output("t", MODEL)  # asked for, as a first reserve would
            for _, out in stream(HISTORY, seed + 1):  # yesterday's traffic: the histogram is warm
                observed.record("t", MODEL, out)
            await observed.flush()
            await observed.refresh()
            label = mode if mode == "worst_case" else f"observed p{round(q * 100)}"
            result = Result(label, budget, quantile=observed.output("t", MODEL) if mode == "observed" else None)
            await drive(acct, store, requests, concurrency, random.Random(seed + 2), result)
            return result
        finally:
            await store.close()


async def drive(
    acct: Accountant,
    store: SqliteStore,
    requests: list[tuple[int, int]],
    concurrency: int,
    rng: random.Random,
    r: Result,
) -> None:
    digest = hash_key(KEY)
    flying: list[tuple[Reservation, int, int]] = []
    key: str | None = None
    settled = 0
    pending = list(requests)
    waiting = False  # a client refused waits for a completion before the next request goes out
    while pending or flying:
        if pending and len(flying) < concurrency and not (waiting and flying):
            waiting = False
            inp, out = pending.pop(0)
            sizing = Sizing(inp, CAP, functools.partial(_cost, inp))
            try:
                res = await acct.reserve(t := "t", digest, MODEL, inp + CAP, inp + CAP, {"team": t}, sizing=sizing)
            except BudgetExceeded:
                if r.refused == 0:
                    r.committed_first = r.committed
                r.refused += 1
                waiting = True
                continue
            assert res is not None
            key = res.limits[0].key
            r.admitted += 1
            if r.refused == 0:
                r.admitted_first += 1
            flying.append((res, inp, out))
            continue
        res, inp, out = flying.pop(rng.randrange(len(flying)))
        await acct.settle(res, inp + out, inp + out, out)
        settled += 1
        if settled % REFRESH_EVERY == 0:
            await acct.reservations.observed.flush()
            await acct.reservations.observed.refresh()
        if key is not None:
            used = (await store.counters([key]))[key].used
            r.committed = used
            r.max_over = max(r.max_over, used - r.budget)


def _cost(input_tokens: int, output_tokens: int) -> int:
    return input_tokens + output_tokens  # 1 micro-USD a token: the bench's budget is in tokens


async def main_async(args: argparse.Namespace) -> list[str]:
    lines = [
        "| budget (tokens/day) | reserve | admitted before 1st refusal | spent at 1st refusal | admitted | refused "
        "| committed | overshoot max | overshoot at end | utilisation | output held | bound |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for budget, n in ((args.budget, args.requests), (args.budget // 10, args.requests // 10)):
        requests = stream(n, args.seed)
        for mode, q in (("worst_case", 0.99), ("observed", 0.99), ("observed", 0.9)):
            result = await run(mode, q, budget, requests, args.concurrency, args.seed)
            lines.append(result.row(args.concurrency))
    return lines


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=3000)
    ap.add_argument("--budget", type=int, default=2_000_000)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--seed", type=int, default=13)
    print("\n".join(asyncio.run(main_async(ap.parse_args()))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

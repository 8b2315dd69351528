"""A quick pinned A/B of quotagate's CPU per request: the working tree against an older commit, alternated.

    .venv/bin/python bench/ab.py --baseline-ref 9e92499 [--stream] [--memory] [--seconds 12] [--rounds 2]

Each run starts the mock (core 0) and one quotagate on the bench's real-team config (core 1, SQLite), warms
it for 2 s, then drives 64 connections of chat completions for ``--seconds`` from this process (core 0) and
reads the gateway's CPU time from /proc. The two trees alternate; the medians and their ratio are printed.
Half a minute per run: a check between edits, not the benchmark (bench/run.py is, for every scenario).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.baseline import Baseline, prepare  # noqa: E402
from bench.targets import FAST_MODEL, KEY, quotagate_config  # noqa: E402
from tests.gateway import free_port, wait_ready  # noqa: E402


def _cpu_ticks(pid: int) -> tuple[int, int]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])  # utime, stime


async def _load(url: str, body: dict[str, object], seconds: float, conns: int = 64) -> int:
    done = 0
    end = time.monotonic() + seconds
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:

        async def worker() -> None:
            nonlocal done
            while time.monotonic() < end:
                async with session.post(url, json=body, headers={"authorization": f"Bearer {KEY}"}) as r:
                    await r.read()
                    done += 1

        await asyncio.gather(*(worker() for _ in range(conns)))
    return done


def chat_body(stream: bool) -> dict[str, object]:
    """The small chat completion both A/B benches send."""
    body: dict[str, object] = {
        "model": FAST_MODEL,
        "messages": [{"role": "user", "content": "hello there, please answer"}],
        "max_tokens": 16,
    }
    if stream:
        body["stream"] = True
    return body


def run_once(
    base: Baseline | None, stream: bool, seconds: float, tmp: Path, memory: bool
) -> tuple[float, float, float]:
    """(requests per second, gateway CPU ms per request, of which in the kernel) for ``base`` (None: the
    working tree)."""
    py = sys.executable
    env = {**os.environ, **(base.env if base is not None else {})}
    tree = base.tree if base is not None else ROOT
    mport, gport = free_port(), free_port()
    mock = subprocess.Popen(
        ["taskset", "-c", "0", py, "-m", "proxy", "mock-upstream", "--port", str(mport)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    upstream = f"http://127.0.0.1:{mport}"
    cfg = tmp / f"ab-{gport}.yaml"
    store = "memory://" if memory else f"sqlite:///{tmp / f'ab-{gport}.db'}"
    cfg.write_text(yaml.safe_dump(quotagate_config("quotagate", upstream, upstream, store), sort_keys=False))
    gw = subprocess.Popen(
        ["taskset", "-c", "1", py, "-m", "proxy", "serve", "--config", str(cfg), "--port", str(gport),
         "--log-level", "warning"],
        cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_ready(mock, upstream + "/v1/models", 20, lambda: "")
        wait_ready(gw, f"http://127.0.0.1:{gport}/healthz", 20, lambda: "")
        url = f"http://127.0.0.1:{gport}/v1/chat/completions"
        body = chat_body(stream)
        asyncio.run(_load(url, body, 2.0))
        before = _cpu_ticks(gw.pid)
        n = asyncio.run(_load(url, body, seconds))
        after = _cpu_ticks(gw.pid)
        user, system = after[0] - before[0], after[1] - before[1]
    finally:
        for p in (gw, mock):
            p.terminate()
            p.wait(10)
    per = 1000 / os.sysconf("SC_CLK_TCK") / max(n, 1)
    return n / seconds, (user + system) * per, system * per


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline-ref", required=True, help="the older commit (exported as bench/run.py does)")
    ap.add_argument("--stream", action="store_true", help="streamed chat completions instead of whole ones")
    ap.add_argument("--seconds", type=float, default=12.0, help="measured seconds per run (default 12)")
    ap.add_argument("--rounds", type=int, default=2, help="runs of each tree, alternated (default 2)")
    ap.add_argument("--memory", action="store_true", help="the memory store instead of SQLite (isolates the store)")
    a = ap.parse_args()
    base = prepare(a.baseline_ref, ROOT / "bench" / ".baseline")
    results: dict[str, list[tuple[float, float, float]]] = {"current": [], a.baseline_ref: []}
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(a.rounds):
            for name, which in (("current", None), (a.baseline_ref, base)):
                rps, cpu, sys_ = run_once(which, a.stream, a.seconds, Path(tmp), a.memory)
                results[name].append((rps, cpu, sys_))
                print(f"{name:>12}: {rps:8.0f} req/s  {cpu:.3f} ms CPU/req ({sys_:.3f} in the kernel)", flush=True)
    for i, what in ((1, "CPU/req"), (2, "kernel CPU/req")):
        cur = statistics.median(r[i] for r in results["current"])
        old = statistics.median(r[i] for r in results[a.baseline_ref])
        print(f"median {what}: current {cur:.3f} ms, {a.baseline_ref} {old:.3f} ms, ratio {cur / old:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Instructions per request, working tree vs an older commit: an A/B that a noisy shared machine cannot blur.

    .venv/bin/python bench/instructions.py --baseline-ref 9e92499 [--current-ref HEAD] [--store sqlite|memory]
                                           [--stream] [--requests 1500] [--warmup 300]

CPU time per request moves by 10-25% between identical runs here (two cores shared with other VMs), more
than the changes a refactor makes. valgrind's callgrind counts the instructions the gateway process executes
instead: the same binary, inputs and config give the same count whatever else the machine does. Each tree's
gateway (the bench's real-team config, SQLite or the memory store, in front of the mock) runs under
callgrind twice, once serving ``--warmup`` requests and once ``--warmup + --requests``; the difference over
``--requests`` is the steady-state count per request, start-up and first-request costs cancelled. 16
connections, so that the SQLite store batches as it does under load. About 2 minutes per tree and store.

What it does not show: time spent waiting (syscalls are counted, not their latency), or cache and branch
effects; bench/run.py and bench/ab.py measure time.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import aiohttp
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.ab import chat_body  # noqa: E402
from bench.baseline import prepare  # noqa: E402
from bench.targets import KEY, quotagate_config  # noqa: E402
from tests.gateway import free_port, wait_ready  # noqa: E402


async def _send(url: str, body: dict[str, object], n: int, conns: int = 16) -> None:
    left = n
    async with aiohttp.ClientSession() as session:

        async def worker() -> None:
            nonlocal left
            while left > 0:
                left -= 1
                async with session.post(url, json=body, headers={"authorization": f"Bearer {KEY}"}) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"the gateway answered {r.status}")

        await asyncio.gather(*(worker() for _ in range(conns)))


def count(tree: Path, requests: int, store: str, stream: bool, tmp: Path) -> int:
    """Instructions the gateway of ``tree`` executes from start to exit, serving ``requests`` requests."""
    py = sys.executable
    mport, gport = free_port(), free_port()
    mock = subprocess.Popen(
        [py, "-m", "proxy", "mock-upstream", "--port", str(mport)],
        cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    upstream = f"http://127.0.0.1:{mport}"
    url = "memory://" if store == "memory" else f"sqlite:///{tmp / f'ab-{gport}.db'}"
    cfg = tmp / f"cg-{gport}.yaml"
    cfg.write_text(yaml.safe_dump(quotagate_config("quotagate", upstream, upstream, url), sort_keys=False))
    out = tmp / f"callgrind-{gport}.out"
    gw = subprocess.Popen(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", "--dump-line=no",
         py, "-m", "proxy", "serve", "--config", str(cfg), "--port", str(gport), "--log-level", "warning"],
        cwd=tree, env={**os.environ, "PYTHONPATH": str(tree)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_ready(mock, upstream + "/v1/models", 30, lambda: "")
        wait_ready(gw, f"http://127.0.0.1:{gport}/healthz", 600, lambda: "")
        body = chat_body(stream)
        asyncio.run(_send(f"http://127.0.0.1:{gport}/v1/chat/completions", body, requests))
    finally:
        gw.send_signal(signal.SIGTERM)
        gw.wait(600)
        mock.terminate()
        mock.wait(30)
    found = re.search(r"^(?:summary|totals):\s+(\d+)", out.read_text(errors="replace"), re.M)
    if found is None:
        raise RuntimeError(f"no instruction total in {out}")
    return int(found.group(1))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline-ref", required=True, help="the older commit (exported as bench/run.py does)")
    ap.add_argument("--current-ref", default=None, help="measure this commit instead of the working tree")
    ap.add_argument("--store", choices=("sqlite", "memory"), default="sqlite")
    ap.add_argument("--stream", action="store_true", help="streamed chat completions instead of whole ones")
    ap.add_argument("--requests", type=int, default=1500, help="measured requests (default 1500)")
    ap.add_argument("--warmup", type=int, default=300, help="requests both runs serve first (default 300)")
    a = ap.parse_args()
    if shutil.which("valgrind") is None:
        print("valgrind is not installed (Debian: apt-get install valgrind)", file=sys.stderr)
        return 2
    base = prepare(a.baseline_ref, ROOT / "bench" / ".baseline")
    current = prepare(a.current_ref, ROOT / "bench" / ".baseline").tree if a.current_ref else ROOT
    per: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, tree in (("current", current), (a.baseline_ref, base.tree)):
            low = count(tree, a.warmup, a.store, a.stream, Path(tmp))
            high = count(tree, a.warmup + a.requests, a.store, a.stream, Path(tmp))
            per[name] = (high - low) / a.requests
            print(f"{name:>12}: {per[name] / 1e6:.3f} M instructions/request ({low} -> {high})", flush=True)
    ratio = per["current"] / per[a.baseline_ref]
    print(f"ratio current / {a.baseline_ref}: {ratio:.3f}x ({a.store}{', stream' if a.stream else ''})")
    return 0


if __name__ == "__main__":
    sys.exit(main())

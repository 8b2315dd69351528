"""The benchmark: quotagate vs a bare relay vs direct-to-mock vs LiteLLM, in one run, one command.

    .venv/bin/python bench/run.py                       # full: 3 rounds x 8 s, LiteLLM, 10 min soak
    .venv/bin/python bench/run.py --quick --no-litellm  # a smoke run (CI): 1 round, short windows
    .venv/bin/python bench/run.py --baseline-ref 3350188 --targets relay,quotagate   # before vs after

Targets (bench/targets.py), all in front of the same mock upstream (``python -m proxy mock-upstream``):
direct, relay, quotagate (a real team's config, SQLite), quotagate-redis, litellm; on request
quotagate-minimal and any quotagate kind at a git ref (``quotagate@REF``, bench/baseline.py).

The proxy under test is pinned to one core, the load generator (bench/load.py), the mocks and Redis to
the other. Targets alternate round by round (the order rotates) and figures are medians over rounds.
Writes ``<out>/latest.md`` and ``<out>/latest.json`` (default bench/results/). Loopback only.
"""

from __future__ import annotations

import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script: bench/ is on the path, the package's parent is not
    sys.path.insert(0, str(ROOT))

from bench import report  # noqa: E402
from bench.baseline import current_code  # noqa: E402
from bench.machine import machine, rss_mib  # noqa: E402
from bench.measure import LoadWorker, Runner  # noqa: E402
from bench.options import Options, parse_args  # noqa: E402
from bench.procs import tail  # noqa: E402
from bench.scenarios import write_bodies  # noqa: E402
from bench.stack import Stack  # noqa: E402
from bench.stats import Raw  # noqa: E402
from bench.targets import LITELLM, QG  # noqa: E402


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def measure_all(opt: Options, stack: Stack, tmp: Path) -> tuple[Raw, dict[str, Any], Any]:
    """Start everything, then: priming, the rounds, the soak, the optional profile; (raw, memory, profile)."""
    bodies = write_bodies(tmp)
    stack.start()
    qg = stack.targets[QG].service
    assert qg is not None
    startup_rss = rss_mib(qg.pid)
    worker = LoadWorker(stack.load_core, tmp / "load.log")
    try:
        runner = Runner(opt, stack.targets, worker, bodies, log)
        runner.prime()
        raw = runner.rounds()
        mem = {"startup_mib": startup_rss, **runner.soak()}
        prof = runner.profile(opt.profile, stack.load_core) if opt.profile > 0 else None
    finally:
        worker.close()
    return raw, mem, prof


def run(opt: Options, tmp: Path) -> dict[str, Any]:
    stack = Stack(opt, tmp, log)
    started, host, code = time.monotonic(), machine(), current_code()
    try:
        raw, mem, prof = measure_all(opt, stack, tmp)
    except BaseException:
        for svc in stack.services:
            if svc.popen is not None and svc.popen.poll() is not None:
                log(f"{svc.name} log tail:\n{tail(svc.log)}")
        raise
    finally:
        stack.stop()
        stack.keep_failed_logs(opt.out)
    facts = {
        "machine": host,
        "cores": {"load": stack.load_core, "proxy": stack.proxy_core},
        "code": code,
        "litellm": stack.litellm_status,
        "redis": stack.redis_status,
        "notes": stack.notes,
    }
    return {**report.build(opt, raw, facts, mem, prof), "elapsed_s": round(time.monotonic() - started, 1)}


def _on_signal(signum: int, frame: Any) -> NoReturn:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    opt = parse_args(argv)
    opt.out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, _on_signal)
    with tempfile.TemporaryDirectory(prefix="quotagate-bench-") as tmpdir:
        rep = run(opt, Path(tmpdir))
    print(report.write(opt.out, rep))
    summary = rep["summary"]
    broken = [f"{sc}/{t}" for sc, per in summary.items() for t, s in per.items() if t != LITELLM and s["requests"] == 0]
    if broken:
        print(f"bench: no successful requests for {', '.join(broken)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The benchmark runs end to end: `bench/run.py --quick --no-litellm` starts the mock, the bare relay and
quotagate (SQLite, and Redis when a redis-server exists), drives every scenario, stops everything, and
writes the markdown table and the raw JSON. No timing threshold is asserted: only that it works."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"quotagate_bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


bench_run = _load("run")
bench_load = _load("load")

pytestmark = pytest.mark.slow


def test_quick_bench_writes_the_table(tmp_path: Path) -> None:
    out = tmp_path / "results"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", "--no-litellm", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]

    md = (out / "latest.md").read_text()
    assert md.startswith("# quotagate benchmark, ")
    header = next(line for line in md.splitlines() if line.startswith("| scenario: metric |"))
    for label in ("direct (mock)", "bare relay", "quotagate"):
        assert f"| {label} |" in header
    for _, _, label, _ in bench_run.ROWS:
        assert f"| {label} |" in md, label
    for section in ("## Results", "## Ratios (same run)", "## Targets (issue 5)", "## Memory (quotagate RSS, MiB)"):
        assert section in md
    report = json.loads((out / "latest.json").read_text())
    targets_md = md.split("## Targets (issue 5)")[1]
    for check in report["checks"]:
        assert f"| {check['target']} |" in targets_md
        assert check["result"] in ("PASS", "MISS", "n/a")
    assert "LiteLLM: not requested" in md

    # every scenario ran against quotagate and the relay, and quotagate refused nothing
    for scenario in bench_run.SCENARIOS:
        for target in ("direct", "relay", "quotagate"):
            s = report["summary"][scenario.key][target]
            assert s["requests"] > 0, (scenario.key, target, s)
            assert s["errors"] == 0, (scenario.key, target, report["raw"][scenario.key][target])
    assert report["summary"]["json64"]["quotagate"]["cpu_ms_per_req"] > 0
    assert report["memory"]["startup_mib"] > 0
    if bench_run.find_redis() is not None:
        assert report["summary"]["json64"]["quotagate-redis"]["errors"] == 0
        assert report["summary"]["json64"]["quotagate-redis"]["requests"] > 0


def test_percentile_and_added_latency() -> None:
    assert bench_load.percentile([], 50) is None
    assert bench_load.percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert bench_load.percentile([float(i) for i in range(1, 101)], 99) == 99.0
    raw = {
        "json1": {
            "direct": [
                {"round": 0, "requests": 10, "errors": 0, "rps": 100.0, "p50_ms": 1.0, "p99_ms": 2.0},
                {"round": 1, "requests": 10, "errors": 0, "rps": 120.0, "p50_ms": 3.0, "p99_ms": 4.0},
            ],
            "quotagate": [
                {"round": 0, "requests": 10, "errors": 0, "rps": 90.0, "p50_ms": 1.5, "p99_ms": 2.5},
                {"round": 1, "requests": 10, "errors": 1, "rps": 80.0, "p50_ms": 3.7, "p99_ms": 5.0},
            ],
        }
    }
    s = bench_run.summarise(raw)["json1"]["quotagate"]
    assert s["added_p50_ms"] == pytest.approx(0.6)  # median of (0.5, 0.7): per round, vs the same round
    assert s["rps"] == 85.0 and s["errors"] == 1 and s["requests"] == 20

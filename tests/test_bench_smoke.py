"""The benchmark runs end to end: `bench/run.py --quick --no-litellm` starts the mock, the bare relay and
quotagate (SQLite, and Redis when a redis-server exists), drives every scenario, stops everything, and
writes the markdown table and the raw JSON; with `--baseline-ref HEAD` it also runs the committed code as
`quotagate@HEAD` and compares the two. No timing threshold is asserted: only that it works."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from bench import load as bench_load
from bench.options import parse_args
from bench.report import ROWS
from bench.scenarios import SCENARIOS
from bench.stack import find_redis
from bench.stats import compare, summarise
from bench.targets import TargetSpec

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow


def _bench(*args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "run.py"), "--quick", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        env={**os.environ},
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def test_quick_bench_writes_the_table(tmp_path: Path) -> None:
    out = tmp_path / "results"
    _bench("--no-litellm", "--out", str(out))

    md = (out / "latest.md").read_text()
    assert md.startswith("# quotagate benchmark, ")
    header = next(line for line in md.splitlines() if line.startswith("| scenario: metric |"))
    for label in ("direct (mock)", "bare relay", "quotagate"):
        assert f"| {label} |" in header
    for _, _, label, _ in ROWS:
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
    for scenario in SCENARIOS:
        for target in ("direct", "relay", "quotagate"):
            s = report["summary"][scenario.key][target]
            assert s["requests"] > 0, (scenario.key, target, s)
            assert s["errors"] == 0, (scenario.key, target, report["raw"][scenario.key][target])
    assert report["summary"]["json64"]["quotagate"]["cpu_ms_per_req"] > 0
    assert report["memory"]["startup_mib"] > 0
    if find_redis() is not None:
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
    s = summarise(raw)["json1"]["quotagate"]
    assert s["added_p50_ms"] == pytest.approx(0.6)  # median of (0.5, 0.7): per round, vs the same round
    assert s["rps"] == 85.0 and s["errors"] == 1 and s["requests"] == 20


def test_quick_bench_against_a_baseline_ref(tmp_path: Path) -> None:
    """HEAD's tree is exported (into --baseline-dir), run as quotagate@HEAD beside the working tree's
    quotagate in every scenario, and compared row by row."""
    out = tmp_path / "results"
    _bench(
        "--targets", "quotagate", "--baseline-ref", "HEAD", "--baseline-dir", str(tmp_path / "base"), "--out", str(out)
    )
    report = json.loads((out / "latest.json").read_text())
    assert [t["name"] for t in report["targets"]] == ["direct", "quotagate", "quotagate@HEAD"]
    for scenario in SCENARIOS:
        s = report["summary"][scenario.key]["quotagate@HEAD"]
        assert s["requests"] > 0 and s["errors"] == 0, (scenario.key, s)
    [comparison] = report["baseline"]
    assert (comparison["current"], comparison["baseline"]) == ("quotagate", "quotagate@HEAD")
    assert {r["scenario"] for r in comparison["rows"]} == {s.key for s in SCENARIOS}
    assert all(r["ratio"] is not None and r["ratio"] > 0 for r in comparison["rows"] if r["metric"] == "rps")
    md = (out / "latest.md").read_text()
    assert "## Current vs baseline: quotagate / quotagate @HEAD (same run)" in md
    assert (tmp_path / "base" / ".gitignore").read_text() == "*\n"


def test_target_selection() -> None:
    names = [t.name for t in parse_args(["--quick"]).targets]
    assert names == ["direct", "relay", "quotagate", "quotagate-redis"]  # --quick: no LiteLLM
    opt = parse_args(["--targets", "relay,quotagate-redis", "--baseline-ref", "abc123", "--no-redis"])
    assert [t.name for t in opt.targets] == ["direct", "relay", "quotagate", "quotagate@abc123"]
    opt = parse_args(["--targets", "quotagate-redis@v1,litellm"])
    assert [t.name for t in opt.targets] == ["direct", "quotagate", "quotagate-redis@v1", "litellm"]
    with pytest.raises(SystemExit):
        parse_args(["--targets", "relay@abc123"])  # only quotagate kinds run at a ref


def test_current_over_baseline_is_paired_by_round() -> None:
    def window(rnd: int, rps: float, p50: float) -> dict[str, float | int]:
        return {"round": rnd, "requests": 10, "errors": 0, "rps": rps, "p50_ms": p50, "p99_ms": p50}

    per_target = {
        "direct": [window(0, 1000, 1.0), window(1, 1000, 2.0), window(2, 1000, 1.0)],
        "quotagate": [window(0, 500, 1.5), window(1, 200, 2.4), window(2, 450, 1.3)],
        "quotagate@old": [window(0, 250, 2.0), window(1, 100, 3.0), window(2, 300, 1.0)],
    }
    raw = {"json1": per_target, "json64": per_target}
    current, baseline = TargetSpec("quotagate"), TargetSpec("quotagate", "old")
    rows = {(r["scenario"], r["metric"]): r for r in compare(raw, summarise(raw), current, baseline)}
    rps = rows["json64", "rps"]
    assert rps["per_round"] == [2.0, 2.0, 1.5] and rps["ratio"] == 2.0 and rps["verdict"] == "better"
    assert rps["current"] == 450 and rps["baseline"] == 250  # the medians over rounds, shown beside
    added = rows["json1", "added_p50_ms"]
    assert added["per_round"] == [-0.5, -0.6, 0.3]  # per round, current - baseline: direct cancels
    assert added["diff"] == -0.5
    assert added["ratio"] == pytest.approx(0.4)  # the medians: (0.5, 0.4, 0.3) over (1, 1, 0)
    assert added["verdict"] == "better"
    assert rows["json1", "cpu_ms_per_req"]["verdict"] == "n/a"  # not measured: no ratio, no verdict


def test_observed_reservations_bench_prints_its_table() -> None:
    """bench/observed.py (README, "Reservations sized from observed output"), small: observed holds admit
    more before the first refusal than the worst case, and neither commits past the limit by more than the
    stated bound."""
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "observed.py"), "--requests", "400", "--budget", "200000"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    rows = [line.split("|")[1:-1] for line in proc.stdout.splitlines() if line.startswith("| 2")]
    assert [r[1].strip() for r in rows] == ["worst_case", "observed p99", "observed p90"] * 2
    for worst, p99, _ in (rows[:3], rows[3:]):
        assert int(p99[2].replace(",", "")) > int(worst[2].replace(",", ""))  # admitted before the 1st refusal
    for r in rows:
        assert int(r[8].replace(",", "")) <= int(r[11].replace(",", ""))  # overshoot at end <= bound

"""The report: one dict (written as latest.json, with every round's raw figures) and its markdown
rendering (latest.md), section by section."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from bench.options import Options
from bench.scenarios import SCENARIOS
from bench.stats import SAME_WITHIN, Raw, checks, comparisons, ratios, summarise

# (scenario, metric, label, format): the rows of the results table
ROWS: tuple[tuple[str, str, str, str], ...] = (
    ("json1", "rps", "non-stream, 1 conn: req/s", "{:,.0f}"),
    ("json1", "p50_ms", "non-stream, 1 conn: p50 ms", "{:.3f}"),
    ("json1", "p99_ms", "non-stream, 1 conn: p99 ms", "{:.3f}"),
    ("json1", "added_p50_ms", "non-stream, 1 conn: added p50 ms", "{:+.3f}"),
    ("json1", "added_p99_ms", "non-stream, 1 conn: added p99 ms", "{:+.3f}"),
    ("json64", "rps", "non-stream, 64 conns: req/s", "{:,.0f}"),
    ("json64", "p50_ms", "non-stream, 64 conns: p50 ms", "{:.2f}"),
    ("json64", "p99_ms", "non-stream, 64 conns: p99 ms", "{:.2f}"),
    ("json64", "cpu_ms_per_req", "non-stream, 64 conns: proxy CPU ms/req", "{:.3f}"),
    ("stream64", "rps", "stream, 64 conns: streams/s", "{:,.0f}"),
    ("stream64", "ttft_p50_ms", "stream, 64 conns: TTFT p50 ms", "{:.2f}"),
    ("stream64", "cpu_ms_per_req", "stream, 64 conns: proxy CPU ms/stream", "{:.3f}"),
    ("ttft1", "ttft_p50_ms", "stream, 1 conn, paced mock: TTFT p50 ms", "{:.3f}"),
    ("ttft1", "added_ttft_p50_ms", "stream, 1 conn, paced mock: added TTFT p50 ms", "{:+.3f}"),
    ("lc_first", "p50_ms", "long context (~100K tok, 50 turns), first send: p50 ms", "{:.2f}"),
    ("lc_first", "added_p50_ms", "long context, first send: added p50 ms", "{:+.2f}"),
    ("lc_resend", "p50_ms", "long context, re-send +1 msg: p50 ms", "{:.2f}"),
    ("lc_resend", "added_p50_ms", "long context, re-send +1 msg: added p50 ms", "{:+.3f}"),
)
TITLES = {s.key: s.title for s in SCENARIOS}
STREAMS = {s.key for s in SCENARIOS if s.stream}
METRIC_NAMES = {
    "rps": "req/s",
    "cpu_ms_per_req": "proxy CPU ms/req",
    "added_p50_ms": "added p50 ms",
    "added_p99_ms": "added p99 ms",
    "added_ttft_p50_ms": "added TTFT p50 ms",
}
METRIC_FORMATS = {"rps": "{:,.0f}", "cpu_ms_per_req": "{:.3f}"}  # anything else is an added latency


def _compared_metric(sc: str, metric: str) -> tuple[str, str]:
    """(label, format) of one row of the current/baseline table."""
    name = METRIC_NAMES[metric]
    if sc in STREAMS:
        name = name.replace("req/s", "streams/s").replace("ms/req", "ms/stream")
    return f"{TITLES[sc]}: {name}", METRIC_FORMATS.get(metric, "{:+.3f}")


def build(opt: Options, raw: Raw, facts: dict[str, Any], mem: dict[str, Any], prof: Any) -> dict[str, Any]:
    """The whole report; ``facts`` carries what the run found out (machine, cores, statuses, notes)."""
    summary = summarise(raw)
    measured = [t for t in opt.targets if any(t.name in per for per in summary.values())]
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        **facts,
        "options": {
            "quick": opt.quick,
            "rounds": opt.rounds,
            "duration": opt.duration,
            "warmup": opt.warmup,
            "soak_minutes": opt.soak_minutes,
            "targets": [t.name for t in opt.targets],
        },
        "targets": [{"name": t.name, "label": t.label, "kind": t.kind, "ref": t.ref} for t in measured],
        "summary": summary,
        "ratios": ratios(summary),
        "baseline": comparisons(raw, summary, tuple(measured)),
        "checks": checks(summary, mem),
        "memory": mem,
        "profile": prof,
        "raw": raw,
    }


def write(out: Path, report: dict[str, Any]) -> str:
    md = render(report)
    (out / "latest.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (out / "latest.md").write_text(md)
    return md


def render(report: dict[str, Any]) -> str:
    lines = _header(report) + _results(report) + _ratios(report) + _baseline(report) + _checks(report)
    lines += _memory(report) + _profile(report)
    if report["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def _header(report: dict[str, Any]) -> list[str]:
    m, o = report["machine"], report["options"]
    return [
        f"# quotagate benchmark, {report['date']}",
        "",
        f"- Machine: {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, Linux {m['kernel']}; "
        f"load average at start {m['load_avg_at_start']}.",
        f"- Pinning: proxy under test on core {report['cores']['proxy']}; load generator, mock upstreams and "
        f"Redis on core {report['cores']['load']}.",
        f"- Mode: {'quick' if o['quick'] else 'full'}; {o['rounds']} round(s) x {o['duration']:g} s measured per "
        f"scenario and target (+{o['warmup']:g} s warm-up; long-context windows at least 1 s), targets rotated "
        "every round; figures are medians over rounds, added latency is vs direct in the same round.",
        f"- quotagate: {report['code']}; a real team's config: two budgets (day tokens, month USD), "
        "RPM, TPM and concurrency limits on the team, a budget on the key (sizes that refuse nothing).",
        f"- LiteLLM: {report['litellm']}.",
        f"- Redis: {report['redis']}.",
        "- The machine is shared: absolute numbers are indicative; compare the ratios measured in this run.",
    ]


def _results(report: dict[str, Any]) -> list[str]:
    summary, targets = report["summary"], report["targets"]
    lines = [
        "",
        "## Results",
        "",
        "| scenario: metric | " + " | ".join(t["label"] for t in targets) + " |",
        "|---|" + "---:|" * len(targets),
    ]
    for sc, metric, label, fmt in ROWS:
        cells = [_cell(summary.get(sc, {}).get(t["name"], {}).get(metric), fmt) for t in targets]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    err_cells = []
    for t in targets:
        per = [summary.get(s.key, {}).get(t["name"], {}) for s in SCENARIOS]
        err_cells.append(f"{sum(s.get('errors', 0) for s in per)} / {sum(s.get('requests', 0) for s in per):,}")
    lines.append("| errors / measured requests (all scenarios) | " + " | ".join(err_cells) + " |")
    return lines


def _cell(v: float | None, fmt: str) -> str:
    return "—" if v is None else fmt.format(v)


def _ratios(report: dict[str, Any]) -> list[str]:
    lines = ["", "## Ratios (same run)", "", "| ratio | value |", "|---|---:|"]
    return lines + [f"| {name} | {_cell(v, '{:.2f}x')} |" for name, v in report["ratios"].items()]


def _baseline(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    labels = {t["name"]: t["label"] for t in report["targets"]}
    for comp in report["baseline"]:
        cur, base = labels[comp["current"]], labels[comp["baseline"]]
        lines += [
            "",
            f"## Current vs baseline: {cur} / {base} (same run)",
            "",
            "The two ran next to each other in every round. Throughput and CPU: the median of the per-round "
            "ratios; added latency: the ratio of the two medians, and the median per-round difference (in which "
            f"direct's own noise cancels). A ratio within {SAME_WITHIN:.0%} of 1 reads as same.",
            "",
            f"| scenario: metric | {base} | {cur} | current/baseline | current - baseline, ms | |",
            "|---|---:|---:|---:|---:|---|",
        ]
        for r in comp["rows"]:
            label, fmt = _compared_metric(r["scenario"], r["metric"])
            lines.append(
                f"| {label} | {_cell(r['baseline'], fmt)} | {_cell(r['current'], fmt)} | "
                f"{_cell(r['ratio'], '{:.2f}x')} | {_cell(r['diff'], '{:+.3f}')} | {r['verdict']} |"
            )
    return lines


def _checks(report: dict[str, Any]) -> list[str]:
    lines = ["", "## Targets (issue 5)", "", "| target | measured | result |", "|---|---:|---|"]
    return lines + [f"| {c['target']} | {c['shown']} | {c['result']} |" for c in report["checks"]]


def _memory(report: dict[str, Any]) -> list[str]:
    mem = report["memory"]
    growth = mem.get("growth")
    return [
        "",
        "## Memory (quotagate RSS, MiB)",
        "",
        "| startup | after benchmark rounds | warm (soak start) | after soak | growth |",
        "|---:|---:|---:|---:|---:|",
        f"| {mem.get('startup_mib', '—')} | {mem.get('after_rounds_mib', '—')} | {mem.get('warm_mib', '—')} | "
        f"{mem.get('after_soak_mib', '—')} | {'no soak' if growth is None else f'{growth:+.1%}'} |",
    ]


def _profile(report: dict[str, Any]) -> list[str]:
    prof = report.get("profile")
    if not prof:
        return []
    lines = ["", "## Where quotagate spends its time (py-spy, non-stream, 64 conns)", ""]
    if "error" in prof:
        return [*lines, f"Not profiled: {prof['error']}"]
    lines += [
        f"{prof['samples']:,} busy samples over {prof['requests']:,} requests "
        f"({prof.get('loop_share', 0):.0%} on the event loop, the rest in executor threads tagged [thread]; "
        f"{prof['idle_thread_samples']:,} idle executor samples left out); raw stacks in `{prof['file']}`.",
        "",
        "| frame | own | inclusive |",
        "|---|---:|---:|",
    ]
    lines += [f"| `{r['frame']}` | {r['own']:.1%} | {r['inclusive']:.1%} |" for r in prof["top_own"]]
    lines += ["", "quotagate's own functions by inclusive time:", "", "| frame | inclusive |", "|---|---:|"]
    return lines + [f"| `{r['frame']}` | {r['inclusive']:.1%} |" for r in prof["top_inclusive"]]

"""From raw windows to figures: medians over rounds, added latency against direct in the same round, the
ratios and issue-5 checks of the report, and the current/baseline comparison. No I/O."""

from __future__ import annotations

import statistics
from collections.abc import Callable, Iterable
from typing import Any

from bench.targets import DIRECT, LITELLM, QG, QG_REDIS, RELAY, TargetSpec

Raw = dict[str, dict[str, list[dict[str, Any]]]]  # scenario -> target -> one result per round
Summary = dict[str, dict[str, dict[str, Any]]]  # scenario -> target -> figures
METRICS = ("rps", "p50_ms", "p99_ms", "ttft_p50_ms", "ttft_p99_ms", "cpu_ms_per_req")
ADDED = ("p50_ms", "p99_ms", "ttft_p50_ms")  # each also as added_<m>: minus direct's in the same round


def median(values: Iterable[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(statistics.median(vals), 4) if vals else None


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


def per_round(per_target: dict[str, list[dict[str, Any]]], target: str, metric: str) -> dict[int, float]:
    """round -> value of ``metric`` (``added_<m>``: minus direct's value in the same round)."""
    base = metric.removeprefix("added_")
    direct = {r["round"]: r.get(base) for r in per_target.get(DIRECT, [])} if base != metric else {}
    out: dict[int, float] = {}
    for r in per_target.get(target, []):
        v = r.get(base)
        if v is None:
            continue
        if base == metric:
            out[r["round"]] = v
        elif direct.get(r["round"]) is not None:
            out[r["round"]] = v - direct[r["round"]]
    return out


def summarise(raw: Raw) -> Summary:
    """Per scenario and target: medians over rounds, and added latency vs direct in the same round."""
    out: Summary = {}
    for sc, per_target in raw.items():
        out[sc] = {}
        for target, rounds in per_target.items():
            s: dict[str, Any] = {
                "rounds": len(rounds),
                "requests": sum(r["requests"] for r in rounds),
                "errors": sum(r["errors"] for r in rounds),
            }
            for m in METRICS:
                s[m] = median([r.get(m) for r in rounds])
            if target != DIRECT and DIRECT in per_target:
                for m in ADDED:
                    s[f"added_{m}"] = median(per_round(per_target, target, f"added_{m}").values())
            out[sc][target] = s
    return out


def _getter(summary: Summary) -> Callable[[str, str, str], float | None]:
    def get(sc: str, t: str, m: str) -> float | None:
        v = summary.get(sc, {}).get(t, {}).get(m)
        return None if v is None else float(v)

    return get


def ratios(summary: Summary) -> dict[str, float | None]:
    get = _getter(summary)

    def r(sc: str, a: str, b: str, m: str = "rps") -> float | None:
        return ratio(get(sc, a, m), get(sc, b, m))

    return {
        "quotagate/relay throughput (non-stream, 64 conns)": r("json64", QG, RELAY),
        "quotagate/LiteLLM throughput (non-stream, 64 conns)": r("json64", QG, LITELLM),
        "LiteLLM/quotagate added p50 latency (1 conn)": r("json1", LITELLM, QG, "added_p50_ms"),
        "quotagate/relay streams/s (64 conns)": r("stream64", QG, RELAY),
        "quotagate/LiteLLM streams/s (64 conns)": r("stream64", QG, LITELLM),
        "quotagate-redis/relay throughput (non-stream, 64 conns)": r("json64", QG_REDIS, RELAY),
        "quotagate/relay CPU per request (non-stream, 64 conns)": r("json64", QG, RELAY, "cpu_ms_per_req"),
    }


def _check(name: str, value: float | None, ok: Callable[[float], bool], fmt: str) -> dict[str, Any]:
    if value is None:
        return {"target": name, "value": None, "shown": "not measured", "result": "n/a"}
    return {"target": name, "value": value, "shown": fmt.format(value), "result": "PASS" if ok(value) else "MISS"}


def checks(summary: Summary, mem: dict[str, Any]) -> list[dict[str, Any]]:
    """The targets of issue 5, each with its measured value and PASS/MISS."""
    get = _getter(summary)
    qg_lat, ll_lat = get("json1", QG, "added_p50_ms"), get("json1", LITELLM, "added_p50_ms")
    lat_ratio = ratio(ll_lat, qg_lat) if qg_lat is not None and qg_lat > 0 else None
    if qg_lat is not None and ll_lat is not None and qg_lat <= 0:
        lat_ratio = float("inf")
    rps = ratio(get("json64", QG, "rps"), get("json64", RELAY, "rps"))
    rps_ll = ratio(get("json64", QG, "rps"), get("json64", LITELLM, "rps"))
    streams = ratio(get("stream64", QG, "rps"), get("stream64", RELAY, "rps"))
    redis = ratio(get("json64", QG_REDIS, "rps"), get("json64", RELAY, "rps"))
    soak = f"{mem.get('soak_minutes', 0):g}"
    return [
        _check("non-streaming 64 conns throughput >= 0.5x bare relay", rps, lambda v: v >= 0.5, "{:.2f}x"),
        _check("non-streaming 64 conns throughput >= 25x LiteLLM", rps_ll, lambda v: v >= 25, "{:.1f}x"),
        _check("added p50 latency at 1 connection <= 1.0 ms", qg_lat, lambda v: v <= 1.0, "{:.3f} ms"),
        _check("added p50 latency >= 15x lower than LiteLLM's", lat_ratio, lambda v: v >= 15, "{:.1f}x"),
        _check("streaming streams/s (64 conns) >= 0.5x bare relay", streams, lambda v: v >= 0.5, "{:.2f}x"),
        _check(
            "added TTFT p50 (1 conn, paced mock) <= 1 ms",
            get("ttft1", QG, "added_ttft_p50_ms"),
            lambda v: v <= 1.0,
            "{:.3f} ms",
        ),
        _check("Redis store throughput (64 conns) >= 0.4x bare relay", redis, lambda v: v >= 0.4, "{:.2f}x"),
        _check(
            "long-context re-send adds <= 2 ms p50",
            get("lc_resend", QG, "added_p50_ms"),
            lambda v: v <= 2.0,
            "{:.3f} ms",
        ),
        _check(f"RSS growth < 10% over {soak} min of mixed load", mem.get("growth"), lambda v: v < 0.10, "{:+.1%}"),
    ]


# (scenario, metric, higher is better): what current vs baseline compares. Latency at 64 connections is
# left out: in a closed loop it is the connection count over the throughput, already compared.
COMPARED: tuple[tuple[str, str, bool], ...] = (
    ("json1", "added_p50_ms", False),
    ("json1", "added_p99_ms", False),
    ("json1", "cpu_ms_per_req", False),
    ("json64", "rps", True),
    ("json64", "cpu_ms_per_req", False),
    ("stream64", "rps", True),
    ("stream64", "cpu_ms_per_req", False),
    ("ttft1", "added_ttft_p50_ms", False),
    ("lc_first", "added_p50_ms", False),
    ("lc_first", "cpu_ms_per_req", False),
    ("lc_resend", "added_p50_ms", False),
    ("lc_resend", "cpu_ms_per_req", False),
)
SAME_WITHIN = 0.03  # a ratio within 3% of 1 reads as "same": below what rounds on this machine resolve


def verdict(r: float | None, higher_is_better: bool) -> str:
    if r is None:
        return "n/a"
    if abs(r - 1) <= SAME_WITHIN + 1e-9:  # 0.97 is within 3%, whatever the float says
        return "same"
    return "better" if (r > 1) == higher_is_better else "worse"


def _row(sc: str, metric: str, cur: dict[int, float], base: dict[int, float]) -> dict[str, Any]:
    """Throughput and CPU: the median of the per-round ratios (the two ran next to each other in every
    round, so drift of the shared machine cancels). Added latency: the ratio of the two medians, plus the
    median per-round difference in ms, in which direct's own noise cancels; a per-round ratio of two added
    latencies would carry that noise twice."""
    rounds = sorted(cur.keys() & base.keys())
    if not metric.startswith("added_"):
        per_round = [r for k in rounds if (r := ratio(cur[k], base[k])) is not None]
        return {"ratio": median(per_round), "diff": None, "per_round": per_round}
    cur_med, base_med = median(cur[k] for k in rounds), median(base[k] for k in rounds)
    diffs = [round(cur[k] - base[k], 4) for k in rounds]
    r = ratio(cur_med, base_med) if base_med is not None and base_med > 0 else None
    return {"ratio": r, "diff": median(diffs), "per_round": diffs}


def compare(raw: Raw, summary: Summary, current: TargetSpec, baseline: TargetSpec) -> list[dict[str, Any]]:
    """current/baseline per scenario and metric (see _row), beside the two medians over rounds."""
    rows = []
    for sc, metric, higher in COMPARED:
        if sc not in raw or current.name not in raw[sc] or baseline.name not in raw[sc]:
            continue
        cur, base = per_round(raw[sc], current.name, metric), per_round(raw[sc], baseline.name, metric)
        row = _row(sc, metric, cur, base)
        rows.append(
            {
                "scenario": sc,
                "metric": metric,
                "current": summary[sc][current.name].get(metric),
                "baseline": summary[sc][baseline.name].get(metric),
                **row,
                "higher_is_better": higher,
                "verdict": verdict(row["ratio"], higher),
            }
        )
    return rows


def comparisons(raw: Raw, summary: Summary, targets: tuple[TargetSpec, ...]) -> list[dict[str, Any]]:
    """One comparison for every target at a ref whose kind also ran from the working tree."""
    names = {t.name for t in targets}
    out = []
    for t in targets:
        current = TargetSpec(t.kind)
        if t.ref is not None and current.name in names:
            out.append({"current": current.name, "baseline": t.name, "rows": compare(raw, summary, current, t)})
    return out

"""The scenarios, and the request bodies they send (written once per run into its temporary folder)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import orjson

from bench.count_cache import build_conversation
from bench.targets import FAST_MODEL, PACED_MODEL, TargetSpec


@dataclass(frozen=True, slots=True)
class Scenario:
    key: str
    title: str
    body: str  # name of a body file
    conns: int
    stream: bool = False
    paced: bool = False
    redis: bool = True  # Redis targets run it too (off where the store does not change what it measures)
    long: bool = False  # long-context: a longer minimum window (a request takes tens of ms)

    def runs(self, spec: TargetSpec) -> bool:
        return self.redis or not spec.redis


SCENARIOS = (
    Scenario("json1", "non-stream, 1 conn", "small", 1),
    Scenario("json64", "non-stream, 64 conns", "small", 64),
    Scenario("stream64", "stream, 64 conns", "small_stream", 64, stream=True),
    Scenario("ttft1", "stream, 1 conn, paced mock", "paced_stream", 1, stream=True, paced=True, redis=False),
    Scenario("lc_first", "long context, first send", "lc_fresh", 1, redis=False, long=True),
    Scenario("lc_resend", "long context, re-send +1 msg", "lc_resend", 1, redis=False, long=True),
)
BY_KEY = {s.key: s for s in SCENARIOS}


def write_bodies(tmp: Path) -> dict[str, Path]:
    small = {
        "model": FAST_MODEL,
        "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
        "max_tokens": 16,
    }
    conv = build_conversation()
    fresh = [dict(m) for m in conv]
    for m in fresh[1:]:  # every message differs per request: nothing can come from a cache
        m["content"] = "__N__ " + m["content"]
    resend = [*conv, {"role": "user", "content": "Round __N__: now please also handle the empty-input case."}]
    bodies = {
        "small": small,
        "small_stream": {**small, "stream": True},
        "paced_stream": {**small, "model": PACED_MODEL, "stream": True},
        "lc_fresh": {"model": FAST_MODEL, "messages": fresh, "max_tokens": 16},
        "lc_resend": {"model": FAST_MODEL, "messages": resend, "max_tokens": 16},
    }
    paths = {}
    for name, body in bodies.items():
        paths[name] = tmp / f"body-{name}.json"
        paths[name].write_bytes(orjson.dumps(body))
    return paths

"""The targets a run measures, and the quotagate configs they run with.

A target name is a kind, optionally at a git ref: ``quotagate`` is the working tree's code,
``quotagate@3350188`` the same kind run from that commit's tree (bench/baseline.py).

  direct             the mock itself: what "added latency" is measured against
  relay              bench/relay.py: raw ASGI on uvicorn+uvloop+httptools, aiohttp client: the physical limit
  quotagate          full governance with a real team's config (REAL_TEAM) on SQLite
  quotagate-redis    the same on ``store: redis://`` (a private redis-server)
  quotagate-minimal  one budget, no rate limits, no key budget (MINIMAL_TEAM), SQLite: only on request
  litellm            LiteLLM proxy (its own virtualenv, no database)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from bench.procs import Service

DIRECT, RELAY, QG, QG_REDIS, QG_MIN, LITELLM = (
    "direct",
    "relay",
    "quotagate",
    "quotagate-redis",
    "quotagate-minimal",
    "litellm",
)
KINDS = (DIRECT, RELAY, QG, QG_REDIS, QG_MIN, LITELLM)  # also the order of the report's columns
QUOTAGATE_KINDS = (QG, QG_REDIS, QG_MIN)
LABELS = {
    DIRECT: "direct (mock)",
    RELAY: "bare relay",
    QG: "quotagate",
    QG_REDIS: "quotagate (redis)",
    QG_MIN: "quotagate (1 budget)",
    LITELLM: "LiteLLM",
}
KEY = "sk-bench"
FAST_MODEL, PACED_MODEL = "gpt-4o-mini", "gpt-4o"  # the paced scenario's model routes to the paced mock


@dataclass(frozen=True, slots=True)
class TargetSpec:
    """What one target name asks for: ``quotagate-redis@3350188`` is kind quotagate-redis at ref 3350188."""

    kind: str
    ref: str | None = None  # a git ref: run that commit's quotagate instead of the working tree's

    @property
    def name(self) -> str:
        return f"{self.kind}@{self.ref}" if self.ref else self.kind

    @property
    def label(self) -> str:
        return f"{LABELS[self.kind]} @{self.ref}" if self.ref else LABELS[self.kind]

    @property
    def redis(self) -> bool:
        return self.kind == QG_REDIS

    @property
    def quotagate(self) -> bool:
        return self.kind in QUOTAGATE_KINDS

    def at(self, ref: str) -> TargetSpec:
        return TargetSpec(self.kind, ref)

    def order(self) -> tuple[int, str]:
        return (KINDS.index(self.kind), self.ref or "")


def parse_target(name: str) -> TargetSpec:
    kind, _, ref = name.strip().partition("@")
    if kind not in KINDS:
        raise ValueError(f"unknown target {name!r}: choose from {', '.join(KINDS)} (quotagate kinds take @REF)")
    if ref and kind not in QUOTAGATE_KINDS:
        raise ValueError(f"{name!r}: only {', '.join(QUOTAGATE_KINDS)} can run at a git ref")
    return TargetSpec(kind, ref or None)


@dataclass
class Target:
    spec: TargetSpec
    base: str  # where /v1/chat/completions lives
    paced_base: str
    headers: dict[str, str]
    service: Service | None = None  # None: not ours to measure (direct = the mock on the load core)

    @property
    def name(self) -> str:
        return self.spec.name

    def url(self, paced: bool) -> str:
        return (self.paced_base if paced else self.base) + "/v1/chat/completions"


# Issue 14: the cost grows with the number of limits, so the main target carries a real team's set: a day
# token budget and a month dollar budget, RPM, TPM and concurrency on the team, and a budget on the key.
# The shape is a real team's; the sizes are not, so that nothing is refused: a full run sends each quotagate
# target about 2e9 tokens (~$300 at gpt-4o-mini's price), up to ~1.3e9 a minute during the long-context
# re-sends, and holds 64 requests in flight; every limit below leaves at least 5x headroom over that.
REAL_TEAM: dict[str, Any] = {
    "budgets": [{"window": "day", "tokens": 10**11}, {"window": "month", "usd": 1_000_000}],
    "rate_limits": {"tpm": 10**10, "rpm": 10**7, "concurrent": 256},
}
REAL_KEY_BUDGETS: list[dict[str, Any]] = [{"window": "day", "usd": 100_000}]
# The governance floor, to show what each further limit costs: one budget, nothing else.
MINIMAL_TEAM: dict[str, Any] = {"budgets": [{"window": "day", "usd": 1_000_000}]}


def quotagate_config(kind: str, mock: str, paced: str, store: str) -> dict[str, Any]:
    """The config of a quotagate target: every request is governed, none is refused."""
    real = kind != QG_MIN
    key: dict[str, Any] = {"team": "bench", "name": "bench", "key": KEY}
    if real:
        key["budgets"] = REAL_KEY_BUDGETS
    return {
        "store": store,
        "admin_key": "bench-admin",
        "providers": {
            "mock": {"base_url": f"{mock}/v1", "api_key": "sk-upstream"},
            "paced": {"base_url": f"{paced}/v1", "api_key": "sk-upstream"},
        },
        "models": {FAST_MODEL: {"provider": "mock"}, PACED_MODEL: {"provider": "paced"}},
        "teams": {"bench": REAL_TEAM if real else MINIMAL_TEAM},
        "keys": [key],
    }

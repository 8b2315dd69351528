"""The command line of bench/run.py, read once into a frozen Options."""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

from bench import BENCH
from bench.baseline import BASELINE_DIR
from bench.targets import DIRECT, LITELLM, QG, QG_REDIS, RELAY, TargetSpec, parse_target

USAGE = """The benchmark: quotagate vs a bare relay vs direct-to-mock vs LiteLLM (and, with --baseline-ref,
vs an older commit of quotagate), in one run, one command."""


@dataclass(frozen=True, slots=True)
class Options:
    quick: bool
    rounds: int
    duration: float
    warmup: float
    soak_minutes: float
    targets: tuple[TargetSpec, ...]  # in report order; direct and quotagate are always there
    baseline_dir: Path
    out: Path
    litellm_venv: Path
    install_timeout: float
    profile: float

    def has(self, kind: str) -> bool:
        return any(t.kind == kind for t in self.targets)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=USAGE)
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round, short windows, no LiteLLM, no soak")
    p.add_argument("--rounds", type=int)
    p.add_argument("--duration", type=float, help="measured seconds per scenario and target (default 8)")
    p.add_argument("--warmup", type=float, help="unmeasured seconds before each window (default 1)")
    p.add_argument("--soak-minutes", type=float, help="mixed load on quotagate for the RSS check (default 10)")
    p.add_argument(
        "--targets",
        help="comma-separated targets to measure (default: relay,quotagate,quotagate-redis,litellm); "
        "direct and quotagate always run; also quotagate-minimal, and quotagate kinds at a git ref, "
        "e.g. quotagate@3350188",
    )
    p.add_argument(
        "--baseline-ref",
        metavar="REF",
        help="also run quotagate (and quotagate-redis, if measured) from this commit, as quotagate@REF; "
        "the report compares current/baseline",
    )
    p.add_argument("--baseline-dir", type=Path, default=BASELINE_DIR, help="where baseline trees are exported")
    p.add_argument("--no-litellm", action="store_true")
    p.add_argument("--with-litellm", action="store_true", help="measure LiteLLM in --quick mode too")
    p.add_argument("--no-redis", action="store_true")
    p.add_argument("--out", type=Path, default=BENCH / "results")
    p.add_argument("--litellm-venv", type=Path, default=BENCH / ".litellm-venv")
    p.add_argument("--install-timeout", type=float, default=900.0, help="seconds allowed for pip install litellm")
    p.add_argument(
        "--profile",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="py-spy quotagate for SECONDS under 64-conn load (needs py-spy); top frames in the report",
    )
    return p


def _targets(a: argparse.Namespace) -> tuple[TargetSpec, ...]:
    """--targets (or the default set), minus --no-redis / --no-litellm, plus @REF copies of quotagate."""
    names = a.targets.split(",") if a.targets else [RELAY, QG, QG_REDIS, LITELLM]
    specs = {parse_target(n) for n in names if n.strip()} | {TargetSpec(DIRECT), TargetSpec(QG)}
    if a.no_redis:
        specs = {s for s in specs if not s.redis}
    if a.no_litellm or (a.quick and not a.with_litellm and not a.targets):
        specs.discard(TargetSpec(LITELLM))
    if a.baseline_ref:
        specs |= {s.at(a.baseline_ref) for s in specs if s.kind in (QG, QG_REDIS) and s.ref is None}
    return tuple(sorted(specs, key=TargetSpec.order))


def parse_args(argv: list[str] | None) -> Options:
    p = _parser()
    a = p.parse_args(argv)
    try:
        targets = _targets(a)
    except ValueError as e:
        p.error(str(e))
    q = a.quick
    return Options(
        quick=q,
        rounds=a.rounds or (1 if q else 3),
        duration=a.duration or (0.5 if q else 8.0),
        warmup=a.warmup if a.warmup is not None else (0.25 if q else 1.0),
        soak_minutes=a.soak_minutes if a.soak_minutes is not None else (0.0 if q else 10.0),
        targets=targets,
        baseline_dir=a.baseline_dir,
        out=a.out,
        litellm_venv=a.litellm_venv,
        install_timeout=a.install_timeout,
        profile=a.profile,
    )

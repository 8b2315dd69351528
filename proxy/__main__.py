"""The ``quotagate`` command: serve, check-config, keys, usage, mock-upstream."""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from .settings import ConfigError, Settings, load

DEFAULT_CONFIG = "config/quotagate.yaml"


def _config_path(arg: str | None) -> str:
    return arg or os.environ.get("QUOTAGATE_CONFIG") or DEFAULT_CONFIG


def _load_or_exit(path: str) -> Settings:
    try:
        return load(path)
    except ConfigError as e:
        print(f"quotagate: invalid config {path}: {e}", file=sys.stderr)
        raise SystemExit(2) from None


def app_factory() -> Any:
    """uvicorn's factory for every worker process: reads the config named by QUOTAGATE_CONFIG."""
    from .app import create_app

    return create_app(_load_or_exit(_config_path(None)))


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    path = _config_path(args.config)
    settings = _load_or_exit(path)  # fail fast, before any worker starts
    os.environ["QUOTAGATE_CONFIG"] = str(Path(path).resolve())
    if args.workers > 1 or os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        # Workers sum their counters through files in this directory; it is created (or emptied of a
        # previous run's files, which would otherwise be added in) before any worker starts.
        from .metrics import prepare_multiprocess_dir

        mp_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or tempfile.mkdtemp(prefix="quotagate-metrics-")
        prepare_multiprocess_dir(mp_dir)
    uvicorn.run(
        "proxy.__main__:app_factory",
        factory=True,
        host=args.host,
        port=args.port,
        workers=args.workers,
        loop="uvloop",
        http="httptools",
        lifespan="on",
        access_log=args.access_log,
        log_level=args.log_level,
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) or None,
        backlog=4096,
        # X-Forwarded-* rewriting is off (nothing here reads the client address) and so is uvicorn's
        # `server` header: both cost per request on the hot path.
        proxy_headers=False,
        server_header=False,
    )
    return 0


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        s = load(args.path)
    except ConfigError as e:
        print(f"{args.path}: {e}", file=sys.stderr)
        return 1
    print(
        f"{args.path}: ok ({len(s.providers)} providers, {len(s.models)} models, {len(s.teams)} teams, "
        f"{len(s.keys)} keys, store {s.store.split('://')[0]})"
    )
    return 0


async def _with_store(settings: Settings, fn: Any) -> Any:
    from .store import open_store

    store = open_store(settings.store)
    await store.open()
    try:
        return await fn(store)
    finally:
        await store.close()


def cmd_keys_create(args: argparse.Namespace) -> int:
    from .admin import new_key
    from .settings import hash_key
    from .store.base import KeyRecord

    settings = _load_or_exit(_config_path(args.config))
    if args.team not in settings.teams:
        print(f"quotagate: unknown team {args.team!r} (declare it under `teams:`)", file=sys.stderr)
        return 2
    if settings.store.startswith("memory://"):
        print(
            "quotagate: the store is memory://; a key created here would vanish. Use sqlite:// or redis://.",
            file=sys.stderr,
        )
        return 2
    key = new_key()
    digest = hash_key(key)
    record = KeyRecord(digest, args.team, args.name or f"key-{digest[:8]}", time.time())

    async def put(store: Any) -> None:
        await store.put_key(record)

    asyncio.run(_with_store(settings, put))
    print(key)
    print(
        f"# team={record.team} name={record.name} sha256={digest} (shown once; only the hash is stored)",
        file=sys.stderr,
    )
    return 0


def parse_since(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw])", text.strip())
    if not m:
        raise argparse.ArgumentTypeError("use a duration such as 30m, 12h, 7d or 2w")
    mult = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
    return float(m.group(1)) * mult


def cmd_usage(args: argparse.Namespace) -> int:
    settings = _load_or_exit(_config_path(args.config))
    since = time.time() - args.since

    async def read(store: Any) -> Any:
        return await store.usage(since, args.team)

    rows = asyncio.run(_with_store(settings, read))
    header = ("team", "model", "requests", "input", "cached", "output", "reasoning", "cost_usd")
    table = [header] + [
        (
            r.team,
            r.model,
            str(r.requests),
            str(r.input_tokens),
            str(r.cached_input_tokens),
            str(r.output_tokens),
            str(r.reasoning_tokens),
            f"{r.cost_micro_usd / 1e6:.6f}",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for row in table:
        print("  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))))
    if not rows:
        print("(no requests in this period)")
    return 0


def cmd_mock_upstream(args: argparse.Namespace) -> int:
    from .mock_upstream import MockConfig, run

    run(
        args.host,
        args.port,
        MockConfig(
            ttft_per_1k_input_s=args.ttft_per_1k,
            base_ttft_s=args.base_ttft,
            tpot_s=args.tpot,
            default_output_tokens=args.output_tokens,
            api_key=args.api_key,
        ),
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="quotagate", description="A cost-governing gateway for LLM APIs.")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the gateway")
    s.add_argument("--config", help=f"config file (default: $QUOTAGATE_CONFIG or {DEFAULT_CONFIG})")
    s.add_argument("--host", default="127.0.0.1")
    s.add_argument("--port", type=int, default=8080)
    s.add_argument("--workers", type=int, default=1)
    s.add_argument("--log-level", default="info")
    s.add_argument("--access-log", action="store_true")
    s.set_defaults(fn=cmd_serve)

    c = sub.add_parser("check-config", help="validate a config file")
    c.add_argument("path")
    c.set_defaults(fn=cmd_check_config)

    k = sub.add_parser("keys", help="manage API keys")
    ksub = k.add_subparsers(dest="keys_command", required=True)
    kc = ksub.add_parser("create", help="create a key (printed once; only its hash is stored)")
    kc.add_argument("--team", required=True)
    kc.add_argument("--name")
    kc.add_argument("--config")
    kc.set_defaults(fn=cmd_keys_create)

    u = sub.add_parser("usage", help="requests, tokens and cost per team and model")
    u.add_argument("--team")
    u.add_argument("--since", type=parse_since, default=parse_since("7d"))
    u.add_argument("--config")
    u.set_defaults(fn=cmd_usage)

    m = sub.add_parser("mock-upstream", help="an OpenAI-compatible mock server for demos, tests, benchmarks")
    m.add_argument("--host", default="127.0.0.1")
    m.add_argument("--port", type=int, default=9000)
    m.add_argument("--ttft-per-1k", type=float, default=0.0, help="seconds of time-to-first-token per 1K input tokens")
    m.add_argument("--base-ttft", type=float, default=0.0)
    m.add_argument("--tpot", type=float, default=0.0, help="seconds per output token")
    m.add_argument("--output-tokens", type=int, default=16)
    m.add_argument("--api-key")
    m.set_defaults(fn=cmd_mock_upstream)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.fn(args))


if __name__ == "__main__":
    raise SystemExit(main())

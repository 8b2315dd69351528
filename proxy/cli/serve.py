"""``quotagate serve``: validate the config, start the built-in mock upstream if the config routes to it,
log the startup banner, then run uvicorn (its workers build the app with ``app_factory``)."""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import logging
import logging.config
import os
import tempfile
import threading
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml

from .. import __version__
from ..logs import log_config
from ..settings import BUILTIN_PRICES, ConfigError, Settings
from ..units import human_amount, human_count
from .common import ConfigChoice, add_config_option, fail, find_config, load_config, load_or_exit

log = logging.getLogger("quotagate.startup")
MOCK_URL_ENV = "QUOTAGATE_BUILTIN_MOCK_URL"  # set by `serve` for its workers: where the built-in mock listens


def app_factory() -> Any:
    """uvicorn's factory for every worker process: the config `serve` chose (it sets $QUOTAGATE_CONFIG)."""
    from ..app import create_app

    _, settings = load_or_exit(None)
    return create_app(with_builtin_mock(settings, os.environ.get(MOCK_URL_ENV)))


def builtin_mock_providers(settings: Settings) -> list[str]:
    """Providers that are the built-in mock (``kind: mock``, no base_url) and that some model routes to."""
    used: set[str] = set()
    for m in settings.models.values():
        p: Any = m.provider
        used.update([p] if isinstance(p, str) else p)
    return sorted(n for n, p in settings.providers.items() if p.builtin_mock and n in used)


def with_builtin_mock(settings: Settings, url: str | None) -> Settings:
    names = builtin_mock_providers(settings)
    if not names:
        return settings
    if not url:
        fail(
            f"provider {names[0]!r} is `kind: mock` with no base_url: only `quotagate serve` starts that mock; "
            "give it a base_url to run the app another way",
            code=2,
        )
    providers = {n: p.model_copy(update={"base_url": url}) if n in names else p for n, p in settings.providers.items()}
    return settings.model_copy(update={"providers": providers})


class BuiltinMock:
    """proxy/mock/ served on a loopback port from a thread of the `serve` process (its own event
    loop), for as long as the gateway runs: the shipped config answers with no other process started."""

    def __init__(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 15.0) -> str:
        from .. import mock

        ready: concurrent.futures.Future[str] = concurrent.futures.Future()

        def run() -> None:
            loop = asyncio.new_event_loop()
            try:
                server = loop.run_until_complete(mock.start("127.0.0.1", 0))
            except BaseException as e:  # reported to start(), which raises it
                ready.set_exception(e)
                loop.close()
                return
            self._loop = loop
            ready.set_result(server.url)
            try:
                loop.run_forever()
            finally:
                loop.run_until_complete(server.close())
                loop.close()

        self._thread = threading.Thread(target=run, name="quotagate-mock-upstream", daemon=True)
        self._thread.start()
        return ready.result(timeout)

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    logging_config = log_config(args.log_format, args.log_level, access_log=args.access_log)
    logging.config.dictConfig(logging_config)
    choice = find_config(args.config)
    try:
        settings = load_config(choice)  # fail fast, before any worker starts
    except ConfigError as e:
        log.error("invalid config %s: %s", choice.path, e, extra={"fields": {"config": str(choice.path)}})
        return 2
    os.environ["QUOTAGATE_CONFIG"] = str(choice.path.resolve())
    mock: BuiltinMock | None = None
    mock_url = None
    if builtin_mock_providers(settings):
        mock = BuiltinMock()
        mock_url = mock.start()
        os.environ[MOCK_URL_ENV] = mock_url
        settings = with_builtin_mock(settings, mock_url)
    mp_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if args.workers > 1 or mp_dir:
        # Workers sum their counters through files in this directory; it is created (or emptied of a
        # previous run's files, which would otherwise be added in) before any worker starts.
        from ..metrics import prepare_multiprocess_dir

        mp_dir = mp_dir or tempfile.mkdtemp(prefix="quotagate-metrics-")
        prepare_multiprocess_dir(mp_dir)
    fields = banner(settings, choice, args, mp_dir, mock_url)
    log.info("quotagate %s starting", __version__, extra={"fields": fields, "block": banner_text(fields)})
    try:
        uvicorn.run(
            "proxy.cli.serve:app_factory",
            factory=True,
            host=args.host,
            port=args.port,
            workers=args.workers,
            loop="uvloop",
            http="httptools",
            lifespan="on",
            log_config=logging_config,
            log_level=args.log_level,
            access_log=False,  # quotagate logs its own request lines (logs.py)
            timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) or None,
            backlog=4096,
            # X-Forwarded-* rewriting is off (nothing here reads the client address) and so is uvicorn's
            # `server` header: both cost per request on the hot path.
            proxy_headers=False,
            server_header=False,
        )
    finally:
        if mock is not None:
            mock.stop()
    return 0


# ---- the startup banner ------------------------------------------------------------------------------


def mask_url(url: str) -> str:
    """A store or provider URL with its password (or lone token) replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None and not (parts.username and "@" in parts.netloc):
        return url
    user = parts.username or ""
    host = parts.netloc.rsplit("@", 1)[1]
    cred = f"{user}:***" if parts.password is not None else "***"
    return urlunsplit(parts._replace(netloc=f"{cred}@{host}"))


def _price_sources(choice: ConfigChoice, settings: Settings) -> dict[str, str]:
    """model -> "config" or "price table <date>": read from the file, since settings hold merged prices."""
    try:
        raw = yaml.safe_load(choice.path.read_text()) or {}
    except (OSError, yaml.YAMLError):
        raw = {}
    table = settings.price_table
    date = "?"
    if table is not None:
        path = BUILTIN_PRICES if table == "builtin" else choice.path.parent / table
        try:
            date = str((yaml.safe_load(path.read_text()) or {}).get("date", "undated"))
        except (OSError, yaml.YAMLError, AttributeError):
            date = "unreadable"
    models = raw.get("models") if isinstance(raw, dict) else None
    out: dict[str, str] = {}
    for name in settings.models:
        entry = models.get(name) if isinstance(models, dict) else None
        given = isinstance(entry, dict) and "price" in entry
        out[name] = "config" if given or table is None else f"price table {date}"
    return out


def _team_line(name: str, settings: Settings) -> str:
    t = settings.teams[name]
    parts = [
        "budgets " + (", ".join(f"{b.period} {human_amount(b.limit, b.unit)}{'' if b.unit == 'usd' else ' tokens'}"
                                for b in t.budgets) or "none"),
    ]  # fmt: skip
    r = t.rate_limits
    rates = [f"{k} {human_count(v)}" for k, v in (("tpm", r.tpm), ("rpm", r.rpm), ("concurrent", r.concurrent)) if v]
    parts.append("rate " + (", ".join(rates) or "none"))
    if t.max_input_tokens:
        parts.append(f"input cap {human_count(t.max_input_tokens)} ({t.on_context_overflow})")
    if t.max_output_tokens:
        parts.append(f"output cap {human_count(t.max_output_tokens)}")
    parts.append("models " + (", ".join(t.models) if t.models is not None else "all"))
    keys = sum(1 for k in settings.keys if k.team == name)
    parts.append(f"{keys} config key{'s' if keys != 1 else ''}")
    return "; ".join(parts)


def banner(
    settings: Settings, choice: ConfigChoice, args: argparse.Namespace, mp_dir: str | None, mock_url: str | None
) -> dict[str, Any]:
    """What this gateway is about to do, as structured fields (the JSON log event; the text block is made
    from the same fields)."""
    prices = _price_sources(choice, settings)
    providers: dict[str, str] = {}
    for name, p in settings.providers.items():
        if not p.enabled:
            providers[name] = "off (its api_key is empty)"
        elif mock_url is not None and p.kind == "mock" and p.base_url == mock_url:
            providers[name] = f"built-in mock upstream at {mock_url} (started by serve; no provider key is set)"
        else:
            providers[name] = mask_url(p.base_url)
    return {
        "version": __version__,
        "config": str(choice.path.resolve()),
        "config_source": choice.source,
        "store": mask_url(settings.store),
        "listen": f"http://{args.host}:{args.port}",
        "workers": args.workers,
        "providers": providers,
        "models": {n: {"provider": m.provider, "price": prices[n]} for n, m in settings.models.items()},
        "teams": {n: _team_line(n, settings) for n in settings.teams},
        "admin_api": settings.admin_key is not None,
        "metrics_path": "/metrics",
        "multiprocess_dir": mp_dir,
        "log_format": args.log_format,
        "access_log": args.access_log,
    }


def banner_text(f: dict[str, Any]) -> str:
    def rows(label: str, items: dict[str, str]) -> list[str]:
        out = []
        for i, (k, v) in enumerate(items.items()):
            out.append(f"  {label if i == 0 else '':<10} {k}: {v}")
        return out or [f"  {label:<10} none"]

    lines = [
        f"  {'config':<10} {f['config']} ({f['config_source']})",
        f"  {'store':<10} {f['store']}",
        f"  {'listen':<10} {f['listen']}  workers {f['workers']}",
        *rows("providers", f["providers"]),
        *rows("models", {n: f"{m['provider']} (price: {m['price']})" for n, m in f["models"].items()}),
        *rows("teams", f["teams"]),
        f"  {'admin API':<10} "
        + (
            "on at /admin (OpenAPI at /admin/openapi.json, admin key required)"
            if f["admin_api"]
            else "off (no admin_key)"
        ),
        f"  {'metrics':<10} {f['metrics_path']}"
        + (f" (multiprocess dir {f['multiprocess_dir']})" if f["multiprocess_dir"] else " (single process)"),
        f"  {'logs':<10} {f['log_format']}; "
        + ("every request" if f["access_log"] else "refused and failed requests (--access-log: every request)"),
    ]
    return "\n".join(lines)


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    s = sub.add_parser("serve", help="run the gateway", description="Run the gateway.")
    add_config_option(s)
    s.add_argument(
        "--host",
        default=os.environ.get("QUOTAGATE_HOST", "127.0.0.1"),
        help="listen address (default: %(default)s; $QUOTAGATE_HOST)",
    )
    s.add_argument(
        "--port",
        type=int,
        default=int(os.environ.get("QUOTAGATE_PORT", "8080")),
        help="listen port (default: %(default)s; $QUOTAGATE_PORT)",
    )
    s.add_argument("--workers", type=int, default=1, help="worker processes sharing the port (default: %(default)s)")
    s.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="level of quotagate's and uvicorn's logs (default: %(default)s); refused and failed requests are "
        "always logged",
    )
    s.add_argument(
        "--log-format",
        default="text",
        choices=("text", "json"),
        help="text lines, or one JSON object per line (default: %(default)s)",
    )
    s.add_argument(
        "--access-log", action="store_true", help="log every request, not only refused and failed ones (default: off)"
    )
    s.set_defaults(fn=cmd_serve)

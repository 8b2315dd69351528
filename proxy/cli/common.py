"""What every command shares: which config file it reads, the store it opens, how it prints tables.

The ledger is read where it is written (``with_ledger``): the ``ledger:`` database when set, else the store.

The config is found in this order: ``--config``, ``$QUOTAGATE_CONFIG``, ``./config/quotagate.yaml``, then
the default shipped inside the package (``proxy/data/quotagate.yaml``). A relative SQLite path in a config
resolves against that file's directory; for the packaged default, against the data directory
(``$QUOTAGATE_DATA_DIR``, else ``$XDG_DATA_HOME/quotagate``, else ``~/.local/share/quotagate``).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import os
import re
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import orjson

from ..errors import StoreUnavailable
from ..ledger_sink import LedgerReads, ledger_sink
from ..settings import ConfigError, Settings, load
from ..store import open_store
from ..store.base import Store
from ..values import value

PACKAGED_CONFIG = Path(__file__).resolve().parent.parent / "data" / "quotagate.yaml"
LOCAL_CONFIG = Path("config") / "quotagate.yaml"
T = TypeVar("T")


def data_dir() -> Path:
    """Where the packaged default config keeps its database."""
    if os.environ.get("QUOTAGATE_DATA_DIR"):
        return Path(os.environ["QUOTAGATE_DATA_DIR"]).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg).expanduser() / "quotagate"


@value
class ConfigChoice:
    path: Path
    source: str  # --config | $QUOTAGATE_CONFIG | ./config/quotagate.yaml | packaged default

    @property
    def packaged(self) -> bool:
        return self.path.resolve() == PACKAGED_CONFIG


def find_config(arg: str | None) -> ConfigChoice:
    if arg:
        return ConfigChoice(Path(arg), "--config")
    if os.environ.get("QUOTAGATE_CONFIG"):
        return ConfigChoice(Path(os.environ["QUOTAGATE_CONFIG"]), "$QUOTAGATE_CONFIG")
    if LOCAL_CONFIG.is_file():
        return ConfigChoice(LOCAL_CONFIG, "./config/quotagate.yaml")
    return ConfigChoice(PACKAGED_CONFIG, "packaged default")


def load_config(choice: ConfigChoice) -> Settings:
    """Raises ConfigError naming the key path."""
    return load(choice.path, store_base=data_dir() if choice.packaged else None)


def load_or_exit(arg: str | None) -> tuple[ConfigChoice, Settings]:
    choice = find_config(arg)
    try:
        return choice, load_config(choice)
    except ConfigError as e:
        fail(f"invalid config {choice.path}: {e}", code=2)


def fail(message: str, *, code: int = 1) -> NoReturn:
    print(f"quotagate: {message}", file=sys.stderr)
    raise SystemExit(code)


def add_config_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--config",
        metavar="PATH",
        help="config file (default: $QUOTAGATE_CONFIG, else ./config/quotagate.yaml, else the packaged default)",
    )


def with_store(settings: Settings, fn: Callable[[Store], Awaitable[T]]) -> T:
    """Open the configured store, run ``fn`` on it, close it."""
    if settings.store.startswith("memory://"):
        fail("the store is memory://: nothing outlives the gateway process; use sqlite:// or redis://", code=2)

    async def run() -> T:
        store = open_store(settings.store)
        await store.open()
        try:
            return await fn(store)
        finally:
            await store.close()

    return asyncio.run(run())


def with_ledger(settings: Settings, fn: Callable[[Store, LedgerReads], Awaitable[T]]) -> T:
    """Open the store and the ledger (``ledger:``'s database when set, else the store's), run ``fn``, close.

    A ledger database that does not answer fails the command, naming ``ledger:``."""
    if settings.store.startswith("memory://") and settings.ledger is None:
        fail("the store is memory://: nothing outlives the gateway process; use sqlite:// or redis://", code=2)

    async def run() -> T:
        store = open_store(settings.store)
        await store.open()
        sink = ledger_sink(settings, store)
        try:
            await sink.open()
            return await fn(store, sink)
        except (StoreUnavailable, RuntimeError) as e:  # RuntimeError: the ledger's schema is newer than this code
            if settings.ledger is None:
                raise
            fail(str(e))
        finally:
            await sink.close()
            await store.close()

    return asyncio.run(run())


def known_team(settings: Settings, team: str | None) -> str | None:
    if team is not None and team not in settings.teams:
        known = ", ".join(sorted(settings.teams)) or "none"
        fail(f"unknown team {team!r} (teams in the config: {known})")
    return team


def parse_since(text: str) -> float:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([smhdw])", text.strip())
    if not m:
        raise argparse.ArgumentTypeError("use a duration such as 30m, 12h, 7d or 2w")
    mult = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[m.group(2)]
    return float(m.group(1)) * mult


def add_format_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--format", choices=("table", "csv", "json"), default="table", help="output format (default: %(default)s)"
    )


def emit(fmt: str, header: Sequence[str], rows: Sequence[Sequence[Any]], objects: Sequence[dict[str, Any]]) -> None:
    """A table (text cells, numbers right-aligned), CSV of the same cells, or JSON of ``objects``."""
    if fmt == "json":
        sys.stdout.write(orjson.dumps(list(objects), option=orjson.OPT_INDENT_2).decode() + "\n")
        return
    cells = [[("" if c is None else str(c)) for c in row] for row in rows]
    if fmt == "csv":
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(header)
        w.writerows(cells)
        sys.stdout.write(buf.getvalue())
        return
    table = [list(header), *cells]
    widths = [max(len(r[i]) for r in table) for i in range(len(header))]
    numeric = [all(_numberish(r[i]) for r in cells) and bool(cells) for i in range(len(header))]
    for r in table:
        line = "  ".join(
            c.rjust(w) if numeric[i] else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True))
        )
        print(line.rstrip())


def _numberish(cell: str) -> bool:
    return bool(re.fullmatch(r"[-+$]?[\d.,]+[KMB%]?(/[$]?[\d.,]+[KMB]?)?|-|", cell))

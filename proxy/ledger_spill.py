"""The ledger's spill files: JSONL on local disk for records the store cannot take yet, claimed and replayed.

Spill files live in the spill dir (``ledger_spill_dir``, else the SQLite file's directory, else ./data):
``ledger-spill-<pid>-<random>.jsonl``, append-only, one ``{"b": group, "r": record}`` per line; a group is
replayed as one batch. Each process appends only to its own file and holds an exclusive ``flock`` on it
while it lives, so under ``--workers N`` a lock that can be taken means its owner is gone (pids repeat
across container restarts, locks die with their process). A file is claimed by taking its lock, then
renaming it to a ``ledger-replay-<owner>-<n>.replaying`` name of the claimer's own, and deleted only once
every group in it is in the store. A torn last line (a crash mid-write) is skipped with a warning; a failed
append is truncated back, so a later one never starts mid-line.

These functions block: ``proxy/ledger.py`` runs them in a thread (``asyncio.to_thread``), except ``claim``
at boot.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote

import orjson

from .store.base import LedgerRecord

log = logging.getLogger("quotagate.ledger")
BATCH = 500  # records per store call, and per spill group
SPILL_PATTERNS = ("ledger-spill-*.jsonl", "ledger-replay-*.replaying")
_FIELDS = frozenset(f.name for f in dataclasses.fields(LedgerRecord))


def spill_dir(store_url: str, configured: str | None = None) -> Path:
    """The configured spill dir, else the SQLite file's directory, else ./data."""
    if configured:
        return Path(configured)
    prefix = "sqlite:///"
    if store_url.lower().startswith(prefix):
        return Path(unquote(store_url[len(prefix) :].split("?", 1)[0])).parent
    return Path("data")


@dataclass(slots=True, eq=False)
class SpillFile:
    """A spill file this process holds the lock of: its own (appended to) or one being replayed."""

    path: Path
    fd: int  # holds the flock for as long as the file is ours
    records: int = 0  # records in it not yet in the store
    size: int = 0  # bytes known good: a failed append is truncated back to here
    offset: int = 0  # replay: bytes already in the store


def chunks(records: list[LedgerRecord]) -> list[list[LedgerRecord]]:
    return [records[i : i + BATCH] for i in range(0, len(records), BATCH)]


def create(directory: Path, owner: str) -> SpillFile:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"ledger-spill-{owner}.jsonl"
    tmp = directory / f".{path.name}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(tmp, path)  # visible under its claimable name only once locked
    except BaseException:
        os.close(fd)
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    return SpillFile(path, fd)


def append(f: SpillFile, groups: Sequence[Sequence[LedgerRecord]]) -> None:
    first = f.size  # group numbers only need to differ between neighbours: the byte offset will do
    data = b"".join(
        orjson.dumps({"b": first + i, "r": r}, default=str) + b"\n" for i, group in enumerate(groups) for r in group
    )
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(f.fd, view) :]
        os.fsync(f.fd)
    except OSError:
        with contextlib.suppress(OSError):
            os.ftruncate(f.fd, f.size)
        raise
    f.size += len(data)
    f.records += sum(map(len, groups))


def claim(directory: Path, name: Callable[[], Path]) -> list[SpillFile]:
    """Take every spill file whose owner is gone: lock it, then rename it to a name of our own."""
    if not directory.is_dir():
        return []
    out: list[SpillFile] = []
    for path in sorted(p for pattern in SPILL_PATTERNS for p in directory.glob(pattern)):
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            continue  # another process claimed it meanwhile
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # BlockingIOError: its owner is alive
            target = name()
            os.rename(path, target)  # FileNotFoundError: claimed by another process first
        except OSError:
            os.close(fd)
            continue
        out.append(SpillFile(target, fd))
    return out


def count_lines(path: Path) -> int:
    n = 0
    with path.open("rb") as fh:
        while chunk := fh.read(1 << 20):
            n += chunk.count(b"\n")
    return n


def read_group(path: Path, offset: int) -> tuple[list[LedgerRecord], int, int, bool]:
    """The group starting at ``offset``: (records, end offset, lines consumed, end of file reached)."""
    records: list[LedgerRecord] = []
    group: object = None
    lines = 0
    with path.open("rb") as fh:
        fh.seek(offset)
        while len(records) < BATCH:
            line = fh.readline()
            if not line:
                return records, offset, lines, True
            if not line.endswith(b"\n"):
                log.warning(
                    "ledger spill file %s: skipped a torn last line (%d bytes, a crash mid-write)", path, len(line)
                )
                return records, offset + len(line), lines, True
            try:
                doc = orjson.loads(line)
                g, record = doc["b"], LedgerRecord(**{k: v for k, v in doc["r"].items() if k in _FIELDS})
            except (ValueError, TypeError, KeyError, AttributeError) as e:
                log.error("ledger spill file %s: skipped an unreadable line at byte %d: %s", path, offset, e)
                offset, lines = offset + len(line), lines + 1
                continue
            if records and g != group:
                break
            group = g
            records.append(record)
            offset, lines = offset + len(line), lines + 1
    return records, offset, lines, False


def rename(f: SpillFile, target: Path) -> None:
    os.rename(f.path, target)
    f.path = target


def delete(f: SpillFile) -> None:
    f.path.unlink()
    os.close(f.fd)


# A record the store refuses for what it holds (an integer past 64 bits, a string it cannot encode): a data
# error of the record, not of the store, which no retry can mend. Found alone by bisecting its batch, it is
# set aside in ``ledger-rejected-<owner>.jsonl`` (kept, never replayed: an operator's to look at) so that
# the records behind it are written.
_DATA_ERRORS = (OverflowError, UnicodeError, TypeError)


def is_data_error(err: BaseException) -> bool:
    e: BaseException | None = err
    for _ in range(8):
        if e is None:
            return False
        if isinstance(e, _DATA_ERRORS) or str(getattr(e, "sqlstate", "") or "").startswith("22"):
            return True  # SQLSTATE class 22: PostgreSQL's data exceptions
        e = e.__cause__ or e.__context__
    return False


def set_aside(directory: Path, owner: str, record: LedgerRecord, err: BaseException) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"ledger-rejected-{owner}.jsonl"
    line = orjson.dumps({"error": f"{type(err).__name__}: {err}", "r": record}, default=str) + b"\n"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)
    return path

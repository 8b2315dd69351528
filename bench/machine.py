"""Where the processes run and what they cost: core pinning, machine facts, and per-session CPU and RSS
read from /proc (a service and every child it forks share its session, so uvicorn workers count too)."""

from __future__ import annotations

import contextlib
import os
import platform
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any


def cores() -> tuple[int | None, int | None]:
    """(load core, proxy core): the first two CPUs we may run on, or no pinning on a 1-CPU box."""
    allowed = sorted(os.sched_getaffinity(0))
    return (allowed[0], allowed[1]) if len(allowed) >= 2 else (None, None)


def pin(core: int | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that pins the child to ``core`` (None: no pinning)."""
    if core is None:
        return None
    return lambda: os.sched_setaffinity(0, {core})


def machine() -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return {
        "nproc": os.cpu_count(),
        "cpu": model,
        "python": platform.python_version(),
        "kernel": platform.release(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


def _stat_fields(proc: str) -> list[str]:
    """/proc/<pid>/stat after the command name (which may hold spaces and parentheses)."""
    stat = Path(proc, "stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()


def _session_procs(sid: int) -> Iterator[str]:
    """The /proc/<pid> directories of every process in session ``sid`` (a service and its children)."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            fields = _stat_fields(entry.path)
        except OSError:
            continue
        if int(fields[3]) == sid:
            yield entry.path


def cpu_seconds(sid: int) -> float:
    """utime+stime of the session's processes, from /proc/<pid>/stat."""
    total = 0
    for proc in _session_procs(sid):
        with contextlib.suppress(OSError):
            fields = _stat_fields(proc)
            total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


def rss_mib(sid: int) -> float:
    total_kib = 0
    for proc in _session_procs(sid):
        with contextlib.suppress(OSError):
            for line in Path(proc, "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
    return round(total_kib / 1024, 1)

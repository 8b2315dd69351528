"""py-spy on quotagate under load: the sampler process, and its raw (collapsed-stack) output read back as
the top frames by own time and quotagate's own functions by inclusive time."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

from bench.machine import pin


def find_pyspy() -> str | None:
    found = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    return found if Path(found).exists() else None


def record(pyspy: str, pid: int, seconds: float, raw_path: Path, core: int | None) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [pyspy, "record", "--format", "raw", "--function", "-r", "200", "-d", str(int(seconds)),
         "-o", str(raw_path), "-p", str(pid)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=pin(core),
    )  # fmt: skip


def _shares(counts: dict[str, int], busy: int) -> list[tuple[str, float]]:
    return [(f, round(c / busy, 4)) for f, c in sorted(counts.items(), key=lambda kv: -kv[1])]


def top_frames(raw_path: Path, n: int = 20) -> dict[str, Any]:
    """Own (leaf) and inclusive shares per frame from py-spy's raw (collapsed-stack) output.

    Shares are of *busy* samples: an executor thread parked in ``queue.get`` shows up with
    ``_worker`` as its leaf (the wait is C code), which py-spy does not always recognise as idle, so
    such samples are counted apart as idle. Frames are tagged with the thread kind: the event loop
    (the main thread) or an executor thread (SQLite calls, large token counts).
    """
    own: dict[str, int] = {}
    incl: dict[str, int] = {}
    busy = idle = loop_busy = 0
    for line in raw_path.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        k, frames = int(count), stack.split(";")
        if frames[-1].startswith("_worker (concurrent/futures/thread.py"):
            idle += k
            continue
        busy += k
        tag = "[thread] " if frames[0].startswith("Thread._bootstrap") else ""
        loop_busy += 0 if tag else k
        own[tag + frames[-1]] = own.get(tag + frames[-1], 0) + k
        for f in {tag + f for f in frames}:
            incl[f] = incl.get(f, 0) + k
    if not busy:
        return {"samples": 0, "idle_thread_samples": idle, "top_own": [], "top_inclusive": []}
    return {
        "samples": busy,
        "loop_share": round(loop_busy / busy, 4),
        "idle_thread_samples": idle,
        "top_own": [{"frame": f, "own": s, "inclusive": round(incl[f] / busy, 4)} for f, s in _shares(own, busy)[:n]],
        "top_inclusive": [
            {"frame": f, "inclusive": s} for f, s in _shares(incl, busy) if "(proxy/" in f and "proxy/__main__" not in f
        ][:n],
    }

"""Find `promtool` for the metrics, dashboard and alert tests; install Debian's `prometheus` if allowed.

In CI (``CI`` set) or as root a missing promtool is installed with apt-get; in CI a promtool that still
cannot be found fails the test instead of skipping it, so a green run always means promtool ran.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from pathlib import Path

import pytest

CANDIDATES = ("/usr/bin/promtool", "/usr/local/bin/promtool")


def _find() -> str | None:
    found = shutil.which("promtool")
    if found:
        return found
    return next((c for c in CANDIDATES if Path(c).is_file() and os.access(c, os.X_OK)), None)


def _install() -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update"], check=True, env=env, capture_output=True, timeout=600)
    subprocess.run(
        ["apt-get", "install", "-y", "--no-install-recommends", "prometheus"],
        check=True,
        env=env,
        capture_output=True,
        timeout=600,
    )
    # The package may start its own server on :9090; the tests start whatever they need themselves.
    subprocess.run(["service", "prometheus", "stop"], check=False, capture_output=True, timeout=60)


@functools.cache
def _locate() -> tuple[str | None, str]:
    found = _find()
    if found:
        return found, ""
    if os.environ.get("CI") or os.geteuid() == 0:
        try:
            _install()
        except (OSError, subprocess.SubprocessError) as exc:
            return None, f"installing prometheus (for promtool) failed: {exc!r}"
        found = _find()
    return found, "" if found else "promtool not found on PATH or in /usr/bin"


def promtool() -> str:
    """Path to promtool; installs it in CI or as root, fails in CI and skips elsewhere when missing."""
    path, why = _locate()
    if path is None:
        if os.environ.get("CI"):
            pytest.fail(f"{why}; CI must run the promtool checks")
        pytest.skip(why)
    return path


def run(*args: str, stdin: bytes | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run promtool with ``args``; the result carries exit code and combined output for assertions."""
    proc = subprocess.run(
        [promtool(), *args],
        input=stdin.decode() if stdin is not None else None,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=120,
    )
    return proc

"""One child process of the run: started in its own session (so its children stop with it and its CPU is
summed over all of them), pinned, logged to a file, waited for until healthy, stopped as a group."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from bench import ROOT
from bench.machine import pin


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


@dataclass
class Service:
    name: str
    args: list[str]
    port: int
    core: int | None
    log: Path
    health: str = "/healthz"  # "": the port accepting a connection is enough
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = ROOT
    popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    def spawn(self) -> Service:
        with open(self.log, "ab") as out:
            self.popen = subprocess.Popen(
                self.args,
                cwd=self.cwd,
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=pin(self.core),
            )
        return self

    def failed(self) -> bool:
        """Exited on its own (not by our SIGTERM) with an error."""
        return self.popen is not None and self.popen.returncode not in (0, -signal.SIGTERM, None)

    def wait_healthy(self, timeout: float = 30.0) -> Service:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.popen is not None
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}: {tail(self.log)}")
            if self._answers():
                return self
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not become healthy in {timeout:.0f}s: {tail(self.log)}")

    def _answers(self) -> bool:
        if self.health == "":
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                return True
            return False
        with (
            contextlib.suppress(urllib.error.URLError, OSError),
            urllib.request.urlopen(self.url + self.health, timeout=1.0) as r,
        ):
            return bool(r.status < 500)
        return False

    def stop(self) -> None:
        """SIGTERM to the whole process group, SIGKILL after a grace period."""
        p = self.popen
        if p is None or p.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(p.pid, signal.SIGTERM)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait(10)

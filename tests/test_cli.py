"""Every ``quotagate`` command through its real entry point (``python -m proxy ...``), run from a directory
outside the repository: config discovery, keys, budgets, usage, dashboards, mock-upstream's help.

The ledger and the counters are written with the store and the accountant directly (what a gateway would
have written), so each command's numbers are known exactly."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.cli import build_parser
from proxy.mock import Controls
from proxy.settings import load
from proxy.settle import Accountant
from proxy.store import SqliteStore, open_store
from proxy.store.base import LedgerRecord
from tests import promtool
from tests.gateway import ROOT, base_config

DAY1 = 1_790_000_000.0  # 2026-09-21T14:13:20Z
DAY2 = DAY1 + 86_400


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith(("QUOTAGATE_", "OPENAI_"))}
    return subprocess.run(
        [sys.executable, "-m", "proxy", *args],
        cwd=cwd,
        env={**base, "HOME": str(cwd), **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def ok(res: subprocess.CompletedProcess[str]) -> str:
    assert res.returncode == 0, res.stderr
    return res.stdout


def record(team: str, key: str, model: str, outcome: str, status: int, ts: float, **kw: Any) -> LedgerRecord:
    charged = outcome in ("ok", "client_cancelled")
    fields: dict[str, Any] = {
        "request_id": f"r-{team}-{key}-{model}-{outcome}-{ts}",
        "ts": ts,
        "team": team,
        "key_name": key,
        "model": model,
        "provider": "mock",
        "endpoint": "chat",
        "stream": False,
        "status": status,
        "outcome": outcome,
        "counted_input": 10,
        "counted_output": None,
        "input_tokens": 10 if charged else None,
        "cached_input_tokens": 2 if charged else None,
        "output_tokens": 5 if charged else None,
        "reasoning_tokens": 1 if charged else None,
        "cost_micro_usd": 1500 if charged else 0,
        "latency_ms": 1.0,
        "ttft_ms": None,
        "charged": charged,
    }
    fields.update(kw)
    return LedgerRecord(**fields)


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    """A working directory outside the repository."""
    d = tmp_path / "elsewhere"
    d.mkdir()
    assert ROOT not in d.parents
    return d


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A config in its own directory whose store path is relative (it resolves against that directory)."""
    cfg = base_config("http://127.0.0.1:9", "sqlite:///./state/qg.db")
    cfg["teams"]["t1"] = {"budgets": [{"window": "day", "tokens": 2_000_000}, {"window": "month", "usd": 20}]}
    cfg["keys"][0]["budgets"] = [{"window": "day", "usd": 5}]
    d = tmp_path / "conf"
    d.mkdir()
    path = d / "quotagate.yaml"
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


def fill_ledger(config: Path, now: float) -> None:
    """Two days of t1/t2 traffic: ok, refused and failed requests."""
    db = config.parent / "state" / "qg.db"
    recs = [
        record("t1", "k1", "gpt-4o-mini", "ok", 200, now - 60),
        record("t1", "k1", "gpt-4o-mini", "ok", 200, now - 50),
        record("t1", "k1", "gpt-4o", "budget_exceeded", 429, now - 40),
        record("t1", "batch", "gpt-4o", "upstream_error", 502, now - 30, input_tokens=None),
        record("t1", "batch", "gpt-4o", "context_rejected", 400, now - 86_400 - 5),
        record("t2", "k2", "gpt-4o-mini", "ok", 200, now - 86_400 - 10),
        record("t2", "k2", "gpt-4o-mini", "unauthorized", 401, now - 20),
    ]

    async def write() -> None:
        store = SqliteStore(db)
        await store.open()
        try:
            await store.write_ledger(recs)
        finally:
            await store.close()

    asyncio.run(write())


def test_version_and_help_defaults(outside: Path) -> None:
    assert ok(cli("--version", cwd=outside)).strip() == "quotagate 0.1.0"
    assert "mock-upstream" in ok(cli("--help", cwd=outside))
    # every option of every command says what it does and, unless it is a flag or required, its default
    parser = build_parser()
    todo = [parser]
    seen = 0
    while todo:
        p = todo.pop()
        for action in p._actions:
            if action.choices and isinstance(action.choices, dict):  # subcommands
                todo.extend(action.choices.values())
                continue
            if action.dest in ("help", "version") or not action.option_strings:
                continue
            seen += 1
            assert action.help, f"{p.prog} {action.option_strings} has no help"
            flag = action.nargs == 0
            if not (flag or action.required or any(w in action.help for w in ("(default", "default:", "required"))):
                pytest.fail(f"{p.prog} {action.option_strings}: no default in its help: {action.help!r}")
    assert seen > 30


def test_mock_upstream_help_lists_its_fault_modes(outside: Path) -> None:
    text = ok(cli("mock-upstream", "--help", cwd=outside))
    for name in Controls.__dataclass_fields__:
        assert f"{name}=" in text, name
    assert "x-mock-" in text


def test_check_config_finds_the_config_serve_would_load(outside: Path, config: Path) -> None:
    # nothing around: the packaged default (its relative store in the data directory)
    res = cli("check-config", cwd=outside)
    packaged = ROOT / "proxy" / "data" / "quotagate.yaml"
    assert ok(res).startswith(f"{packaged}: ok (2 providers, 5 models, 1 teams, 1 keys, store sqlite)")
    assert "found as packaged default" in res.stderr
    assert f"sqlite:///{outside}/.local/share/quotagate/data/quotagate.db" in res.stderr
    res = cli("check-config", cwd=outside, env={"QUOTAGATE_DATA_DIR": str(outside / "qd")})
    assert f"sqlite:///{outside}/qd/data/quotagate.db" in res.stderr
    # $QUOTAGATE_CONFIG
    res = cli("check-config", cwd=outside, env={"QUOTAGATE_CONFIG": str(config)})
    assert ok(res).startswith(f"{config}: ok")
    assert f"found as $QUOTAGATE_CONFIG; store sqlite:///{config.parent}/state/qg.db" in res.stderr
    # ./config/quotagate.yaml of the working directory, relative store against that file's directory
    (outside / "config").mkdir()
    (outside / "config" / "quotagate.yaml").write_text(config.read_text())
    res = cli("check-config", cwd=outside)
    assert ok(res).startswith("config/quotagate.yaml: ok")
    assert f"store sqlite:///{outside}/config/state/qg.db" in res.stderr
    # an explicit path wins; a broken one names the key path and exits 1
    bad = outside / "bad.yaml"
    bad.write_text(yaml.safe_dump(base_config("ftp://nowhere", "memory://")))
    res = cli("check-config", str(bad), cwd=outside)
    assert res.returncode == 1 and "providers.mock" in res.stderr


def test_the_packaged_default_is_the_shipped_config() -> None:
    assert (ROOT / "proxy" / "data" / "quotagate.yaml").read_bytes() == (
        ROOT / "config" / "quotagate.yaml"
    ).read_bytes()
    s = load(ROOT / "config" / "quotagate.yaml", env={})
    assert s.providers["mock"].builtin_mock and s.models["gpt-4o-mini"].provider == "mock"
    s = load(ROOT / "config" / "quotagate.yaml", env={"OPENAI_API_KEY": "sk-real"})
    assert s.models["gpt-4o-mini"].provider == "openai"
    s = load(ROOT / "config" / "quotagate.yaml", env={"QUOTAGATE_MOCK_URL": "http://127.0.0.1:9000/v1"})
    assert not s.providers["mock"].builtin_mock


def test_keys_create_list_revoke(outside: Path, config: Path) -> None:
    env = {"QUOTAGATE_CONFIG": str(config)}
    created = cli("keys", "create", "--team", "t1", "--name", "batch", cwd=outside, env=env)
    key = ok(created).strip()
    assert key.startswith("qg-") and "shown once" in created.stderr
    assert (config.parent / "state" / "qg.db").exists()  # relative to the config, not to the cwd
    assert not (outside / "state").exists()
    fill_ledger(config, __import__("time").time())

    listed = ok(cli("keys", "list", "--format", "json", cwd=outside, env=env))
    assert key not in listed
    rows = {(r["team"], r["name"]): r for r in json.loads(listed)}
    assert set(rows) == {("t1", "k1"), ("t2", "k2"), ("t1", "batch")}
    batch = rows[("t1", "batch")]
    assert batch["source"] == "store" and batch["revoked"] is False
    assert batch["created_at"].endswith("Z") and batch["last_used_at"].endswith("Z")
    assert rows[("t1", "k1")]["source"] == "config" and rows[("t1", "k1")]["last_used_at"] is not None

    table = ok(cli("keys", "list", "--team", "t1", cwd=outside, env=env))
    assert table.splitlines()[0].split() == ["team", "name", "id", "source", "created", "last_used", "revoked"]
    assert key not in table and "t2" not in table

    sha = batch["sha256"]
    assert ok(cli("keys", "revoke", sha[:10], cwd=outside, env=env)).startswith(f"revoked {sha[:12]}")
    again = json.loads(ok(cli("keys", "list", "--format", "json", cwd=outside, env=env)))
    assert [r["revoked"] for r in again if r["name"] == "batch"] == [True]
    config_key = cli("keys", "revoke", rows[("t1", "k1")]["sha256"], cwd=outside, env=env)
    assert config_key.returncode == 1 and "config key" in config_key.stderr
    unknown = cli("keys", "create", "--team", "ghost", cwd=outside, env=env)
    assert unknown.returncode == 1 and "unknown team 'ghost'" in unknown.stderr


def test_usage_by_outcome_group_and_format(outside: Path, config: Path) -> None:
    now = DAY2 + 3600
    fill_ledger(config, now)
    args = ("usage", "--config", str(config), "--since", "1000w")

    by_team = json.loads(ok(cli(*args, "--by", "team", "--format", "json", cwd=outside)))
    t1 = next(r for r in by_team if r["team"] == "t1")
    assert (t1["requests"], t1["ok"], t1["refused"], t1["failed"]) == (5, 2, 2, 1)
    # refused and failed-before-the-provider requests are not spend
    assert (t1["input_tokens"], t1["cached_input_tokens"], t1["output_tokens"], t1["reasoning_tokens"]) == (
        20,
        4,
        10,
        2,
    )
    assert (t1["cost_micro_usd"], t1["cost_usd"]) == (3000, 0.003)
    assert t1["since"].endswith("Z")

    table = ok(cli(*args, cwd=outside)).splitlines()
    assert table[0].split() == [
        "team", "model", "requests", "ok", "refused", "failed", "input", "cached", "output", "reasoning", "cost_usd"
    ]  # fmt: skip
    assert table[1].split() == ["t1", "gpt-4o", "3", "0", "2", "1", "0", "0", "0", "0", "0.000000"]
    assert table[2].split() == ["t1", "gpt-4o-mini", "2", "2", "0", "0", "20", "4", "10", "2", "0.003000"]

    by_key = list(csv.DictReader(io.StringIO(ok(cli(*args, "--by", "key", "--format", "csv", cwd=outside)))))
    assert {(r["team"], r["key"]): r["requests"] for r in by_key} == {
        ("t1", "batch"): "2",
        ("t1", "k1"): "3",
        ("t2", "k2"): "2",
    }

    by_day = json.loads(ok(cli(*args, "--by", "day", "--format", "json", cwd=outside)))
    assert [(r["day"], r["requests"]) for r in by_day] == [("2026-09-21", 2), ("2026-09-22", 5)]

    only_t2 = json.loads(ok(cli(*args, "--team", "t2", "--format", "json", cwd=outside)))
    assert {r["team"] for r in only_t2} == {"t2"}
    unknown = cli(*args, "--team", "ghost", cwd=outside)
    assert unknown.returncode == 1 and "unknown team 'ghost'" in unknown.stderr and unknown.stdout == ""
    empty = ok(cli("usage", "--config", str(config), "--since", "1s", cwd=outside))
    assert "(no requests in this period)" in empty


def test_budgets_show_and_set(outside: Path, config: Path) -> None:
    settings = load(config)
    digest = settings.keys[0].digest

    async def spend() -> None:  # what a gateway does: reserve the worst case, settle what was used
        store = open_store(settings.store)
        await store.open()
        try:
            acc = Accountant(settings, store, open_store("memory://"))
            res = await acc.reserve("t1", digest, "gpt-4o-mini", 1_900_000, 2_500_000, {})
            assert res is not None
            await acc.settle(res, 1_850_000, 2_000_000)
            await acc.reserve("t1", digest, "gpt-4o-mini", 50_000, 10_000, {})  # still held
        finally:
            await store.close()

    asyncio.run(spend())
    env = {"QUOTAGATE_CONFIG": str(config)}
    rows = json.loads(ok(cli("budgets", "show", "--format", "json", cwd=outside, env=env)))
    day = next(r for r in rows if r["team"] == "t1" and r["key"] is None and r["window"] == "day")
    assert (day["limit"], day["used"], day["reserved"], day["remaining"]) == (2_000_000, 1_850_000, 50_000, 100_000)
    assert day["limit_usd"] is None and day["resets_at"].endswith("T00:00:00.000Z") and day["source"] == "config"
    month = next(r for r in rows if r["team"] == "t1" and r["window"] == "month")
    assert (month["limit_usd"], month["used_usd"], month["reserved_usd"]) == (20.0, 2.0, 0.01)
    key = next(r for r in rows if r["key"] == "k1")
    assert (key["scope"], key["limit_usd"], key["used_usd"]) == ("key", 5.0, 2.0)

    table = ok(cli("budgets", "show", "--team", "t1", cwd=outside, env=env)).splitlines()
    assert table[0].split() == [
        "team", "scope", "window", "unit", "limit", "used", "held", "remaining", "used%", "resets_at", "source"
    ]  # fmt: skip
    assert table[1].split()[:9] == ["t1", "team", "day", "tokens", "2M", "1.85M", "50K", "100K", "92%"]
    assert table[2].split()[:9] == ["t1", "team", "month", "usd", "$20.00", "$2.00", "$0.01", "$17.99", "10%"]

    out = ok(cli("budgets", "set", "--team", "t1", "--window", "day", "--usd", "50", cwd=outside, env=env))
    assert "day 2M tokens, month $20.00, day $50.00" in out
    rows = json.loads(ok(cli("budgets", "show", "--team", "t1", "--format", "json", cwd=outside, env=env)))
    assert [(r["window"], r["unit"], r["limit"], r["source"]) for r in rows if r["key"] is None] == [
        ("day", "tokens", 2_000_000, "override"),
        ("month", "usd", 20_000_000, "override"),
        ("day", "usd", 50_000_000, "override"),
    ]
    bad = cli("budgets", "set", "--team", "t1", "--window", "day", "--usd", "-3", cwd=outside, env=env)
    assert bad.returncode == 1 and "usd" in bad.stderr
    ghost = cli("budgets", "show", "--team", "ghost", cwd=outside, env=env)
    assert ghost.returncode == 1 and "unknown team" in ghost.stderr

    out = ok(cli("budgets", "reset", "--team", "t1", "--window", "day", "--unit", "tokens", cwd=outside, env=env))
    assert "start over now" in out
    rows = json.loads(ok(cli("budgets", "show", "--team", "t1", "--format", "json", cwd=outside, env=env)))
    day = next(r for r in rows if r["key"] is None and r["window"] == "day" and r["unit"] == "tokens")
    assert (day["used"], day["reserved"]) == (0, 50_000)  # what is in flight stays held
    none = cli("budgets", "reset", "--team", "t1", "--window", "quarter", cwd=outside, env=env)
    assert none.returncode == 1 and "no quarter budget" in none.stderr


def test_dashboards_writes_a_local_prometheus_and_grafana_setup(outside: Path) -> None:
    out = ok(
        cli("dashboards", "--out", "dash", "--target", "127.0.0.1:8080", "--target", "127.0.0.1:8081", cwd=outside)
    )
    d = outside / "dash"
    assert f"--config.file={d}/prometheus.yml" in out
    prom = yaml.safe_load((d / "prometheus.yml").read_text())
    assert prom["rule_files"] == [str(d / "alerts.yml")]
    assert prom["scrape_configs"][0]["static_configs"][0]["targets"] == ["127.0.0.1:8080", "127.0.0.1:8081"]
    assert (d / "alerts.yml").read_bytes() == (ROOT / "dashboards" / "alerts.yml").read_bytes()
    ds = yaml.safe_load((d / "grafana/provisioning/datasources/quotagate.yml").read_text())
    assert ds["datasources"][0]["url"] == "http://127.0.0.1:9090" and ds["datasources"][0]["uid"] == "prometheus"
    boards = yaml.safe_load((d / "grafana/provisioning/dashboards/quotagate.yml").read_text())
    board_dir = Path(boards["providers"][0]["options"]["path"])
    assert sorted(p.name for p in board_dir.glob("*.json")) == sorted(
        p.name for p in (ROOT / "dashboards").glob("*.json")
    )
    checked = promtool.run("check", "config", str(d / "prometheus.yml"))
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_only_a_mock_provider_may_leave_out_its_base_url() -> None:
    from proxy.settings import ConfigError, parse

    cfg = base_config("http://127.0.0.1:9", "memory://")
    cfg["providers"]["mock"] = {"kind": "mock"}
    assert parse(cfg).providers["mock"].builtin_mock
    cfg["providers"]["mock"] = {"kind": "openai"}
    with pytest.raises(ConfigError, match=r"providers\.mock: .*`base_url` is required"):
        parse(cfg)


def test_refusal_limit_in_a_few_words() -> None:
    from decimal import Decimal

    from proxy.limits import Limit
    from proxy.settings import BudgetSettings
    from proxy.settle import refusal_limit
    from proxy.store.base import Denied, Hold

    def denied(lim: Limit, used: int, held: int, asked: int) -> str:
        return refusal_limit(lim, Denied(Hold(lim.key, lim.limit, asked, 0.0), used, held))

    budget = BudgetSettings(window="day", tokens=2_000_000)
    day = Limit("k", 2_000_000, "tokens", "day", 0.0, "team", budget)
    assert denied(day, 1_900_000, 40_000, 120_000) == "budget team day tokens used 1.9M/2M held 40K asked 120K"
    usd = Limit("k", 5_000_000, "usd", "month", 0.0, "key", BudgetSettings(window="month", usd=Decimal(5)))
    assert denied(usd, 4_990_000, 0, 20_000) == "budget key month usd used $4.99/$5.00 held $0.00 asked $0.02"
    tpm = Limit("k", 100_000, "tokens", "minute", 0.0, "team")
    assert denied(tpm, 99_000, 0, 2_000) == "team tpm used 99K/100K held 0 asked 2K"
    conc = Limit("k", 20, "concurrent", None, 0.0, "team")
    assert denied(conc, 0, 20, 1) == "concurrent team 20/20 in flight"


def test_the_banner_masks_store_secrets() -> None:
    from proxy.cli.serve import mask_url

    assert mask_url("redis://:s3cret@redis:6379/0") == "redis://:***@redis:6379/0"
    assert mask_url("rediss://user:s3cret@redis:6380/1") == "rediss://user:***@redis:6380/1"
    assert mask_url("redis://tok3n@redis:6379/0") == "redis://***@redis:6379/0"
    assert mask_url("sqlite:////var/lib/qg.db") == "sqlite:////var/lib/qg.db"


def test_serve_with_a_broken_config_says_why_in_its_log_format(outside: Path) -> None:
    bad = outside / "bad.yaml"
    bad.write_text("providers: {}\nmodels: {x: {provider: nope}}\n")
    res = cli("serve", "--config", str(bad), "--log-format", "json", cwd=outside)
    assert res.returncode == 2
    (line,) = res.stderr.splitlines()
    obj = json.loads(line)
    assert obj["level"] == "error" and "models.x.provider: unknown provider 'nope'" in obj["message"]

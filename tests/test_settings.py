"""Config contract: ${VAR} interpolation, price-table fill-in, provider lists, errors naming key paths."""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
import yaml

from proxy.settings import ConfigError, ProviderSettings, Settings, load, parse

ROOT = Path(__file__).resolve().parent.parent


def cfg(**over: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "providers": {"mock": {"base_url": "http://127.0.0.1:9000/v1", "api_key": "sk-up"}},
        "models": {"gpt-4o-mini": {"provider": "mock"}},
        "teams": {"t1": {}},
        "keys": [{"team": "t1", "key": "sk-t1"}],
    }
    raw.update(over)
    return raw


def error_of(raw: Any, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as e:
        parse(raw, env=env or {})
    return str(e.value)


# ---- ${VAR} interpolation ------------------------------------------------------------------------------
def test_env_vars_are_substituted_anywhere_in_strings() -> None:
    raw = cfg(admin_key="${ADMIN}", store="sqlite:///${DIR}/qg.db")
    raw["providers"]["mock"]["api_key"] = "${UP_KEY}"
    raw["keys"] = [{"team": "t1", "key": "pre-${K}-post"}]
    s = parse(raw, env={"ADMIN": "adm", "DIR": "/data", "UP_KEY": "sk-secret", "K": "x"})
    assert s.admin_key == "adm"
    assert s.store == "sqlite:////data/qg.db"
    assert s.providers["mock"].api_key == "sk-secret"
    assert s.keys[0].key == "pre-x-post"


def test_defaults_apply_when_the_var_is_unset_or_empty() -> None:
    raw = cfg(store="${STORE:-memory://}", admin_key="${ADMIN:-}")
    s = parse(raw, env={})
    assert s.store == "memory://"
    assert s.admin_key is None  # ${ADMIN:-} unset: the admin API is off
    assert parse(raw, env={"STORE": ""}).store == "memory://"
    assert parse(raw, env={"STORE": "redis://r:6379/0"}).store == "redis://r:6379/0"


def test_an_unset_var_is_an_error_naming_the_key_path_and_the_var() -> None:
    raw = cfg()
    raw["providers"]["mock"]["api_key"] = "${OPENAI_API_KEY}"
    msg = error_of(raw)
    assert msg.startswith("providers.mock.api_key:")
    assert "OPENAI_API_KEY" in msg and "not set" in msg
    raw = cfg(keys=[{"team": "t1", "key": "ok"}, {"team": "t1", "key": "${TEAM_KEY}"}])
    assert error_of(raw).startswith("keys.1.key:")


def test_env_defaults_to_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QG_TEST_UPSTREAM_KEY", "from-env")
    raw = cfg()
    raw["providers"]["mock"]["api_key"] = "${QG_TEST_UPSTREAM_KEY}"
    assert parse(raw).providers["mock"].api_key == "from-env"


# ---- price table ---------------------------------------------------------------------------------------
def test_prices_and_limits_are_filled_in_from_the_builtin_table() -> None:
    s = parse(cfg(models={"gpt-4o-mini": {"provider": "mock"}, "gpt-5.4": {"provider": "mock"}}), env={})
    m = s.models["gpt-4o-mini"]
    assert m.price is not None
    assert (m.price.input, m.price.cached_input, m.price.output) == (Decimal("0.15"), Decimal("0.075"), Decimal("0.6"))
    assert (m.context_window, m.max_output_tokens) == (128000, 16384)
    lc = s.models["gpt-5.4"].long_context
    assert lc is not None and lc.above == 272000 and lc.output == Decimal("1.5")


def test_config_values_override_the_table() -> None:
    models = {
        "gpt-4o-mini": {"provider": "mock", "price": {"input": 1, "output": 2}, "context_window": 1000},
        "alias": {"provider": "mock", "upstream_model": "gpt-4o"},  # priced as its upstream model
    }
    s = parse(cfg(models=models), env={})
    m = s.models["gpt-4o-mini"]
    assert m.price is not None
    assert (m.price.input, m.price.output, m.price.cached_input) == (Decimal(1), Decimal(2), None)
    assert m.context_window == 1000 and m.max_output_tokens == 16384
    alias = s.models["alias"]
    assert alias.price is not None and alias.price.input == Decimal("2.5")
    assert s.upstream_model("alias") == "gpt-4o" and s.upstream_model("gpt-4o-mini") == "gpt-4o-mini"


def test_a_model_missing_from_the_table_needs_a_price(tmp_path: Path) -> None:
    msg = error_of(cfg(models={"llama-local": {"provider": "mock"}}))
    assert msg.startswith("models.llama-local.price:")
    assert parse(cfg(models={"llama-local": {"provider": "mock", "price": {"input": 0, "output": 0}}}), env={})
    # no table at all: even well-known models must be priced in the config
    assert error_of(cfg(price_table=None)).startswith("models.gpt-4o-mini.price:")


def test_a_custom_price_table_is_read_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "prices.yaml").write_text("models:\n  llama-local: {input: 0.5, output: 1.5, context_window: 8192}\n")
    path = tmp_path / "qg.yaml"
    path.write_text(yaml.safe_dump(cfg(price_table="prices.yaml", models={"llama-local": {"provider": "mock"}})))
    m = load(path, env={}).models["llama-local"]
    assert m.price is not None and m.price.output == Decimal("1.5") and m.context_window == 8192
    path.write_text(yaml.safe_dump(cfg(price_table="missing.yaml")))
    with pytest.raises(ConfigError, match="price_table: cannot read"):
        load(path, env={})


# ---- provider lists ------------------------------------------------------------------------------------
def _fallback_cfg() -> dict[str, Any]:
    return cfg(
        providers={
            "openai": {"base_url": "https://api.openai.com/v1", "api_key": "${OPENAI_API_KEY:-}"},
            "mock": {"base_url": "http://127.0.0.1:9000/v1", "api_key": "sk-up"},
        },
        models={"gpt-4o-mini": {"provider": ["openai", "mock"]}},
    )


def test_a_provider_list_picks_the_first_enabled_provider() -> None:
    assert parse(_fallback_cfg(), env={"OPENAI_API_KEY": "sk-real"}).models["gpt-4o-mini"].provider == "openai"
    s = parse(_fallback_cfg(), env={})
    assert s.models["gpt-4o-mini"].provider == "mock"
    assert not s.providers["openai"].enabled and s.providers["mock"].enabled


def test_a_provider_without_api_key_counts_as_enabled() -> None:
    # a self-hosted server needs no key: absent is not "switched off", only an empty value is
    assert ProviderSettings(base_url="http://vllm:8000/v1").enabled
    assert not ProviderSettings(base_url="http://x", api_key="").enabled
    raw = _fallback_cfg()
    raw["providers"]["vllm"] = {"base_url": "http://vllm:8000/v1"}
    raw["models"]["gpt-4o-mini"]["provider"] = ["openai", "vllm", "mock"]
    assert parse(raw, env={}).models["gpt-4o-mini"].provider == "vllm"


def test_no_enabled_provider_in_the_list_is_an_error_naming_the_path() -> None:
    raw = _fallback_cfg()
    raw["models"]["gpt-4o-mini"]["provider"] = ["openai"]
    msg = error_of(raw)
    assert msg.startswith("models.gpt-4o-mini.provider:") and "openai" in msg


# ---- references and validation errors name the key path --------------------------------------------------
@pytest.mark.parametrize(
    ("over", "path", "words"),
    [
        ({"models": {"m": {"provider": "nope", "price": {"input": 1, "output": 1}}}}, "models.m.provider", "nope"),
        ({"keys": [{"team": "t1", "key": "a"}, {"team": "ghost", "key": "b"}]}, "keys.1.team", "ghost"),
        ({"teams": {"t1": {"models": ["gpt-4o-mini", "gpt-9"]}}}, "teams.t1.models.1", "gpt-9"),
        (
            {"teams": {"t1": {"budgets": [{"window": "day", "tokens": 10, "warn_at": 0.5, "downgrade_to": "x"}]}}},
            "teams.t1.budgets.0.downgrade_to",
            "x",
        ),
        ({"providers": {"mock": {"base_url": "ftp://x"}}}, "providers.mock.base_url", "http"),
        ({"teams": {"t1": {"budgets": [{"window": "day"}]}}}, "teams.t1.budgets.0", "tokens"),
        ({"teams": {"t1": {"budgets": [{"window": "fortnight", "tokens": 1}]}}}, "teams.t1.budgets.0.window", ""),
        ({"store": "postgres://db"}, "store", "sqlite"),
        ({"max_body_bytes": 0}, "max_body_bytes", ""),
        ({"keys": [{"team": "t1"}]}, "keys.0", "sha256"),
        ({"keys": [{"team": "t1", "sha256": "ABC"}]}, "keys.0", "hex"),
        ({"surprise": 1}, "surprise", ""),
    ],
)
def test_errors_name_the_key_path(over: dict[str, Any], path: str, words: str) -> None:
    msg = error_of(cfg(**over))
    assert msg.startswith(path + ":"), msg
    assert words in msg


def test_settings_are_frozen_and_keys_hash() -> None:
    s = parse(cfg(), env={})
    assert isinstance(s, Settings)
    with pytest.raises(Exception, match="frozen"):
        s.store = "memory://"
    import hashlib

    assert s.keys[0].digest == hashlib.sha256(b"sk-t1").hexdigest()
    assert s.keys[0].display_name == f"key-{s.keys[0].digest[:8]}"


def test_load_reports_unreadable_and_invalid_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read config"):
        load(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("providers: [unclosed\n")
    with pytest.raises(ConfigError, match="invalid YAML"):
        load(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="must be a YAML mapping"):
        load(bad)


# ---- quotagate check-config ----------------------------------------------------------------------------
def check_config(path: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "proxy", "check-config", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", **(env or {})},
    )


def test_check_config_cli(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    raw = cfg(store="sqlite:///qg.db")
    raw["providers"]["mock"]["api_key"] = "${UP_KEY}"
    good.write_text(yaml.safe_dump(raw))
    ok = check_config(good, {"UP_KEY": "sk"})
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.strip() == f"{good}: ok (1 providers, 1 models, 1 teams, 1 keys, store sqlite)"

    unset = check_config(good)  # UP_KEY not in the environment
    assert unset.returncode == 1
    assert unset.stdout == ""
    assert f"{good}: providers.mock.api_key: environment variable UP_KEY is not set" in unset.stderr

    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg(keys=[{"team": "ghost", "key": "k"}])))
    res = check_config(bad)
    assert res.returncode == 1 and "keys.0.team: unknown team 'ghost'" in res.stderr

    missing = check_config(tmp_path / "nope.yaml")
    assert missing.returncode == 1 and "cannot read config" in missing.stderr


def test_two_budgets_on_one_window_and_unit_are_refused() -> None:
    """They would share one counter (limits_for keys counters by window and unit), held twice per request."""
    day_tokens, day_usd = {"window": "day", "tokens": 10}, {"window": "day", "usd": 1}
    team = {"t1": {"budgets": [day_tokens, day_usd, {"window": "month", "tokens": 99}, {**day_tokens, "tokens": 5}]}}
    assert error_of(cfg(teams=team)) == (
        "teams.t1.budgets.3: duplicate budget (window day, unit tokens) — budgets.0 already sets it; "
        "give one budget per window and unit"
    )
    keys = [{"team": "t1", "key": "a"}, {"team": "t1", "key": "b", "budgets": [day_usd, day_usd]}]
    assert error_of(cfg(keys=keys)).startswith("keys.1.budgets.1: duplicate budget (window day, unit usd)")
    # the same window and unit at team and key level are two counters: allowed
    parse(cfg(teams={"t1": {"budgets": [day_tokens]}}, keys=[{"team": "t1", "key": "a", "budgets": [day_tokens]}]))

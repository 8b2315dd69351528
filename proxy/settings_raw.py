"""The config as YAML gives it, before validation: ``${VAR}`` interpolation, the dated price table filled
into each model (config values winning), and provider lists resolved to a provider and its failover."""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

BUILTIN_PRICES = Path(__file__).parent / "data" / "prices.yaml"
_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """A config that cannot be used; the message names the key path and why."""


def interpolate(node: Any, path: tuple[str | int, ...], env: Mapping[str, str]) -> Any:
    if isinstance(node, str):

        def sub(m: re.Match[str]) -> str:
            name, default = m.group(1), m.group(2)
            value = env.get(name)
            if value:
                return value
            if default is not None:
                return default
            where = ".".join(str(p) for p in path) or "(top)"
            raise ConfigError(f"{where}: environment variable {name} is not set (use ${{{name}:-}} if optional)")

        return _ENV.sub(sub, node)
    if isinstance(node, dict):
        return {k: interpolate(v, (*path, k), env) for k, v in node.items()}
    if isinstance(node, list):
        return [interpolate(v, (*path, i), env) for i, v in enumerate(node)]
    return node


def load_price_table(ref: str | None, base: Path) -> tuple[dict[str, Any], str | None]:
    """The table's models, and its version as every ledger row priced from it names it: ``<file>@<date>``
    (the table's ``date:``, else ``undated``)."""
    if ref is None:
        return {}, None
    path = BUILTIN_PRICES if ref == "builtin" else (base / ref)
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"price_table: cannot read {path}: {e.strerror}") from e
    models = doc.get("models") if isinstance(doc, dict) else None
    if not isinstance(models, dict):
        raise ConfigError(f"price_table: {path} has no `models:` mapping")
    return models, f"{path.name}@{doc.get('date') or 'undated'}"


# a model's `price:` from the table, its service tiers included (a config's own `price:` replaces it whole)
_PRICE_FIELDS = ("input", "cached_input", "output", "cache_write_5m", "cache_write_1h", "tiers")


def apply_price_table(raw: dict[str, Any], table: Mapping[str, Any], version: str | None = None) -> None:
    """Fill each model's price, long-context tier and limits from the table, config values winning; a price
    taken from the table is marked with the table's ``version`` (``price_version``, recorded per request)."""
    models = raw.get("models")
    if not isinstance(models, dict):
        return
    for name, entry in models.items():
        if not isinstance(entry, dict):
            continue
        # A provider list is an ordered failover: the first enabled one serves, the later enabled ones are
        # tried when it fails (e.g. [openai, mock]: OpenAI when its key is set; never failing over to a mock)
        if isinstance(entry.get("provider"), list):
            enabled = _enabled(raw, ("models", name, "provider"), entry["provider"])
            entry["provider"] = enabled[0]
            if "failover" not in entry:
                entry["failover"] = [n for n in enabled[1:] if not _is_mock(raw, n) or _is_mock(raw, enabled[0])]
        row = table.get(entry.get("upstream_model") or name) or table.get(name)
        if not isinstance(row, dict):
            continue
        if "price" not in entry:
            entry["price"] = {k: row[k] for k in _PRICE_FIELDS if k in row}
            if version is not None and "long_context" not in entry:
                entry.setdefault("price_version", version)
        if "long_context" not in entry and "long_context" in row:
            entry["long_context"] = row["long_context"]
        for k in ("context_window", "max_output_tokens", "mode"):
            if k not in entry and k in row:
                entry[k] = row[k]


def _enabled(raw: dict[str, Any], path: tuple[str | int, ...], names: list[Any]) -> list[str]:
    providers = raw.get("providers") or {}
    out = [str(n) for n in names if isinstance(p := providers.get(n), dict) and p.get("api_key", None) != ""]
    if not out:
        raise ConfigError(f"{'.'.join(map(str, path))}: none of {names} is enabled (their api_key is empty)")
    return out


def _is_mock(raw: dict[str, Any], name: str) -> bool:
    p = (raw.get("providers") or {}).get(name)
    return isinstance(p, dict) and p.get("kind") == "mock"


def resolve_tokenizer_paths(raw: dict[str, Any], base: Path) -> None:
    """A model's ``tokenizer.path`` (kind huggingface) and a ``chat_template`` file made absolute against
    ``base`` (the config file's directory), as a relative SQLite store path is."""
    models = raw.get("models")
    for entry in models.values() if isinstance(models, dict) else ():
        t = entry.get("tokenizer") if isinstance(entry, dict) else None
        if not isinstance(t, dict) or t.get("kind") != "huggingface":
            continue
        for key in ("path", "chat_template"):
            value = t.get(key)
            if isinstance(value, str) and value and "{{" not in value and "{%" not in value:
                t[key] = str((base / value).resolve())

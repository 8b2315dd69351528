"""Proposed configs for ``whatif`` and ``reprice``: a fragment merged over the current config, or another price
table in place of the current one, validated by the same ``settings.parse`` the gateway boots with.

Merging (``merged``): mappings merge key by key, recursively (``teams.search.max_input_tokens`` replaces
that one field of team search; a team or model not in the config is added); anything else (a list such as
``budgets``, a scalar) replaces the current value; a model's ``price`` replaces the current price whole
(a partial price would mix two tables).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

from ..settings import ConfigError, Settings, parse
from ..settings_raw import apply_price_table, load_price_table

_WHOLE = frozenset({"price"})


def read_yaml(path: Path, what: str) -> dict[str, Any]:
    """A YAML mapping; ``ConfigError`` naming the file otherwise."""
    try:
        doc = yaml.safe_load(path.read_text())
    except OSError as e:
        raise ConfigError(f"cannot read {what} {path}: {e.strerror}") from e
    except yaml.YAMLError as e:
        raise ConfigError(f"{what} {path}: invalid YAML: {e}") from e
    if not isinstance(doc, dict):
        raise ConfigError(f"{what} {path}: must be a YAML mapping")
    return doc


def merged(base: Mapping[str, Any], fragment: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(dict(base))
    for k, v in fragment.items():
        cur = out.get(k)
        if isinstance(cur, dict) and isinstance(v, dict) and k not in _WHOLE:
            out[k] = merged(cur, v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def proposed_settings(config: Path, fragment_path: Path) -> Settings:
    """The current config with the fragment (``teams:``, ``models:``...) merged over it, validated."""
    fragment = read_yaml(fragment_path, "policy")
    unknown = sorted(set(fragment) - {"teams", "models", "keys", "price_table"})
    if unknown:
        raise ConfigError(
            f"policy {fragment_path}: only teams, models, keys and price_table may be proposed, not {unknown}"
        )
    raw = merged(read_yaml(config, "config"), fragment)
    try:
        return parse(raw, base=config.parent)
    except ConfigError as e:
        raise ConfigError(f"the config with policy {fragment_path} merged over it: {e}") from None


def repriced_settings(config: Path, table_path: Path) -> tuple[Settings, str, frozenset[str]]:
    """The current config with every price the table has taken from it (a config's own price of such a
    model is dropped: the table is what is being tried; the other models keep their current price),
    validated; the table's version, and the models it priced."""
    table, version = load_price_table(str(table_path.resolve()), config.parent)
    raw = read_yaml(config, "config")
    found = raw.get("models")
    models: dict[str, Any] = found if isinstance(found, dict) else {}
    priced = frozenset(
        name
        for name, entry in models.items()
        if isinstance(entry, dict) and ((entry.get("upstream_model") or name) in table or name in table)
    )
    for name in priced:
        for k in ("price", "long_context", "price_version"):
            models[name].pop(k, None)
    apply_price_table(raw, table, version)
    try:
        return parse(raw, base=config.parent), version or str(table_path), priced
    except ConfigError as e:
        raise ConfigError(f"the config priced from {table_path}: {e}") from None

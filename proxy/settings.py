"""The YAML config, validated once at boot into frozen values.

``${VAR}`` is replaced by the environment variable (an unset variable is an error naming the key path);
``${VAR:-default}`` falls back to ``default``. Prices not given in a model entry come from the dated
price table (``proxy/data/prices.yaml`` or ``price_table: PATH``). Errors name the offending key path.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping, Sequence
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .settings_budget import BudgetSettings as BudgetSettings  # re-exported: every layer imports it from here
from .settings_budget import Level as Level
from .settings_budget import RateLimitSettings as RateLimitSettings
from .settings_budget import ReserveMode as ReserveMode
from .settings_budget import SessionBudgetSettings as SessionBudgetSettings
from .settings_budget import TagSettings as TagSettings
from .settings_budget import Window as Window
from .settings_drift import CounterCheckSettings as CounterCheckSettings
from .settings_notify import NotificationSettings as NotificationSettings
from .settings_raw import BUILTIN_PRICES as BUILTIN_PRICES  # re-exported: the CLI names the builtin table
from .settings_raw import ConfigError as ConfigError  # re-exported: every caller catches it from here
from .settings_raw import apply_price_table, interpolate, load_price_table, resolve_tokenizer_paths
from .settings_tokenizer import TokenizerSettings
from .tiers import RESERVED as RESERVED_TIERS


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class ProviderSettings(_Frozen):
    base_url: str = ""  # required, except for `kind: mock` (empty: the mock `quotagate serve` starts itself)
    api_key: str | None = None
    # "openai" covers every OpenAI-compatible server (vLLM, SGLang, Ollama, LiteLLM...); "azure" sends `api-key`;
    # "anthropic" sends `x-api-key` and `anthropic-version` (base_url: https://api.anthropic.com/v1);
    # "mock" is quotagate's own mock upstream (proxy/mock/)
    kind: Literal["openai", "azure", "anthropic", "mock"] = "openai"
    api_version: str | None = None  # azure classic deployments
    anthropic_version: str = "2023-06-01"  # sent when the client sends none
    headers: dict[str, str] = Field(default_factory=dict)
    otel_name: str | None = None  # gen_ai.provider.name; defaults from kind and host

    @field_validator("base_url")
    @classmethod
    def _url(cls, v: str) -> str:
        if v and not v.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return v.rstrip("/")

    @model_validator(mode="after")
    def _base_url_given(self) -> ProviderSettings:
        if not self.base_url and self.kind != "mock":
            raise ValueError("`base_url` is required (only a `kind: mock` provider may leave it out)")
        return self

    @property
    def builtin_mock(self) -> bool:
        """A `kind: mock` provider with no base_url: served by `quotagate serve` on a loopback port."""
        return self.kind == "mock" and not self.base_url

    @property
    def enabled(self) -> bool:
        """A provider whose api_key is configured but resolved to empty is switched off."""
        return self.api_key != ""


class TierPriceSettings(_Frozen):
    """Rates in USD per 1M tokens: the standard tier's (``price:``), or one service tier's."""

    input: Decimal = Field(ge=0)
    cached_input: Decimal | None = Field(default=None, ge=0)
    output: Decimal = Field(ge=0)
    # prompt-cache writes by lifetime (Anthropic); unset: charged at `input` and counted as unpriced
    cache_write_5m: Decimal | None = Field(default=None, ge=0)
    cache_write_1h: Decimal | None = Field(default=None, ge=0)


class PriceSettings(TierPriceSettings):
    # service tiers priced apart from the standard one (OpenAI flex, priority, scale; Anthropic priority),
    # by the name a response gives them (proxy/tiers.py); a tier with no entry has no price
    tiers: dict[str, TierPriceSettings] = Field(default_factory=dict)

    @field_validator("tiers")
    @classmethod
    def _tier_names(cls, v: dict[str, TierPriceSettings]) -> dict[str, TierPriceSettings]:
        for name in v:
            if name in RESERVED_TIERS:
                raise ValueError(
                    f"`{name}` is not a tier of its own (the standard tier's rates are `price:` itself; `fast` is "
                    f"priced as `priority`); remove tiers.{name}"
                )
            if not re.fullmatch(r"[a-z][a-z0-9_-]*", name):
                raise ValueError(f"tier name {name!r}: lowercase letters, digits, `_` and `-`, as a response names it")
        return v


class LongContextSettings(_Frozen):
    above: int = Field(gt=0)
    input: Decimal = Field(default=Decimal(1), ge=0)
    cached_input: Decimal = Field(default=Decimal(1), ge=0)
    cache_write: Decimal = Field(default=Decimal(1), ge=0)
    output: Decimal = Field(default=Decimal(1), ge=0)


class PrecountSettings(_Frozen):
    """The pre-count bound of a model whose tokenizer is not public (proxy/precount.py): the local count
    times ``factor`` until ``min_samples`` requests have been seen, then times the ``quantile`` of the
    latest ``window`` ratios (provider count / local count) plus 2%, never below ``min_factor``."""

    # local: the bundled encoding times the learned factor; provider: the provider's token-count endpoint
    # (cached per request body), the local bound when it does not answer within `provider_timeout_s`
    source: Literal["local", "provider"] = "local"
    provider_timeout_s: float = Field(default=0.5, gt=0, le=30)
    factor: float = Field(default=1.5, ge=1.0, le=10.0)
    min_factor: float = Field(default=1.0, ge=0.5, le=10.0)
    quantile: float = Field(default=0.99, gt=0.5, le=1.0)
    window: int = Field(default=500, ge=10, le=100_000)
    min_samples: int = Field(default=20, ge=1)


ModelMode = Literal["chat", "completion", "embedding", "responses"]
# the endpoints a model of each mode is served on (a chat model also answers the Responses API)
MODE_ENDPOINTS: dict[str, frozenset[str]] = {
    "chat": frozenset({"chat", "responses", "responses.compact", "messages"}),
    "completion": frozenset({"completions"}),
    "embedding": frozenset({"embeddings"}),
    "responses": frozenset({"responses", "responses.compact"}),
}


class ModelSettings(_Frozen):
    provider: str
    # tried in order when `provider` fails before anything was relayed (from `provider: [a, b, ...]`)
    failover: tuple[str, ...] = ()
    # what the model serves; unset: any endpoint (the provider decides). Embedding models get it from the
    # price table.
    mode: ModelMode | None = None
    upstream_model: str | None = None
    encoding: str | None = None
    context_window: int | None = Field(default=None, gt=0)
    max_output_tokens: int | None = Field(default=None, ge=0)
    price: PriceSettings | None = None
    long_context: LongContextSettings | None = None
    # the ledger's name for this price: the table's ``<file>@<date>`` when the price came from it, else
    # (a price in the config) ``config:`` and a digest of it (proxy/pricing.py)
    price_version: str | None = None
    precount: PrecountSettings | None = None  # for protocols counted without the model's tokenizer
    tokenizer: TokenizerSettings | None = None  # a self-hosted model's own (chat, completions, embeddings)


class TeamSettings(_Frozen):
    models: tuple[str, ...] | None = None
    max_input_tokens: int | None = Field(default=None, gt=0)
    on_context_overflow: Literal["reject", "trim"] = "reject"
    max_output_tokens: int | None = Field(default=None, gt=0)
    budgets: tuple[BudgetSettings, ...] = ()
    rate_limits: RateLimitSettings = RateLimitSettings()
    # levels within the team (proxy/settings_budget.py): every end user's default budgets, explicit end
    # users (replacing the default), tags, and models
    end_user_budgets: tuple[BudgetSettings, ...] = ()
    end_users: dict[str, Level] = Field(default_factory=dict)
    tags: TagSettings = TagSettings()
    model_limits: dict[str, Level] = Field(default_factory=dict)
    session_budgets: tuple[SessionBudgetSettings, ...] = ()  # per x-quotagate-session id
    # a session's counters outlive its last request by this long
    session_ttl: str = Field(default="24h", pattern=r"^[1-9]\d*(s|m|h|d)$")
    # reservations sized from observed output (proxy/observed.py): the default of the team's budgets (a
    # budget's own `reserve` wins) and of its TPM limits; the quantile of the output tokens seen for the team
    # and model over the trailing window, used once that window holds at least observed_min_samples
    reserve: ReserveMode = "worst_case"
    reserve_quantile: float = Field(default=0.99, gt=0, lt=1)
    observed_window: str = Field(default="24h", pattern=r"^[1-9]\d*(s|m|h|d)$")
    observed_min_samples: int = Field(default=100, ge=1)


class KeySettings(_Frozen):
    team: str
    name: str | None = None
    sha256: str | None = None
    key: str | None = None
    budgets: tuple[BudgetSettings, ...] = ()
    rate_limits: RateLimitSettings = RateLimitSettings()

    @model_validator(mode="after")
    def _hash(self) -> KeySettings:
        if (self.sha256 is None) == (self.key is None):
            raise ValueError("give exactly one of `sha256` (hex digest) or `key` (plain, for local use)")
        if self.key == "":
            raise ValueError("`key` is empty (is its environment variable set?)")
        if self.sha256 is not None and not re.fullmatch(r"[0-9a-f]{64}", self.sha256):
            raise ValueError("`sha256` must be 64 lowercase hex characters")
        return self

    @property
    def digest(self) -> str:
        if self.sha256 is not None:
            return self.sha256
        assert self.key is not None
        return hash_key(self.key)

    @property
    def display_name(self) -> str:
        return self.name or f"key-{self.digest[:8]}"


class Settings(_Frozen):
    store: str = "sqlite:///./data/quotagate.db"
    admin_key: str | None = None
    on_store_error: Literal["closed", "open"] = "closed"
    price_table: str | None = "builtin"  # builtin | PATH | null (no table)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, gt=0)
    upstream_connect_timeout_s: float = Field(default=5.0, gt=0)
    upstream_timeout_s: float = Field(default=600.0, gt=0)
    lease_seconds: float = Field(default=900.0, gt=0)
    # a model with no price: a config error (every request priced), or served to requests no budget governs
    # and refused (400 model_not_priced) to those a budget governs
    unpriced_models: Literal["error", "refuse"] = "error"
    # where the ledger is written, when not in the store: ``postgresql://...`` (the fleet ledger, issue 12)
    ledger: str | None = Field(default=None, pattern=r"^postgres(ql)?://")
    ledger_flush_seconds: float = Field(default=0.2, gt=0)
    ledger_queue_max: int = Field(default=100_000, gt=0)  # records held in memory; the overflow spills to disk
    ledger_spill_dir: str | None = None  # default: the SQLite file's directory, else ./data
    ledger_stream_max_len: int | None = Field(default=None, gt=0)  # Redis store, no `ledger:`: XADD MAXLEN ~
    shutdown_grace_seconds: float = Field(default=30.0, ge=0)
    overrides_refresh_seconds: float = Field(default=0.5, gt=0, le=60)  # runtime budget overrides, re-read
    failover_attempts: int = Field(default=3, ge=1, le=10)  # providers tried per request, the first included
    # time to wait for the response headers before trying the next provider; unset: upstream_timeout_s
    failover_timeout_s: float | None = Field(default=None, gt=0)
    providers: dict[str, ProviderSettings]
    models: dict[str, ModelSettings]
    org: Level = Level()  # applies to every request of every team
    teams: dict[str, TeamSettings] = Field(default_factory=dict)
    keys: tuple[KeySettings, ...] = ()
    notifications: NotificationSettings = NotificationSettings()  # budget thresholds (notify_at), webhooks
    counters: CounterCheckSettings = CounterCheckSettings()  # drift reconcile, seeding after a store loss

    @field_validator("store")
    @classmethod
    def _store(cls, v: str) -> str:
        if not v.startswith(("memory://", "sqlite:///", "redis://", "rediss://")):
            raise ValueError("must be memory://, sqlite:///PATH or redis://HOST:PORT/DB")
        return v

    @model_validator(mode="after")
    def _references(self) -> Settings:
        for name, model in self.models.items():
            if model.provider not in self.providers:
                raise _PathError(("models", name, "provider"), f"unknown provider {model.provider!r}")
            for i, other in enumerate(model.failover):
                if other not in self.providers:
                    raise _PathError(("models", name, "failover", i), f"unknown provider {other!r}")
            if model.price is None and self.unpriced_models == "error":
                raise _PathError(
                    ("models", name, "price"),
                    "no price in the config or the price table; give `price: {input, output}` "
                    "(0 for self-hosted models) so that every request can be priced, or set "
                    "`unpriced_models: refuse` to serve it only to requests no budget governs",
                )
        for tname, team in self.teams.items():
            for i, m in enumerate(team.models or ()):
                if m not in self.models:
                    raise _PathError(("teams", tname, "models", i), f"unknown model {m!r}")
            _check_budgets(self, ("teams", tname, "budgets"), team.budgets)
            _check_levels(self, tname, team)
        _check_budgets(self, ("org", "budgets"), self.org.budgets)
        for i, key in enumerate(self.keys):
            if key.team not in self.teams:
                raise _PathError(("keys", i, "team"), f"unknown team {key.team!r}; declare it under `teams:`")
            _check_budgets(self, ("keys", i, "budgets"), key.budgets)
        return self

    @model_validator(mode="after")
    def _tokenizers(self) -> Settings:
        for name, model in self.models.items():
            bad = model.tokenizer.check(self.providers[model.provider].kind) if model.tokenizer else None
            if bad is not None:
                raise _PathError(("models", name, "tokenizer", bad[0]), bad[1])
        return self

    def upstream_model(self, model: str) -> str:
        return self.models[model].upstream_model or model


def _check_budgets(s: Settings, path: tuple[str | int, ...], budgets: tuple[BudgetSettings, ...]) -> None:
    for i, b in enumerate(budgets):
        if b.downgrade_to is not None and b.downgrade_to not in s.models:
            raise _PathError((*path, i, "downgrade_to"), f"unknown model {b.downgrade_to!r}")
    dup = duplicate_budget(budgets)
    if dup is not None:
        raise _PathError((*path, dup[1]), duplicate_budget_message(budgets, dup))


def _check_levels(s: Settings, tname: str, team: TeamSettings) -> None:
    _check_budgets(s, ("teams", tname, "end_user_budgets"), team.end_user_budgets)
    for user, level in team.end_users.items():
        _check_budgets(s, ("teams", tname, "end_users", user, "budgets"), level.budgets)
    for tag, budgets in team.tags.budgets.items():
        _check_budgets(s, ("teams", tname, "tags", "budgets", tag), budgets)
    for model, level in team.model_limits.items():
        if model not in s.models:
            raise _PathError(("teams", tname, "model_limits", model), f"unknown model {model!r}")
        _check_budgets(s, ("teams", tname, "model_limits", model, "budgets"), level.budgets)


def duplicate_budget(budgets: Sequence[BudgetSettings]) -> tuple[int, int] | None:
    """(first, repeat) indexes of two budgets on the same window and unit, or None.

    Two such budgets would share one counter (``limits.limits_for`` names counters by window and unit),
    so a request would hold it twice: one budget per window and unit is the rule.
    """
    seen: dict[tuple[str, str], int] = {}
    for i, b in enumerate(budgets):
        first = seen.setdefault((b.period, b.unit), i)
        if first != i:
            return first, i
    return None


def duplicate_budget_message(budgets: Sequence[BudgetSettings], dup: tuple[int, int]) -> str:
    b = budgets[dup[1]]
    return (
        f"duplicate budget (window {b.period}, unit {b.unit}) — budgets.{dup[0]} already sets it; "
        "give one budget per window and unit"
    )


class _PathError(ValueError):
    def __init__(self, path: tuple[str | int, ...], msg: str) -> None:
        super().__init__(f"{'.'.join(str(p) for p in path)}: {msg}")


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def parse(raw: Any, *, base: Path = Path("."), env: Mapping[str, str] | None = None) -> Settings:
    if not isinstance(raw, dict):
        raise ConfigError("(top): the config must be a YAML mapping")
    raw = interpolate(raw, (), os.environ if env is None else env)
    if raw.get("admin_key") == "":
        raw["admin_key"] = None  # ${QUOTAGATE_ADMIN_KEY:-} unset -> admin API off
    apply_price_table(raw, *load_price_table(raw.get("price_table", "builtin"), base))
    resolve_tokenizer_paths(raw, base)
    try:
        return Settings.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "(top)"
        msg = first["msg"]
        if isinstance(first.get("ctx"), dict) and isinstance(first["ctx"].get("error"), _PathError):
            raise ConfigError(str(first["ctx"]["error"])) from None
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise ConfigError(f"{where}: {msg}{more}") from None


def resolve_store(url: str, base: Path) -> str:
    """A relative ``sqlite:///PATH`` made absolute against ``base`` (the config file's directory)."""
    prefix = "sqlite:///"
    if not url.startswith(prefix) or url.startswith(prefix + "/"):
        return url
    return prefix + str((base / url[len(prefix) :]).resolve())


def load(path: str | Path, env: Mapping[str, str] | None = None, *, store_base: Path | None = None) -> Settings:
    """Read and validate a config; a relative SQLite store path resolves against ``store_base``, by default
    the config file's directory (so the same file names the same database wherever it is run from)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise ConfigError(f"cannot read config {p}: {e.strerror}") from e
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: invalid YAML: {e}") from e
    s = parse(raw, base=p.parent, env=env)
    return s.model_copy(update={"store": resolve_store(s.store, store_base or p.parent.resolve())})

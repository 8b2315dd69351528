"""Log lines on-call can use: one per refused or failed request (every request with ``--access-log``), the
startup banner, and uvicorn's own lines, all through the standard ``logging`` machinery in one format.

``text``: ``2026-11-24T18:03:07.123Z WARNING quotagate.request refused request_id=qg-... team=search ...``
``json``: one object per line. Field names are stable (dashboards and alert queries read them)::

    ts level logger message              every line
    request_id team key model endpoint stream provider outcome status error error_type limit
    upstream_host upstream_status latency_ms upstream_ms ttft_ms input_tokens output_tokens cost_usd
                                         quotagate.request (absent values are left out)

Keys never appear: only the key's configured name. Refusals are WARNING, failures ERROR, the rest INFO
(logged only when the ``quotagate.request`` logger is at INFO, i.e. with ``--access-log``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import orjson

from .outcomes import verdict
from .settings import ProviderSettings
from .units import rfc3339, usd

LogFormat = Literal["text", "json"]
REQUEST_LOGGER = "quotagate.request"
request_log = logging.getLogger(REQUEST_LOGGER)


class _Usage(Protocol):
    @property
    def input(self) -> int | None: ...
    @property
    def output(self) -> int | None: ...


class _Endpoint(Protocol):
    @property
    def name(self) -> str: ...


class Admitted(Protocol):
    """Who asked for what: the pipeline's ``proxy.admit.Admission`` (the pipeline is not imported here)."""

    @property
    def request_id(self) -> str: ...
    @property
    def t0(self) -> float: ...
    @property
    def team(self) -> str | None: ...
    @property
    def key_name(self) -> str: ...
    @property
    def model(self) -> str: ...
    @property
    def stream(self) -> bool: ...
    @property
    def endpoint(self) -> _Endpoint: ...


class Answered(Protocol):
    """What the client was answered: the pipeline's ``proxy.forward.Relayed``."""

    @property
    def provider(self) -> str: ...
    @property
    def status(self) -> int: ...
    @property
    def t_end(self) -> float: ...
    @property
    def outcome(self) -> str: ...
    @property
    def error(self) -> str | None: ...
    @property
    def error_type(self) -> str | None: ...
    @property
    def limit(self) -> str | None: ...
    @property
    def upstream_s(self) -> float: ...
    @property
    def ttft(self) -> float | None: ...
    @property
    def usage(self) -> _Usage: ...


def request_finished(
    adm: Admitted, r: Answered, cost_micro_usd: int, providers: Mapping[str, ProviderSettings]
) -> None:
    """The one log line of a finished request: refusals and failures always, the rest with --access-log."""
    kind = verdict(r.outcome, r.status)
    level = logging.INFO if kind == "ok" else logging.WARNING if kind == "refused" else logging.ERROR
    if not request_log.isEnabledFor(level):
        return
    fields: dict[str, Any] = {
        "request_id": adm.request_id,
        "team": adm.team,
        "key": adm.key_name or None,
        "model": adm.model or None,
        "endpoint": adm.endpoint.name,
        "stream": adm.stream,
        "outcome": r.outcome,
        "status": r.status,
        "limit": r.limit,
        "error_type": r.error_type if kind != "ok" else None,
        "latency_ms": round((r.t_end - adm.t0) * 1000, 3),
    }
    if r.upstream_s > 0:  # it was sent to a provider (refusals never are)
        provider = providers.get(r.provider)
        fields["provider"] = r.provider or None
        fields["upstream_host"] = urlsplit(provider.base_url).netloc if provider is not None else None
        fields["upstream_status"] = _upstream_status(r, kind)
        fields["upstream_ms"] = round(r.upstream_s * 1000, 3)
        fields["ttft_ms"] = round(r.ttft * 1000, 3) if r.ttft is not None else None
    if kind == "ok":
        fields["input_tokens"] = r.usage.input
        fields["output_tokens"] = r.usage.output
        fields["cost_usd"] = usd(cost_micro_usd)
    else:
        fields["error"] = r.error
    request_log.log(level, kind, extra={"fields": {k: v for k, v in fields.items() if v is not None}})


def _upstream_status(r: Answered, kind: str) -> int | None:
    """The provider's HTTP status, when it answered (an upstream error keeps the provider's status)."""
    etype = r.error_type or ""
    if kind == "ok" or (etype.startswith("upstream_") and etype[len("upstream_") :].isdigit()):
        return r.status or None
    return None


# ---- formatters ---------------------------------------------------------------------------------------


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


def _text_value(v: Any) -> str:
    s = v if isinstance(v, str) else orjson.dumps(v).decode()
    return orjson.dumps(s).decode() if (not s or any(c in s for c in ' "=')) else s


class TextFormatter(logging.Formatter):
    """``<ts> <LEVEL> <logger> <message> key=value ...`` (values with spaces quoted); a record with a ``block``
    (the startup banner) prints that block instead of its fields."""

    def format(self, record: logging.LogRecord) -> str:
        fields = getattr(record, "fields", None)
        block = getattr(record, "block", None)
        line = f"{rfc3339(record.created)} {record.levelname} {record.name} {record.getMessage()}"
        if isinstance(block, str):
            line += "\n" + block
        elif isinstance(fields, dict) and fields:
            line += " " + " ".join(f"{k}={_text_value(v)}" for k, v in fields.items())
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, then the record's structured fields."""

    def format(self, record: logging.LogRecord) -> str:
        obj: dict[str, Any] = {
            "ts": rfc3339(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for k, v in _fields(record).items():
            obj.setdefault(k, v)
        if record.exc_info:
            obj["exception"] = self.formatException(record.exc_info)
        return orjson.dumps(obj, default=str).decode()


def log_config(fmt: LogFormat, level: str, *, access_log: bool) -> dict[str, Any]:
    """A ``logging.config.dictConfig`` for ``quotagate serve``, given to uvicorn as its ``log_config`` so that
    uvicorn's lines (in every worker) come out in the same format as quotagate's."""
    formatter = {"()": f"{__name__}.{'JsonFormatter' if fmt == 'json' else 'TextFormatter'}"}
    level = level.upper()
    handler = {"class": "logging.StreamHandler", "formatter": "quotagate", "stream": "ext://sys.stderr"}
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "formatters": {"quotagate": formatter},
        "handlers": {"stderr": handler},
        "root": {"handlers": ["stderr"], "level": "WARNING"},
        "loggers": {
            "quotagate": {"handlers": ["stderr"], "level": level, "propagate": False},
            # refusals and failures at WARNING and ERROR; every request at INFO with --access-log
            REQUEST_LOGGER: {"level": "INFO" if access_log else "WARNING"},
            "uvicorn": {"handlers": ["stderr"], "level": level, "propagate": False},
            "uvicorn.error": {"level": level},
            # off: `serve` logs its own request lines (uvicorn's would repeat them without team or outcome)
            "uvicorn.access": {"handlers": ["stderr"], "level": "WARNING", "propagate": False},
        },
    }

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
import time
from collections.abc import Mapping
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit

import orjson

from .outcomes import Outcome, verdict
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


class FinishedRequest(Protocol):
    """What the request log reads from the pipeline's trace (the pipeline is not imported here)."""

    request_id: str
    t0: float
    t_end: float | None
    team: str | None
    key_name: str
    model: str
    provider: str
    stream: bool
    status: int
    outcome: Outcome
    error: str | None
    error_type: str | None
    upstream_s: float
    ttft: float | None
    cost: int
    limit: str | None

    @property
    def endpoint(self) -> _Endpoint: ...
    @property
    def usage(self) -> _Usage: ...


def request_finished(t: FinishedRequest, providers: Mapping[str, ProviderSettings]) -> None:
    """The one log line of a finished request: refusals and failures always, the rest with --access-log."""
    kind = verdict(t.outcome, t.status)
    level = logging.INFO if kind == "ok" else logging.WARNING if kind == "refused" else logging.ERROR
    if not request_log.isEnabledFor(level):
        return
    now = time.perf_counter()
    fields: dict[str, Any] = {
        "request_id": t.request_id,
        "team": t.team,
        "key": t.key_name or None,
        "model": t.model or None,
        "endpoint": t.endpoint.name,
        "stream": t.stream,
        "outcome": t.outcome,
        "status": t.status,
        "limit": t.limit,
        "error_type": t.error_type if kind != "ok" else None,
        "latency_ms": round(((t.t_end or now) - t.t0) * 1000, 3),
    }
    if t.upstream_s > 0:  # it was sent to a provider (refusals never are)
        provider = providers.get(t.provider)
        fields["provider"] = t.provider or None
        fields["upstream_host"] = urlsplit(provider.base_url).netloc if provider is not None else None
        fields["upstream_status"] = _upstream_status(t)
        fields["upstream_ms"] = round(t.upstream_s * 1000, 3) if t.upstream_s else None
        fields["ttft_ms"] = round(t.ttft * 1000, 3) if t.ttft is not None else None
    if kind == "ok":
        fields["input_tokens"] = t.usage.input
        fields["output_tokens"] = t.usage.output
        fields["cost_usd"] = usd(t.cost)
    else:
        fields["error"] = t.error
    request_log.log(level, kind, extra={"fields": {k: v for k, v in fields.items() if v is not None}})


def _upstream_status(t: FinishedRequest) -> int | None:
    """The provider's HTTP status, when it answered (an upstream error keeps the provider's status)."""
    etype = t.error_type or ""
    if verdict(t.outcome, t.status) == "ok" or (etype.startswith("upstream_") and etype[len("upstream_") :].isdigit()):
        return t.status or None
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

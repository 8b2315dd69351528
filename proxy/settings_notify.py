"""``notifications:``: where budget threshold notifications (``notify_at`` on a budget, proxy/notify.py) go,
and how hard the gateway tries. Re-exported by proxy/settings.py.

Each webhook has its own bounded queue and sender, so a receiver that is down only delays (and, once its
queue is full, drops) its own notifications.
"""

from __future__ import annotations

import re
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

WEBHOOK_NAME = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"  # a metric label: bounded, plain


class WebhookSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    url: str
    format: Literal["json", "slack"] = "json"  # json: quotagate's event; slack: {"text": ..., "blocks": [...]}
    headers: dict[str, str] = Field(default_factory=dict)  # e.g. Authorization: Bearer ${HOOK_TOKEN}
    name: str | None = Field(default=None, pattern=WEBHOOK_NAME)  # default: the URL's host

    @field_validator("url")
    @classmethod
    def _url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")) or not urlsplit(v).hostname:
            raise ValueError("must be an http:// or https:// URL")
        return v

    @property
    def label(self) -> str:
        """The webhook's name in metrics and logs (never its URL's path or query, which may hold a token)."""
        if self.name is not None:
            return self.name
        return re.sub(r"[^A-Za-z0-9._-]", "_", urlsplit(self.url).hostname or "webhook")


class NotificationSettings(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    webhooks: tuple[WebhookSettings, ...] = ()
    queue_size: int = Field(default=1000, gt=0, le=1_000_000)  # per webhook; past it, new ones are dropped
    retries: int = Field(default=5, ge=0, le=20)  # after the first attempt, on connection errors, 5xx and 429
    timeout_s: float = Field(default=5.0, gt=0, le=120)  # per attempt
    backoff_s: float = Field(default=0.5, gt=0, le=60)  # before the first retry; doubled each time, at most 30s
    # how often each process reads the configured org, team and key budgets to see a crossing that no
    # request shows (the last request's settlement reached the threshold); 0: only on requests
    sweep_seconds: float = Field(default=15.0, ge=0, le=3600)
    drain_seconds: float = Field(default=5.0, ge=0, le=300)  # at shutdown, to send what is queued

    @model_validator(mode="after")
    def _unique_labels(self) -> NotificationSettings:
        labels = [w.label for w in self.webhooks]
        dup = sorted({x for x in labels if labels.count(x) > 1})
        if dup:
            raise ValueError(f"webhooks share the name {', '.join(dup)}: give each a distinct `name`")
        return self

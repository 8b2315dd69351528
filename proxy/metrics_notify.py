"""The budget notification metrics (proxy/notify.py), on the gateway's registry (proxy/metrics.py's rules:
bounded labels, summed across workers in multiprocess mode).

* ``quotagate_budget_threshold_crossed_total{team, scope, window, unit, threshold}``: once per crossing, by
  the process that won the store's claim, so summed over replicas it counts each crossing once; ``team`` is
  ``""`` for the org's budgets (one counter for every team). No end user, tag, model or key name is a label.
* ``quotagate_notifications_sent_total{webhook, result}``: one per notification and webhook, ``result``
  ``delivered`` (2xx), ``rejected`` (another 4xx: retrying cannot help) or ``failed`` (retries exhausted).
* ``quotagate_notifications_dropped_total{webhook}``: not queued, the webhook's queue being full.
* ``quotagate_notification_retries_total{webhook}``: attempts after the first.
"""

from __future__ import annotations

from collections.abc import Sequence

from prometheus_client import CollectorRegistry, Counter

RESULTS = ("delivered", "rejected", "failed")


class NotifyMetrics:
    def __init__(self, registry: CollectorRegistry, webhooks: Sequence[str]) -> None:
        self.crossed = Counter(
            "quotagate_budget_threshold_crossed",
            "Budget thresholds (notify_at) crossed, counted once across replicas per window and threshold.",
            ["team", "scope", "window", "unit", "threshold"],
            registry=registry,
        )
        self.sent = Counter(
            "quotagate_notifications_sent",
            "Budget notifications by webhook and result (delivered, rejected, failed).",
            ["webhook", "result"],
            registry=registry,
        )
        self.dropped = Counter(
            "quotagate_notifications_dropped",
            "Budget notifications dropped because the webhook's queue was full.",
            ["webhook"],
            registry=registry,
        )
        self.retries = Counter(
            "quotagate_notification_retries",
            "Budget notification attempts after the first (connection errors, timeouts, 5xx, 429).",
            ["webhook"],
            registry=registry,
        )
        for name in webhooks:  # every series present from the start, so rate() and alerts see the first one
            self.dropped.labels(name)
            self.retries.labels(name)
            for result in RESULTS:
                self.sent.labels(name, result)

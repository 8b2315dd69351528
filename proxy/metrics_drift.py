"""The counter drift and seeding metrics (proxy/drift.py, proxy/seed.py), on the gateway's registry
(proxy/metrics.py's rules: bounded labels; in multiprocess mode a gauge is the live workers' most recent).

* ``quotagate_budget_drift_tokens{team, scope, window}`` and ``quotagate_budget_drift_usd{...}`` (dollars):
  a budget counter's ``used`` less what the ledger says its window's requests were charged; 0 when they agree.
  ``scope`` is org | team | key | model (``team`` is ``""`` for the org's budgets), ``window`` the budget's window
  as its counter names it (``day``, ``month@Europe/Paris``). The keys or models of one team and window share a
  series: the one that drifts most (by absolute value) sets it; the warning log names each. A series is set
  when its counter was at rest (proxy/drift.py) and keeps its value between checks.
* ``quotagate_drift_checks_total{result}``: reconcile passes, ``result`` ok | drift | skipped
  (this process's ledger had records waiting) | failed (the store or the ledger did not answer).
* ``quotagate_store_seeds_total{result}``: hash tags found without a seed marker (a store loss, or a store
  never seeded), ``result`` seeded (this process wrote the ledger's values) | already (another replica had).
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge

CHECK_RESULTS = ("ok", "drift", "skipped", "failed")
SEED_RESULTS = ("seeded", "already")
_LABELS = ("team", "scope", "window")


class DriftMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.tokens = Gauge(
            "quotagate_budget_drift_tokens",
            "Budget counter used less the ledger's charged tokens for its window (0: they agree).",
            _LABELS,
            multiprocess_mode="livemostrecent",
            registry=registry,
        )
        self.usd = Gauge(
            "quotagate_budget_drift_usd",
            "Budget counter used less the ledger's charged cost for its window, in dollars (0: they agree).",
            _LABELS,
            multiprocess_mode="livemostrecent",
            registry=registry,
        )
        self.checks = Counter(
            "quotagate_drift_checks",
            "Counter drift reconcile passes by result (ok, drift, skipped, failed).",
            ["result"],
            registry=registry,
        )
        self.seeds = Counter(
            "quotagate_store_seeds",
            "Hash tags found without a seed marker, by result (seeded from the ledger here, already seeded).",
            ["result"],
            registry=registry,
        )
        for r in CHECK_RESULTS:
            self.checks.labels(r)
        for r in SEED_RESULTS:
            self.seeds.labels(r)

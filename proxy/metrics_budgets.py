"""The budget gauges: a collector whose values the scraping process reads from the shared store right
before each scrape (``Gateway.scrape``), so they never lag and no worker's stale value wins."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector


class BudgetCollector(Collector):
    """quotagate_budget_{limit,used,reserved}: values set right before the scrape, never merged across
    workers (each scrape reads the shared store itself)."""

    def __init__(self) -> None:
        self._values: dict[tuple[str, str, str], tuple[float, float, float]] = {}

    def put(self, labels: tuple[str, str, str], values: tuple[float, float, float]) -> None:
        self._values[labels] = values

    def clear(self) -> None:
        self._values = {}

    def collect(self) -> Iterable[Metric]:
        names = ("team", "window", "unit")
        families = (
            GaugeMetricFamily(
                "quotagate_budget_limit", "Configured budget for the current window (unit tokens or usd).", labels=names
            ),
            GaugeMetricFamily(
                "quotagate_budget_used", "Budget used in the current window (unit tokens or usd).", labels=names
            ),
            GaugeMetricFamily(
                "quotagate_budget_reserved",
                "Budget held by requests in flight in the current window (unit tokens or usd).",
                labels=names,
            ),
        )
        for labels, triple in sorted(self._values.items()):
            for family, v in zip(families, triple, strict=True):
                family.add_metric(list(labels), v)
        return families

"""Budget notification delivery (proxy/notify_send.py, proxy/notify_payload.py) to a real HTTP receiver: the
JSON and Slack payloads, retries on 5xx/429 and none on 4xx, a receiver down then up, a full queue, the drain
at shutdown, and three replicas on one store queueing each crossing once to every webhook."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from proxy.metrics_notify import NotifyMetrics
from proxy.notify_payload import Crossing, event, slack, summary
from proxy.notify_send import WebhookSender
from proxy.store import MemoryStore
from tests.test_notifications import DAY_END, T0, Clock, config, make_replica
from tests.webhook_receiver import Receiver

# ---- delivery -----------------------------------------------------------------------------------------------


def crossing(threshold: float = 0.8, unit: str = "usd", scope: str = "team", entity: str = "") -> Crossing:
    return Crossing(
        key=f"{{search}}:t:b:day:{unit}:2027-01-15:n:{threshold:g}",
        scope=scope,
        team="search",
        entity=entity,
        window="day",
        window_id="2027-01-15",
        window_start=DAY_END - 86_400,
        window_end=DAY_END,
        unit=unit,
        limit=10_000_000,
        used=8_120_000,
        threshold=threshold,
        at=T0,
    )


def sender(url: str, fmt: str = "json", **cfg: Any) -> tuple[WebhookSender, CollectorRegistry]:
    s = config(
        "memory://",
        notifications={
            "webhooks": [{"url": url, "format": fmt, "name": "owners", "headers": {"authorization": "Bearer hook"}}],
            **{"backoff_s": 0.05, **cfg},
        },
    )
    registry = CollectorRegistry()
    return WebhookSender(s.notifications.webhooks[0], s.notifications, NotifyMetrics(registry, ["owners"])), registry


def sent(registry: CollectorRegistry, result: str) -> float:
    return registry.get_sample_value("quotagate_notifications_sent_total", {"webhook": "owners", "result": result}) or 0


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = await Receiver().start()
    yield r
    await r.stop()


async def test_json_and_slack_payloads(receiver: Receiver) -> None:
    for fmt in ("json", "slack"):
        s, registry = sender(receiver.url(fmt), fmt)
        s.start()
        assert s.put(crossing())
        await s.close(5)
        assert sent(registry, "delivered") == 1
    (post_json,) = [p for p in receiver.taken if p.path == "json"]
    assert post_json.headers["authorization"] == "Bearer hook"
    assert post_json.headers["content-type"] == "application/json"
    event = post_json.body
    assert post_json.headers["x-quotagate-event-id"] == event["id"]
    assert event == {
        "event": "budget.threshold_crossed",
        "id": crossing().event_id,
        "at": "2027-01-15T08:00:30.000Z",
        "scope": "team",
        "team": "search",
        "entity": None,
        "window": "day",
        "window_id": "2027-01-15",
        "window_start": "2027-01-15T00:00:00.000Z",
        "window_end": "2027-01-16T00:00:00.000Z",
        "unit": "usd",
        "threshold": 0.8,
        "limit": 10_000_000,
        "used": 8_120_000,
        "limit_usd": 10.0,
        "used_usd": 8.12,
        "used_fraction": 0.812,
        "message": "The team budget of team 'search' for this day (2027-01-15) reached 80%: used $8.12 of "
        "$10.00; it renews at 2027-01-16T00:00:00.000Z.",
    }
    (slack,) = receiver.bodies("slack")
    assert slack["text"].startswith(":warning: The team budget of team 'search' for this day (2027-01-15) reached 80%")
    assert slack["blocks"][0]["text"]["text"] == slack["text"]
    assert "threshold 80%" in slack["blocks"][1]["elements"][0]["text"]


def test_payloads_name_the_level_and_entity_like_refusals() -> None:
    c = crossing(1.0, unit="tokens", scope="end_user", entity="u-42")
    assert summary(c).startswith(
        "The budget of end user 'u-42' in team 'search' for this day (2027-01-15) reached 100%"
    )
    assert "used 8.12M tokens of 10M tokens" in summary(c)
    assert slack(c)["text"].startswith(":rotating_light:")
    assert event(c)["limit_usd"] is None and event(c)["entity"] == "u-42"
    org = Crossing(**{**_fields(c), "scope": "org", "team": "", "entity": ""})
    assert summary(org).startswith("The organisation's budget") and event(org)["team"] is None
    key = Crossing(**{**_fields(c), "scope": "key", "entity": "app"})
    assert summary(key).startswith("The budget of key 'app' in team 'search'")


def _fields(c: Crossing) -> dict[str, Any]:
    return dataclasses.asdict(c)


async def test_5xx_and_429_are_retried_4xx_is_not(receiver: Receiver) -> None:
    s, registry = sender(receiver.url(), retries=3)
    s.start()
    receiver.statuses = [503, 429, 200]
    assert await s.deliver(crossing()) == "delivered"
    assert len(receiver.posts) == 3 and len(receiver.taken) == 1
    assert registry.get_sample_value("quotagate_notification_retries_total", {"webhook": "owners"}) == 2
    receiver.statuses = [400]
    assert await s.deliver(crossing(0.5)) == "rejected"
    assert len(receiver.posts) == 4
    receiver.statuses = [500] * 10
    assert await s.deliver(crossing(1.0)) == "failed"
    assert len(receiver.posts) == 8  # the first attempt and 3 retries
    assert [sent(registry, r) for r in ("delivered", "rejected", "failed")] == [1, 1, 1]
    await s.close(1)


async def test_receiver_down_then_up_is_delivered_by_the_retries() -> None:
    down = Receiver()  # its port: nothing listens yet
    s, registry = sender(down.url(), retries=8, backoff_s=0.05)
    s.start()
    assert s.put(crossing())
    await asyncio.sleep(0.4)  # a few connection refusals
    assert down.posts == [] and sent(registry, "delivered") == 0
    await down.start()
    try:
        (body,) = await down.wait_for(1)
        assert body["threshold"] == 0.8
        await s.close(5)
        assert sent(registry, "delivered") == 1
        assert (registry.get_sample_value("quotagate_notification_retries_total", {"webhook": "owners"}) or 0) >= 2
    finally:
        await down.stop()


async def test_full_queue_drops_and_counts_and_shutdown_drains_what_was_queued(receiver: Receiver) -> None:
    s, registry = sender(receiver.url(), queue_size=2)
    assert [s.put(crossing(t)) for t in (0.25, 0.5, 0.75, 1.0)] == [True, True, False, False]
    assert registry.get_sample_value("quotagate_notifications_dropped_total", {"webhook": "owners"}) == 2
    s.start()
    await s.close(5)  # shutdown: what is queued is sent within the grace
    assert [b["threshold"] for b in receiver.bodies()] == [0.25, 0.5]
    assert sent(registry, "delivered") == 2


async def test_shutdown_grace_bounds_the_drain() -> None:
    nowhere = Receiver()
    s, registry = sender(nowhere.url(), retries=20, backoff_s=1)
    s.start()
    s.put(crossing())
    started = asyncio.get_running_loop().time()
    await s.close(0.3)
    assert asyncio.get_running_loop().time() - started < 2
    assert sent(registry, "delivered") == 0


async def test_winner_queues_to_every_webhook_end_to_end(receiver: Receiver) -> None:
    clock = Clock()
    hooks = [{"url": receiver.url("a"), "name": "a"}, {"url": receiver.url("b"), "format": "slack", "name": "b"}]
    s = config("memory://", notifications={"webhooks": hooks, "sweep_seconds": 0})
    store = MemoryStore(clock=clock)
    reps = [await make_replica(s, store, clock) for _ in range(3)]
    for r in reps:
        r.notifier.start(r.budgets)
    await reps[0].spend(1000)
    await asyncio.gather(*(r.probe() for r in reps for _ in range(3)))
    assert sorted(b["threshold"] for b in await receiver.wait_for(3, "a")) == [0.5, 0.8, 1.0]
    assert len(await receiver.wait_for(3, "b")) == 3
    for r in reps:
        await r.notifier.stop()
    assert len(receiver.bodies("a")) == 3 and len(receiver.bodies("b")) == 3
    assert {b["team"] for b in receiver.bodies("a")} == {"search"}
    assert all("The team budget of team 'search'" in b["text"] for b in receiver.bodies("b"))

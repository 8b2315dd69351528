"""One webhook's delivery: a bounded queue and one sender task that POSTs each notification, retrying with
backoff on connection errors, timeouts, 5xx and 429 (``Retry-After`` honoured, within the backoff cap).

Full queue: the new notification is dropped and counted (``quotagate_notifications_dropped_total``), never
waited for: ``put`` runs on a request's path. Redirects are not followed (the configured headers, which
may carry a token, go to the configured URL only). Delivery is at least once: a receiver whose 2xx answer
is lost gets the event again, with the same ``id``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import aiohttp

from .metrics_notify import NotifyMetrics
from .notify_payload import Crossing, body
from .settings_notify import NotificationSettings, WebhookSettings

log = logging.getLogger("quotagate.notify")
MAX_BACKOFF_S = 30.0


class WebhookSender:
    def __init__(self, hook: WebhookSettings, cfg: NotificationSettings, metrics: NotifyMetrics) -> None:
        self.hook = hook
        self._cfg = cfg
        self._m = metrics
        self._queue: asyncio.Queue[Crossing] = asyncio.Queue(cfg.queue_size)
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    def put(self, c: Crossing) -> bool:
        """Queue ``c`` for sending; False (dropped, counted) when the queue is full."""
        try:
            self._queue.put_nowait(c)
        except asyncio.QueueFull:
            self._m.dropped.labels(self.hook.label).inc()
            log.warning("notification to webhook %s dropped (queue full): %s", self.hook.label, c.key)
            return False
        return True

    @property
    def queued(self) -> int:
        return self._queue.qsize()

    def start(self) -> None:
        timeout = aiohttp.ClientTimeout(total=self._cfg.timeout_s)
        self._session = aiohttp.ClientSession(timeout=timeout)
        self._task = asyncio.create_task(self._run(), name=f"quotagate-notify-{self.hook.label}")

    async def close(self, grace: float) -> None:
        """Send what is queued within ``grace`` seconds, then stop (what is left is logged, not sent)."""
        if self._task is not None:
            try:
                await asyncio.wait_for(self._queue.join(), grace)
            except TimeoutError:
                log.warning("webhook %s: %d notifications left unsent at shutdown", self.hook.label, self.queued)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _run(self) -> None:
        while True:
            c = await self._queue.get()
            try:
                await self.deliver(c)
            except Exception:
                log.exception("webhook %s: sending %s", self.hook.label, c.key)
            finally:
                self._queue.task_done()

    async def deliver(self, c: Crossing) -> str:
        """POST ``c`` until it is taken, refused, or the retries run out; the result counted."""
        assert self._session is not None, "start() first"
        data = body(c, self.hook.format)
        headers = {
            "content-type": "application/json",
            "user-agent": "quotagate",
            "x-quotagate-event-id": c.event_id,
            **self.hook.headers,
        }
        why = ""
        for attempt in range(self._cfg.retries + 1):
            delay = min(self._cfg.backoff_s * 2**attempt, MAX_BACKOFF_S)
            try:
                async with self._session.post(self.hook.url, data=data, headers=headers, allow_redirects=False) as r:
                    status, retry_after = r.status, r.headers.get("retry-after")
                    await r.read()
            except (aiohttp.ClientError, TimeoutError) as e:
                why = type(e).__name__
            else:
                if 200 <= status < 300:
                    return self._count("delivered")
                if status != 429 and status < 500:
                    log.warning("webhook %s refused %s: HTTP %d", self.hook.label, c.key, status)
                    return self._count("rejected")
                why = f"HTTP {status}"
                delay = max(delay, min(_seconds(retry_after), MAX_BACKOFF_S))
            if attempt < self._cfg.retries:
                self._m.retries.labels(self.hook.label).inc()
                await asyncio.sleep(delay)
        log.warning("webhook %s: %s not delivered after %d attempts (%s)", self.hook.label, c.key, attempt + 1, why)
        return self._count("failed")

    def _count(self, result: str) -> str:
        self._m.sent.labels(self.hook.label, result).inc()
        return result


def _seconds(retry_after: str | None) -> float:
    try:
        return max(float(retry_after), 0.0) if retry_after is not None else 0.0
    except ValueError:
        return 0.0  # an HTTP date: the backoff decides

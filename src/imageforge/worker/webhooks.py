"""The webhook sender: deliveries from the outbox, signed per Standard Webhooks.

The outbox row is written in the transaction that ends the task (store), so the decision to
deliver is never lost or doubled; here a sender claims due rows with a lease (on PostgreSQL
`FOR UPDATE SKIP LOCKED`: senders in many workers never take the same one), POSTs, and
books the attempt, fenced by the attempts it saw. A sender that dies mid-attempt leaves the
row to be claimed again when the lease runs out, with the same `webhook-id`: receivers
deduplicate on it, as the specification asks.

What counts: a 2xx. A 410 stops retrying. Anything else (another status, a redirect, which
is never followed, a timeout, a refused address) is retried after the next step of the
schedule, with up to 25% jitter; after the last step the delivery has failed. Every attempt
goes through the guarded `OutboundClient` (the reference allow-list; the connection pinned
to the checked address), so a callback URL whose name now resolves somewhere private is
refused at send time too.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from imageforge.apikeys import webhook_secret_bytes
from imageforge.references import OutboundClient, OutboundError, Timeouts
from imageforge.store import Store, StoreUnavailable
from imageforge.store.base import DueWebhook, WebhookOutcome
from imageforge.tasks import Task

log = logging.getLogger(__name__)

USER_AGENT = "imageforge-webhooks/0.1"
#: Deliveries one sender attempts at once.
CONCURRENCY = 16
#: A claim outlives the attempt's timeout by this much before another sender may take it.
LEASE_MARGIN_SECONDS = 30.0
JITTER = 0.25

#: Makes the JSON body of a task (the poll's object) with its image link built on a base URL.
TaskBody = Callable[[Task, str | None], dict[str, Any]]


@dataclass(frozen=True)
class WebhookConfig:
    retry_schedule: Sequence[float]
    timeout_seconds: float
    poll_seconds: float


def webhook_id(task_id: str) -> str:
    """One per task (a task ends once), the same for every attempt."""
    return "msg_" + task_id.removeprefix("image_").replace("-", "")


def sign(secret: str, message_id: str, timestamp: int, body: bytes) -> str:
    """`v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">` (Standard Webhooks)."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(webhook_secret_bytes(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def next_outcome(
    attempts_before: int,
    status: int | None,
    error: str | None,
    schedule: Sequence[float],
    *,
    rand: Callable[[], float] = random.random,
) -> WebhookOutcome:
    """What an attempt's answer means for the delivery."""
    if status is not None and 200 <= status < 300:
        return WebhookOutcome("delivered", status, None)
    if status == 410:
        return WebhookOutcome("failed", status, error or "HTTP 410: the receiver wants no more")
    reason = error or f"HTTP {status}: only a 2xx answer counts"
    if attempts_before >= len(schedule):
        return WebhookOutcome("failed", status, f"{reason}; no retries left")
    delay = schedule[attempts_before] * (1 + JITTER * rand())
    return WebhookOutcome("pending", status, reason, retry_in_seconds=delay)


class WebhookSender:
    def __init__(
        self,
        *,
        store: Store,
        outbound: OutboundClient,
        body_of: TaskBody,
        config: WebhookConfig,
    ) -> None:
        self._store = store
        self._outbound = outbound
        self._body_of = body_of
        self._config = config
        self._slots = asyncio.Semaphore(CONCURRENCY)
        self._sending: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        """Claim and send due deliveries until cancelled."""
        lease = self._config.timeout_seconds + LEASE_MARGIN_SECONDS
        try:
            while True:
                free = CONCURRENCY - len(self._sending)
                due: list[DueWebhook] = []
                if free > 0:
                    try:
                        due = await self._store.claim_webhooks(limit=free, lease_seconds=lease)
                    except StoreUnavailable:
                        log.warning("database unavailable; webhooks wait")
                for delivery in due:
                    job = asyncio.create_task(self._deliver(delivery), name="webhook")
                    self._sending.add(job)
                    job.add_done_callback(self._sending.discard)
                if len(due) < free:
                    await asyncio.sleep(self._config.poll_seconds)
                else:
                    await asyncio.sleep(0)
        finally:
            for job in list(self._sending):
                job.cancel()
            for job in list(self._sending):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await job

    async def _deliver(self, delivery: DueWebhook) -> None:
        try:
            outcome = await self._attempt(delivery)
            recorded = await self._store.record_webhook_attempt(delivery, outcome)
        except StoreUnavailable:
            log.warning("database unavailable; webhook of %s retried later", delivery.task_id)
            return
        except Exception:
            log.exception("webhook of %s", delivery.task_id)
            return
        if not recorded:
            log.info("webhook of %s was taken over by another sender", delivery.task_id)
        elif outcome.state == "delivered":
            log.info("delivered the webhook of %s", delivery.task_id)
        else:
            log.info("webhook of %s: %s (%s)", delivery.task_id, outcome.error, outcome.state)

    async def _attempt(self, delivery: DueWebhook) -> WebhookOutcome:
        schedule = self._config.retry_schedule
        task = await self._store.get_task(delivery.task_id)
        secrets = await self._store.webhook_secrets(delivery.key_id)
        if task is None:
            return WebhookOutcome("failed", None, "the task no longer exists (retention)")
        if secrets is None:
            return WebhookOutcome("failed", None, "the task's API key no longer exists")
        body = orjson.dumps(self._body_of(task, delivery.base_url))
        message_id = webhook_id(task.id)
        timestamp = int(time.time())
        signatures = [sign(secrets.current, message_id, timestamp, body)]
        if secrets.previous is not None:
            signatures.append(sign(secrets.previous, message_id, timestamp, body))
        headers = {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "webhook-id": message_id,
            "webhook-timestamp": str(timestamp),
            "webhook-signature": " ".join(signatures),
        }
        seconds = self._config.timeout_seconds
        async with self._slots:
            try:
                answer = await self._outbound.post(
                    delivery.url,
                    body,
                    timeouts=Timeouts(connect=seconds, read=seconds, total=seconds),
                    headers=headers,
                    max_answer_bytes=1024,
                )
            except OutboundError as exc:
                return next_outcome(delivery.attempts, None, exc.reason, schedule)
        return next_outcome(delivery.attempts, answer.status, None, schedule)

"""The send loop: leases due deliveries, sends them concurrently, records each outcome.

- A delivery row exists before any send (written with the event's consumption), so nothing is lost:
  a replica that dies mid-send leaves its lease to expire, and any replica takes the row over.
- Claims use FOR UPDATE SKIP LOCKED, so replicas share the queue without waiting on each other, and
  every outcome is written only while the claim token still holds, so one outcome is ever reported.
- Up to `pool_size` sends run at once, each bounded by `send_timeout_seconds`: a slow or dead
  receiver holds one slot until its timeout and never delays another recipient.
- A failed attempt is retried after an exponential backoff with jitter (`next_attempt_at`); after
  the last attempt (or a permanent refusal) the delivery is `failed` and NotificationFailed is
  published through the outbox; success publishes NotificationSent.
- The outcome of a send that did happen cannot be lost with the process; at-least-once towards
  the outside world is the honest guarantee there: receivers dedupe on X-Cso-Delivery (webhooks)
  or Message-ID (e-mail), both stable across attempts. The inbox is exactly-once (same transaction).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar
from uuid import uuid4

from prometheus_client import Counter, Gauge
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts import events as ev
from contracts import make_event
from cso import outbox
from cso.service import Runtime

from . import store
from .channels import Mailer, SendError, Webhooks
from .domain import CHANNELS, backoff, outcome_event_id
from .settings import NotifySettings

log = logging.getLogger(__name__)
SOURCE = "cso-notify"
T = TypeVar("T")

DELIVERIES = Counter("cso_notify_deliveries_total", "Deliveries finished, by channel and outcome",
                     ["channel", "outcome"])
RETRIES = Counter("cso_notify_retries_total", "Failed attempts scheduled for another try", ["channel"])
FAILED = Counter("cso_notify_failed_total", "Deliveries given up after their last attempt", ["channel"])
QUEUE_DEPTH = Gauge("cso_notify_queue_depth", "Deliveries pending (due now or waiting for a retry)")
for _channel in CHANNELS:
    for _outcome in ("sent", "failed"):
        DELIVERIES.labels(_channel, _outcome)
    RETRIES.labels(_channel)
    FAILED.labels(_channel)


class LostLease(Exception):
    """Another sender took the delivery over (our lease expired): it reports the outcome."""


class Sender:
    def __init__(self, runtime: Runtime, config: NotifySettings,
                 rand: Callable[[], float] = random.random) -> None:
        self.runtime, self.config, self.rand = runtime, config, rand
        self.mailer = Mailer(config)
        self.webhooks: Webhooks | None = None
        self._wake = asyncio.Event()
        self.inflight: set[asyncio.Task[None]] = set()

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        self.webhooks = Webhooks(self.config)
        try:
            while True:
                self._wake.clear()
                free = self.config.pool_size - len(self.inflight)
                claimed: list[Any] = []
                if free > 0:
                    try:
                        async with self.runtime.engine.begin() as conn:
                            claimed = await store.claim(conn, free, self.config.lease_seconds, uuid4())
                    except asyncio.CancelledError:
                        raise
                    except Exception:
                        log.exception("notify: claiming deliveries failed; retrying")
                        await asyncio.sleep(1)
                        continue
                for row in claimed:
                    task = asyncio.create_task(self._guarded(row), name=f"notify-send-{row.id}")
                    self.inflight.add(task)
                    task.add_done_callback(self._finished)
                if claimed and len(claimed) == free:
                    continue  # the pool is full now: the next turn waits for a slot
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.config.poll_seconds)
        finally:
            # Cancelled sends keep their leases; they expire and the deliveries are taken again.
            for task in list(self.inflight):
                task.cancel()
            await asyncio.gather(*self.inflight, return_exceptions=True)
            await self.webhooks.close()

    def _finished(self, task: asyncio.Task[None]) -> None:
        self.inflight.discard(task)
        self._wake.set()

    async def _guarded(self, d: Any) -> None:
        try:
            await self.deliver(d)
        except asyncio.CancelledError:
            raise
        except Exception:
            # The outcome could not be written: the lease expires and the delivery is tried again.
            log.exception("notify: delivery %s: recording its outcome failed", d.id)

    async def deliver(self, d: Any) -> None:
        if d.deleted_at is not None:
            await self._write(lambda c: store.mark_cancelled(c, d.id, d.claim_token, "subscription deleted"))
            return
        if d.attempts > self.config.max_attempts:
            # Leased for a last attempt by a sender that died before recording it.
            await self._failed(d, "abandoned: no attempt left after its sender stopped mid-send", True)
            return
        if d.channel == "inbox":
            await self._sent(d)
            return
        if (d.channel == "email" and not d.email) or (d.channel == "webhook" and not d.webhook_url):
            await self._write(lambda c: store.mark_cancelled(
                c, d.id, d.claim_token, f"{d.channel} was removed from the subscription"))
            return
        send = self.mailer.send if d.channel == "email" else self._webhooks().send
        try:
            await asyncio.wait_for(send(d), self.config.send_timeout_seconds)
        except SendError as e:
            await self._failed(d, str(e), e.permanent)
            return
        except TimeoutError:
            await self._failed(d, f"{d.channel}: timed out after {self.config.send_timeout_seconds}s", False)
            return
        except asyncio.CancelledError:
            raise
        except Exception as e:
            await self._failed(d, f"{type(e).__name__}: {e}", False)
            return
        await self._sent(d)

    def _webhooks(self) -> Webhooks:
        assert self.webhooks is not None
        return self.webhooks

    async def _write(self, step: Callable[[AsyncConnection], Awaitable[T]], tries: int = 3) -> T:
        """One transaction, retried briefly: an outcome is worth keeping through a database blip."""
        for attempt in range(1, tries + 1):
            try:
                async with self.runtime.engine.begin() as conn:
                    return await step(conn)
            except (asyncio.CancelledError, LostLease):
                raise
            except Exception:
                if attempt == tries:
                    raise
                await asyncio.sleep(0.2 * attempt)
        raise AssertionError("unreachable")

    async def _report(self, conn: AsyncConnection, payload: ev.Payload, region: str, event_id: Any,
                      aggregate: str) -> None:
        envelope = make_event(payload, source=SOURCE, region=region, event_id=event_id)
        await outbox.add(conn, store.SCHEMA, self.runtime.topology, [(envelope, aggregate)])

    async def _sent(self, d: Any) -> None:
        async def step(conn: AsyncConnection) -> Any:
            if d.channel == "inbox":
                # The inbox is written with the outcome: exactly once, whatever happens.
                await store.put_in_inbox(conn, d)
            row = await store.mark_sent(conn, d.id, d.claim_token)
            if row is None:
                raise LostLease(str(d.id))
            await self._report(conn, ev.NotificationSent(
                delivery_id=d.id, subscription_id=d.subscription_id, channel=d.channel,
                event_id=d.event_id, attempts=row.attempts), row.region, outcome_event_id(d.id, "sent"), str(d.id))
            return row

        try:
            await self._write(step)
        except LostLease:
            log.warning("notify: delivery %s was taken over by another sender", d.id)
            return
        DELIVERIES.labels(d.channel, "sent").inc()
        self._relay()

    async def _failed(self, d: Any, error: str, permanent: bool) -> None:
        if permanent or d.attempts >= self.config.max_attempts:
            async def give_up(conn: AsyncConnection) -> Any:
                row = await store.mark_failed(conn, d.id, d.claim_token, error)
                if row is None:
                    raise LostLease(str(d.id))
                await self._report(conn, ev.NotificationFailed(
                    delivery_id=d.id, subscription_id=d.subscription_id, channel=d.channel,
                    event_id=d.event_id, attempts=row.attempts, error=error[:4000]),
                    row.region, outcome_event_id(d.id, "failed"), str(d.id))
                return row

            try:
                await self._write(give_up)
            except LostLease:
                return
            log.warning("notify: delivery %s (%s) failed after %d attempts: %s", d.id, d.channel,
                        d.attempts, error)
            DELIVERIES.labels(d.channel, "failed").inc()
            FAILED.labels(d.channel).inc()
            self._relay()
            return
        delay = backoff(d.attempts, self.config.retry_base_seconds, self.config.retry_max_seconds, self.rand())
        if await self._write(lambda c: store.schedule_retry(c, d.id, d.claim_token, error, delay)):
            RETRIES.labels(d.channel).inc()
            log.info("notify: delivery %s attempt %d failed (%s); retrying in %.1fs", d.id, d.attempts,
                     error, delay)

    def _relay(self) -> None:
        if self.runtime.relay:
            self.runtime.relay.notify()

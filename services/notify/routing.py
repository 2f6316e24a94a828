"""Who gets what, written down: events consumed from the bus, reminders of deadlines and daily
digests become delivery rows (or digest items) in the transaction that decides them, before any
send. notify keeps no copy of targets' catalogue: titles, regions and deadlines travel in targets'
events (TargetStatusChanged, TargetDeadlineApproaching), which notify keeps as deadlines; each
subscription is reminded of them at its own lead times (reminder_days), by notify's clock."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Sequence
from datetime import date, datetime
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncConnection

from contracts import Envelope, ancestors
from contracts import events as ev
from cso.clock import Clock as Clock  # the runtime's, where api and app look for it
from cso.service import Runtime

from . import store
from .domain import (
    DIGEST,
    REMINDER,
    TASK_REMINDER,
    Deadline,
    DigestLine,
    Message,
    Notice,
    TargetInfo,
    digest_day,
    digest_event_id,
    digest_flush_id,
    lead_due,
    region_path,
    reminder_event_id,
    reminder_notice,
    render,
    render_digest,
)
from .sender import QUEUE_DEPTH, Sender
from .settings import NotifySettings

log = logging.getLogger(__name__)


async def route(conn: AsyncConnection, notice: Notice, subscribers: Sequence[store.Subscriber],
                names: dict[str, str], now: datetime) -> int:
    """Queue one notice for the subscribers it reaches: a delivery per channel for an immediate
    subscription, a digest item for a digest one. Unique keys make a repeat a no-op."""
    rendered: dict[tuple[str, str], Message] = {}
    path = region_path(notice.region, names)
    rows: list[dict[str, Any]] = []
    items: list[dict[str, Any]] = []
    for sub in subscribers:
        key = (sub.language, sub.timezone)
        if key not in rendered:
            rendered[key] = render(notice, names, sub.language, sub.timezone)
        message = rendered[key]
        if sub.frequency == "digest":
            items.append({"subscription_id": sub.rule.id, "event_id": notice.event_id, "kind": notice.kind,
                          "region": notice.region, "headline": message.headline, "recorded_at": now})
        else:
            rows += store.delivery_rows(sub, notice, message, path)
    await store.enqueue(conn, rows)
    await store.add_digest_items(conn, items)
    return len(rows) + len(items)


def target_info(payload: ev.Payload) -> TargetInfo | None:
    """A target's title and comparison, from its event (an event of before 1.3.0 has neither: the
    notice then names the target by its id)."""
    if isinstance(payload, ev.TargetStatusChanged) and payload.title:
        return TargetInfo(title=payload.title, comparison=payload.comparison or ">=")
    return None


def task_key(plan_id: str, task_no: str, region: str) -> str:
    return f"task:{plan_id}:{task_no}:{region}"


def deadline_of(envelope: Envelope[Any]) -> Deadline | None:
    """What an event tells of a deadline to remind of: targets' status changes and deadline
    announcements carry a target instance's title, region, deadline and figure; a task's deadline
    announcement its plan, title, region, deadline and lead units."""
    p = envelope.payload
    if isinstance(p, ev.TaskDeadlineApproaching):
        return Deadline(key=task_key(p.plan_id, p.task_no, p.region_code), kind=TASK_REMINDER,
                        region=p.region_code, deadline=p.deadline, title=p.title,
                        details={"plan_id": p.plan_id, "plan_title": p.plan_title, "task_no": p.task_no,
                                 "lead_units": list(p.lead_units), "status": p.status},
                        as_of=envelope.occurred_at, event_id=envelope.event_id)
    if not isinstance(p, ev.TargetStatusChanged | ev.TargetDeadlineApproaching):
        return None
    details = {"target_id": p.target_id, "metric": p.metric, "threshold": p.threshold,
               "comparison": p.comparison or ">=", "status": p.status.value if p.status else None,
               "value": p.value}
    return Deadline(key=f"target:{p.target_id}", kind=REMINDER, region=p.region_code, deadline=p.deadline,
                    title=p.title or p.target_id, details=details, as_of=envelope.occurred_at,
                    event_id=envelope.event_id)


def settled_task(envelope: Envelope[Any]) -> str | None:
    """The deadline an accepted task no longer has (its reminders stop)."""
    p = envelope.payload
    if isinstance(p, ev.TaskStatusChanged) and p.status == "accepted":
        return task_key(p.plan_id, p.task_no, p.region_code)
    return None


class Scheduler:
    """Digests at each subscriber's local time, and the queue depth gauge. Safe with replicas: each
    digest is claimed by a unique key."""

    def __init__(self, runtime: Runtime, config: NotifySettings, clock: Clock, sender: Sender) -> None:
        self.runtime, self.config, self.clock, self.sender = runtime, config, clock, sender
        self.digested: set[tuple[UUID, date]] = set()

    async def run(self) -> None:
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("notify: digests failed; retrying")
            await asyncio.sleep(self.config.schedule_seconds)

    async def step(self) -> None:
        queued = await self.reminders() + await self.digests()
        if queued:
            self.sender.wake()
        async with self.runtime.engine.connect() as conn:
            QUEUE_DEPTH.set(await store.queue_depth(conn))

    async def reminders(self) -> int:
        """Remind each subscription of the deadlines in its region at its own lead times (once per
        deadline and lead; a replica that races another makes nothing twice)."""
        today, now = self.clock.today(), self.clock.now()
        async with self.runtime.engine.begin() as conn:
            due: dict[tuple[str, int], tuple[Deadline, list[store.Subscriber]]] = {}
            for a in await store.approaching(conn, today):
                lead = lead_due(a.deadline.deadline, today, a.subscriber.rule.reminder_days)
                if lead is None or lead in a.reminded:
                    continue
                due.setdefault((a.deadline.key, lead), (a.deadline, []))[1].append(a.subscriber)
            if not due:
                return 0
            claimed = await store.claim_reminders(conn, [
                (s.rule.id, d.key, d.deadline, lead, reminder_event_id(d.key, d.deadline, lead))
                for (_, lead), (d, subs) in due.items() for s in subs])
            names = await store.names(conn, {a for d, _ in due.values() for a in ancestors(d.region)})
            queued = 0
            for (_, lead), (d, subs) in due.items():
                mine = [s for s in subs if (s.rule.id, d.key, d.deadline, lead) in claimed]
                if mine:
                    queued += await route(conn, reminder_notice(d, lead, today, now), mine, names, now)
        return queued

    async def digests(self) -> int:
        now = self.clock.now()
        async with self.runtime.engine.connect() as conn:
            subscribers = await store.digest_subscribers(conn)
        queued = 0
        for sub in subscribers:
            if sub.frequency != "digest":
                queued += await self._flush(sub, now)
                continue
            day = digest_day(now, sub.digest_time, sub.timezone)
            if day is None or (sub.rule.id, day) in self.digested:
                continue
            event_id = digest_event_id(sub.rule.id, day)
            async with self.runtime.engine.begin() as conn:
                if await store.start_digest(conn, sub.rule.id, day, event_id):
                    items = await store.take_digest_items(conn, sub.rule.id, event_id, now)
                    if items:
                        queued += await self._send_digest(conn, sub, day, event_id, items, now)
            self.digested.add((sub.rule.id, day))
        return queued

    async def _flush(self, sub: store.Subscriber, now: datetime) -> int:
        """A subscription switched from digest to immediate: what it heard so far goes out at once,
        in one last digest (the row locks of the items keep replicas from sending it twice)."""
        event_id = digest_flush_id(sub.rule.id, now)
        async with self.runtime.engine.begin() as conn:
            items = await store.take_digest_items(conn, sub.rule.id, event_id, now)
            if not items:
                return 0
            day = now.astimezone(ZoneInfo(sub.timezone)).date()
            return await self._send_digest(conn, sub, day, event_id, items, now)

    async def _send_digest(self, conn: AsyncConnection, sub: store.Subscriber, day: date, event_id: UUID,
                           items: list[Any], now: datetime) -> int:
        region = sub.rule.region
        names = await store.names(conn, ancestors(region))
        lines = [DigestLine(at=i.recorded_at, headline=i.headline) for i in items]
        message = render_digest(day, region, names, lines, sub.language, sub.timezone)
        payload = {"day": day.isoformat(), "items": [
            {"event_id": str(i.event_id), "kind": i.kind, "region": i.region, "headline": i.headline,
             "recorded_at": i.recorded_at.isoformat()} for i in sorted(items, key=lambda i: i.recorded_at)]}
        notice = Notice(event_id=event_id, kind=DIGEST, region=region, occurred_at=now,
                        payload=json.loads(json.dumps(payload)))
        rows = store.delivery_rows(sub, notice, message, region_path(region, names))
        await store.enqueue(conn, rows)
        return len(rows)

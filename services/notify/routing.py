"""Who gets what, written down: events consumed from the bus, deadline reminders and daily digests
become delivery rows (or digest items) in the transaction that decides them, before any send."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
from collections.abc import Sequence
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any
from uuid import UUID
from zoneinfo import ZoneInfo

from sqlalchemy.ext.asyncio import AsyncConnection

from contracts import Envelope, ancestors
from contracts import events as ev
from contracts.events import CHINA
from cso.consumer import Rejected
from cso.service import Runtime
from services.targets.domain.catalogue import load_catalogue

from . import store
from .config import NotifyConfig
from .domain import (
    DIGEST,
    REMINDER,
    SUBSCRIBABLE,
    DigestLine,
    Message,
    Notice,
    ReminderTarget,
    TargetInfo,
    digest_day,
    digest_event_id,
    digest_flush_id,
    due_offset,
    matches,
    region_path,
    reminder_event_id,
    reminder_matches,
    render,
    render_digest,
)
from .sender import QUEUE_DEPTH, Sender

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Clock:
    """The time notify goes by for digests and reminders; tests and what-if runs set `fixed`.
    (Retry backoff and leases go by the database's clock: they are about seconds, not days.)"""

    fixed: datetime | None = None

    def now(self) -> datetime:
        return self.fixed if self.fixed is not None else datetime.now(timezone.utc)

    def today(self) -> date:
        """Deadlines are civil dates in China."""
        return self.now().astimezone(CHINA).date()


@dataclasses.dataclass(frozen=True)
class Catalogue:
    """What notify reads from the target catalogue file: titles, comparisons and deadlines."""

    targets: dict[str, TargetInfo]
    deadlines: list[ReminderTarget]

    @classmethod
    def load(cls, path: Path) -> Catalogue:
        targets: dict[str, TargetInfo] = {}
        deadlines: list[ReminderTarget] = []
        for spec in load_catalogue(path):
            targets[spec.id] = TargetInfo(title=spec.title, comparison=spec.comparison)
            if spec.retired:
                continue
            if spec.yearly and spec.yearly_from is not None and spec.yearly_until is not None:
                dues = [(f"{spec.id}/{y}", min(date(y, 12, 31), spec.deadline))
                        for y in range(spec.yearly_from, spec.yearly_until + 1)]
            else:
                dues = [(spec.id, spec.deadline)]
            deadlines += [ReminderTarget(target_id=ident, title=spec.title, metric=spec.figure,
                                         threshold=spec.threshold, comparison=spec.comparison, deadline=due,
                                         scope_region=spec.scope_region, regions=spec.regions,
                                         scope_tier=spec.scope_tier) for ident, due in dues]
        return cls(targets, deadlines)

    def target(self, target_id: str) -> TargetInfo | None:
        # An instance id is "<spec>@<region>[/<year>]".
        return self.targets.get(target_id.split("@", 1)[0])


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


class EventsHandler:
    """Consumes targets, registry, training and divisions events (one handler for every stream)."""

    def __init__(self, clock: Clock, catalogue: Catalogue, sender: Sender) -> None:
        self.clock, self.catalogue, self.sender = clock, catalogue, sender

    async def apply(self, conn: AsyncConnection, events: Sequence[Envelope[Any]]) -> dict[UUID, Rejected]:
        for envelope in events:
            if isinstance(envelope.payload, ev.DivisionsImported):
                await store.upsert_divisions(conn, envelope.payload)
        relevant = [e for e in events if e.type in SUBSCRIBABLE]
        if not relevant:
            return {}
        subscribers = await store.subscribers_for(conn, {e.type for e in relevant})
        if not subscribers:
            return {}
        names = await store.names(conn, {a for e in relevant for a in ancestors(e.region)})
        queued = 0
        for envelope in relevant:
            payload = envelope.payload
            status = payload.status.value if isinstance(payload, ev.TargetStatusChanged) else None
            reached = [s for s in subscribers
                       if matches(s.rule, envelope.type, envelope.region, envelope.recorded_at, status)]
            if not reached:
                continue
            target = self.catalogue.target(payload.target_id) \
                if isinstance(payload, ev.TargetStatusChanged) else None
            notice = Notice(event_id=envelope.event_id, kind=envelope.type, region=envelope.region,
                            occurred_at=envelope.occurred_at, payload=ev.payload_fields(payload), target=target)
            queued += await route(conn, notice, reached, names, self.clock.now())
        if queued:
            # The batch commits right after this returns: wake the sender just after that (it also
            # polls, so a slow commit costs at most one poll interval).
            asyncio.get_running_loop().call_later(0.05, self.sender.wake)
        return {}


class Scheduler:
    """Reminders before catalogue deadlines, digests at each subscriber's local time, and the
    queue depth gauge. Safe with replicas: each reminder and each digest is claimed by a unique key."""

    def __init__(self, runtime: Runtime, config: NotifyConfig, clock: Clock, catalogue: Catalogue,
                 sender: Sender) -> None:
        self.runtime, self.config, self.clock = runtime, config, clock
        self.catalogue, self.sender = catalogue, sender
        self.reminded: set[tuple[str, date, int]] = set()
        self.digested: set[tuple[UUID, date]] = set()

    async def run(self) -> None:
        async with self.runtime.engine.connect() as conn:
            self.reminded = await store.done_reminders(conn)
        while True:
            try:
                await self.step()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("notify: reminders or digests failed; retrying")
            await asyncio.sleep(self.config.schedule_seconds)

    async def step(self) -> None:
        queued = await self.reminders() + await self.digests()
        if queued:
            self.sender.wake()
        async with self.runtime.engine.connect() as conn:
            QUEUE_DEPTH.set(await store.queue_depth(conn))

    async def reminders(self) -> int:
        today = self.clock.today()
        due = []
        for target in self.catalogue.deadlines:
            offset = due_offset(target.deadline, today)
            if offset is not None and (target.target_id, target.deadline, offset) not in self.reminded:
                due.append((target, offset))
        if not due:
            return 0
        queued = 0
        now = self.clock.now()
        async with self.runtime.engine.begin() as conn:
            subscribers = await store.subscribers_for(conn, [REMINDER])
            names = await store.names(conn, {a for t, _ in due for a in ancestors(t.scope_region)})
            for target, offset in due:
                event_id = reminder_event_id(target.target_id, target.deadline, offset)
                if not await store.start_reminder(conn, target.target_id, target.deadline, offset, event_id):
                    continue  # made before (by this replica or another)
                reached = [s for s in subscribers if reminder_matches(s.rule, target)]
                notice = Notice(event_id=event_id, kind=REMINDER, region=target.scope_region, occurred_at=now,
                                payload={"target_id": target.target_id, "title": target.title,
                                         "metric": target.metric, "threshold": target.threshold,
                                         "comparison": target.comparison,
                                         "deadline": target.deadline.isoformat(), "offset_days": offset,
                                         "regions": list(target.regions or ()),
                                         "scope_tier": target.scope_tier})
                queued += await route(conn, notice, reached, names, now)
                await store.count_reminder(conn, event_id, len(reached))
        self.reminded |= {(t.target_id, t.deadline, o) for t, o in due}
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

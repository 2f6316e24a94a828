"""notify's SQL: its own schema, nothing else.

The tables below (SQLAlchemy Core, one MetaData) are the one description of notify's schema: the
queries are written against them (raw SQL where it is clearer, naming them), and
tests/integration/test_schema.py checks them against what the migrations
(services/notify/migrations) make. A change of the schema is a new migration and the same change
here.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any
from uuid import UUID

from sqlalchemy import (
    Boolean,
    Column,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    Time,
    UniqueConstraint,
    Uuid,
    delete,
    func,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, insert
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts.events import DivisionsImported
from cso import bulk
from cso.tables import runtime_tables

from .domain import Channel, Deadline, Language, Message, Notice, Rule, delivery_id

SCHEMA = "notify"
METADATA = MetaData(schema=SCHEMA)
runtime_tables(METADATA, SCHEMA)        # outbox (outbox_relay, outbox_stream), inbox, consumer_position, bus_stream


def _at(name: str, nullable: bool = False) -> Column[Any]:
    return Column(name, DateTime(timezone=True), nullable=nullable, server_default=func.now())


# Names of every division notify has heard of, to name a region by its full path.
division = Table(
    "division", METADATA,
    Column("code", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("edition", Text, nullable=False),
    _at("updated_at"))
subscription = Table(
    "subscription", METADATA,
    Column("id", Uuid, primary_key=True),
    Column("recipient", Text, nullable=False),
    Column("language", Text, nullable=False),
    Column("email", Text),
    Column("webhook_url", Text),
    Column("webhook_secret", Text),
    Column("inbox", Boolean, nullable=False, server_default=text("false")),
    Column("events", ARRAY(Text), nullable=False),
    Column("statuses", ARRAY(Text)),
    Column("region", Text, nullable=False),
    Column("include_subregions", Boolean, nullable=False, server_default=text("false")),
    Column("frequency", Text, nullable=False),
    Column("digest_time", Time),
    Column("timezone", Text, nullable=False),
    _at("created_at"), _at("updated_at"),
    Column("deleted_at", DateTime(timezone=True)),
    # Days before a deadline its reminders come (domain.DEFAULT_REMINDER_DAYS).
    Column("reminder_days", ARRAY(Integer), nullable=False, server_default=text("'{30,7}'")))
Index("subscription_recipient", subscription.c.recipient, postgresql_where=subscription.c.deleted_at.is_(None))
Index("subscription_events", subscription.c.events, postgresql_using="gin",
      postgresql_where=subscription.c.deleted_at.is_(None))
# One row per (event, subscription, channel), written with the event's consumption and before any
# send: the unique key is what makes a duplicate event send nothing twice.
delivery = Table(
    "delivery", METADATA,
    Column("id", Uuid, primary_key=True),
    Column("event_id", Uuid, nullable=False),
    Column("subscription_id", Uuid, ForeignKey(subscription.c.id), nullable=False),
    Column("channel", Text, nullable=False),
    Column("kind", Text, nullable=False),
    Column("region", Text, nullable=False),
    Column("recipient", Text, nullable=False),
    Column("subject", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("data", JSONB, nullable=False),
    Column("status", Text, nullable=False, server_default=text("'pending'")),
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    _at("next_attempt_at"),
    Column("lease_until", DateTime(timezone=True)),
    Column("claim_token", Uuid),
    Column("last_error", Text),
    _at("created_at"),
    Column("sent_at", DateTime(timezone=True)),
    Column("failed_at", DateTime(timezone=True)),
    UniqueConstraint("event_id", "subscription_id", "channel"))
Index("delivery_due", delivery.c.next_attempt_at, postgresql_where=delivery.c.status == "pending")
Index("delivery_subscription", delivery.c.subscription_id, delivery.c.created_at)
inbox_message = Table(
    "inbox_message", METADATA,
    Column("id", Uuid, ForeignKey(delivery.c.id), primary_key=True),
    Column("recipient", Text, nullable=False),
    Column("subscription_id", Uuid, nullable=False),
    Column("event_id", Uuid, nullable=False),
    Column("kind", Text, nullable=False),
    Column("region", Text, nullable=False),
    Column("subject", Text, nullable=False),
    Column("body", Text, nullable=False),
    Column("data", JSONB, nullable=False),
    _at("created_at"),
    Column("read_at", DateTime(timezone=True)))
Index("inbox_recipient", inbox_message.c.recipient, inbox_message.c.created_at.desc(), inbox_message.c.id)
Index("inbox_unread", inbox_message.c.recipient, inbox_message.c.created_at.desc(),
      postgresql_where=inbox_message.c.read_at.is_(None))
# What a digest subscription heard, waiting for its next digest (digest_event_id NULL).
digest_item = Table(
    "digest_item", METADATA,
    Column("subscription_id", Uuid, ForeignKey(subscription.c.id), primary_key=True),
    Column("event_id", Uuid, primary_key=True),
    Column("kind", Text, nullable=False),
    Column("region", Text, nullable=False),
    Column("headline", Text, nullable=False),
    Column("recorded_at", DateTime(timezone=True), nullable=False),
    Column("digest_event_id", Uuid))
Index("digest_item_open", digest_item.c.subscription_id, digest_item.c.recorded_at,
      postgresql_where=digest_item.c.digest_event_id.is_(None))
# One digest per subscription and local day.
digest = Table(
    "digest", METADATA,
    Column("subscription_id", Uuid, ForeignKey(subscription.c.id), primary_key=True),
    Column("day", Date, primary_key=True),
    Column("event_id", Uuid, nullable=False, unique=True),
    Column("items", Integer, nullable=False, server_default=text("0")),
    _at("created_at"))
# The deadlines notify has learned from targets' events (the latest event about each wins).
deadline = Table(
    "deadline", METADATA,
    Column("key", Text, primary_key=True),
    Column("kind", Text, nullable=False),
    Column("region", Text, nullable=False),
    Column("deadline", Date, nullable=False),
    Column("title", Text, nullable=False),
    Column("details", JSONB, nullable=False),
    Column("as_of", DateTime(timezone=True), nullable=False),
    Column("event_id", Uuid, nullable=False),
    _at("updated_at"))
Index("deadline_due", deadline.c.deadline)
# Reminders made: one per subscription, deadline and lead time.
reminder = Table(
    "reminder", METADATA,
    Column("subscription_id", Uuid, ForeignKey(subscription.c.id), primary_key=True),
    Column("deadline_key", Text, primary_key=True),
    Column("deadline", Date, primary_key=True),
    Column("lead_days", Integer, primary_key=True),
    Column("event_id", Uuid, nullable=False),
    _at("created_at"))


# --- divisions --------------------------------------------------------------------------------

async def upsert_divisions(conn: AsyncConnection, d: DivisionsImported) -> None:
    rows = [(d.province.code, d.province.name), (d.city.code, d.city.name), (d.county.code, d.county.name)]
    rows += [(t.code, t.name) for t in d.townships] + [(c.code, c.name) for c in d.communities]
    await conn.execute(text(
        f"INSERT INTO {SCHEMA}.division (code, name, edition) "
        "SELECT * FROM unnest(CAST(:c AS text[]), CAST(:n AS text[]), CAST(:e AS text[])) "
        "ON CONFLICT (code) DO UPDATE SET name = excluded.name, edition = excluded.edition, "
        "updated_at = now() WHERE division.edition <= excluded.edition"),
        {"c": [r[0] for r in rows], "n": [r[1] for r in rows], "e": [d.edition] * len(rows)})


async def names(conn: AsyncConnection, codes: Iterable[str]) -> dict[str, str]:
    wanted = sorted(set(codes))
    if not wanted:
        return {}
    rows = (await conn.execute(select(division.c.code, division.c.name).where(division.c.code.in_(wanted)))).all()
    return {r.code: r.name for r in rows}


# --- subscriptions ----------------------------------------------------------------------------

@dataclass(frozen=True)
class Subscriber:
    """A stored subscription: its rule, and how to reach it."""

    rule: Rule
    recipient: str
    language: Language
    channels: tuple[Channel, ...]
    frequency: str
    timezone: str
    digest_time: Any


_SUB_COLUMNS = ("id, recipient, language, email, webhook_url, webhook_secret, inbox, events, statuses, "
                "region, include_subregions, frequency, digest_time, timezone, reminder_days, created_at, "
                "updated_at")


def _subscriber(row: Any) -> Subscriber:
    channels: list[Channel] = []
    if row.email:
        channels.append("email")
    if row.webhook_url:
        channels.append("webhook")
    if row.inbox:
        channels.append("inbox")
    rule = Rule(id=row.id, region=row.region, include_subregions=row.include_subregions,
                events=frozenset(row.events),
                statuses=frozenset(row.statuses) if row.statuses is not None else None,
                created_at=row.created_at, reminder_days=tuple(row.reminder_days))
    return Subscriber(rule=rule, recipient=row.recipient, language=row.language, channels=tuple(channels),
                      frequency=row.frequency, timezone=row.timezone, digest_time=row.digest_time)


async def subscribers_for(conn: AsyncConnection, kinds: Iterable[str]) -> list[Subscriber]:
    """Every live subscription naming one of these event kinds (matched in Python after)."""
    rows = (await conn.execute(text(
        f"SELECT {_SUB_COLUMNS} FROM {SCHEMA}.subscription "
        "WHERE deleted_at IS NULL AND events && CAST(:k AS text[]) ORDER BY id"),
        {"k": sorted(set(kinds))})).all()
    return [_subscriber(r) for r in rows]


async def follow_division_change(conn: AsyncConnection, code: str, successor: str) -> int:
    """Subscriptions to a region merged or recoded into `successor` (DivisionChanged) are to the
    successor now; how many moved (a second application finds none at the old code)."""
    moved = await conn.execute(subscription.update().where(
        subscription.c.region == code, subscription.c.deleted_at.is_(None))
        .values(region=successor, updated_at=func.now()))
    return moved.rowcount or 0


async def subscribed_regions(conn: AsyncConnection) -> list[tuple[str, str, bool]]:
    """(event kind, region, include_subregions) of every live subscription, each once: what the
    consumer's screen (domain.Screen) decides on."""
    rows = (await conn.execute(text(
        f"SELECT DISTINCT kind, region, include_subregions FROM {SCHEMA}.subscription, "
        "unnest(events) AS kind WHERE deleted_at IS NULL"))).all()
    return [(str(r[0]), str(r[1]), bool(r[2])) for r in rows]


async def digest_subscribers(conn: AsyncConnection) -> list[Subscriber]:
    """Digest subscriptions, and any other that still holds undigested items (it switched)."""
    rows = (await conn.execute(text(
        f"SELECT {_SUB_COLUMNS} FROM {SCHEMA}.subscription s WHERE deleted_at IS NULL "
        f"AND (frequency = 'digest' OR EXISTS (SELECT 1 FROM {SCHEMA}.digest_item i "
        "WHERE i.subscription_id = s.id AND i.digest_event_id IS NULL)) ORDER BY id"))).all()
    return [_subscriber(r) for r in rows]


async def insert_subscription(conn: AsyncConnection, values: dict[str, Any]) -> dict[str, Any]:
    row = (await conn.execute(text(
        f"INSERT INTO {SCHEMA}.subscription (id, recipient, language, email, webhook_url, webhook_secret, "
        "inbox, events, statuses, region, include_subregions, frequency, digest_time, timezone, reminder_days) "
        "VALUES (:id, :recipient, :language, :email, :webhook_url, :webhook_secret, :inbox, :events, "
        ":statuses, :region, :include_subregions, :frequency, :digest_time, :timezone, :reminder_days) "
        f"RETURNING {_SUB_COLUMNS}"),
        values)).mappings().one()
    return dict(row)


async def update_subscription(conn: AsyncConnection, values: dict[str, Any]) -> dict[str, Any] | None:
    row = (await conn.execute(text(
        f"UPDATE {SCHEMA}.subscription SET recipient = :recipient, language = :language, email = :email, "
        "webhook_url = :webhook_url, webhook_secret = :webhook_secret, inbox = :inbox, events = :events, "
        "statuses = :statuses, region = :region, include_subregions = :include_subregions, "
        "frequency = :frequency, digest_time = :digest_time, timezone = :timezone, "
        "reminder_days = :reminder_days, updated_at = now() "
        f"WHERE id = :id AND deleted_at IS NULL RETURNING {_SUB_COLUMNS}"), values)).mappings().first()
    return dict(row) if row else None


async def load_subscription(conn: AsyncConnection, sub_id: UUID, lock: bool = False) -> dict[str, Any] | None:
    row = (await conn.execute(text(
        f"SELECT {_SUB_COLUMNS} FROM {SCHEMA}.subscription WHERE id = :id AND deleted_at IS NULL"
        + (" FOR UPDATE" if lock else "")), {"id": sub_id})).mappings().first()
    return dict(row) if row else None


async def list_subscriptions(conn: AsyncConnection, recipient: str | None, region: str | None,
                             limit: int, after: UUID | None, under: str | None = None) -> list[dict[str, Any]]:
    """`region`: exactly that region; `under`: within that region prefix (what the caller may see)."""
    rows = (await conn.execute(text(
        f"SELECT {_SUB_COLUMNS} FROM {SCHEMA}.subscription WHERE deleted_at IS NULL "
        "AND (CAST(:recipient AS text) IS NULL OR recipient = :recipient) "
        "AND (CAST(:region AS text) IS NULL OR region = :region) "
        "AND (CAST(:under AS text) IS NULL OR starts_with(region, :under)) "
        "AND (CAST(:after AS uuid) IS NULL OR id > :after) ORDER BY id LIMIT :limit"),
        {"recipient": recipient, "region": region, "under": under, "after": after,
         "limit": limit})).mappings().all()
    return [dict(r) for r in rows]


async def delete_subscription(conn: AsyncConnection, sub_id: UUID) -> int | None:
    """Soft delete (deliveries keep their history); its pending deliveries are cancelled."""
    row = (await conn.execute(text(
        f"UPDATE {SCHEMA}.subscription SET deleted_at = now() WHERE id = :id AND deleted_at IS NULL "
        "RETURNING id"), {"id": sub_id})).first()
    if row is None:
        return None
    result = await conn.execute(text(
        f"UPDATE {SCHEMA}.delivery SET status = 'cancelled', lease_until = NULL, "
        "last_error = 'subscription deleted' WHERE subscription_id = :id AND status = 'pending'"),
        {"id": sub_id})
    return int(result.rowcount)


# --- deadlines and reminders ----------------------------------------------------------------

async def save_deadlines(conn: AsyncConnection, deadlines: Sequence[Deadline]) -> None:
    """What each event says of its deadline; a fact older than the one kept (events arrive out of
    order) changes nothing."""
    if not deadlines:
        return
    new = insert(deadline).values([
        {"key": d.key, "kind": d.kind, "region": d.region, "deadline": d.deadline, "title": d.title,
         "details": json.loads(json.dumps(dict(d.details), default=str)), "as_of": d.as_of,
         "event_id": d.event_id} for d in {d.key: d for d in sorted(deadlines, key=lambda d: d.as_of)}.values()])
    await conn.execute(new.on_conflict_do_update(
        index_elements=[deadline.c.key],
        set_={c: new.excluded[c] for c in ("kind", "region", "deadline", "title", "details", "as_of", "event_id")}
        | {"updated_at": func.now()},
        where=deadline.c.as_of <= new.excluded.as_of))


async def drop_deadlines(conn: AsyncConnection, keys: Sequence[str]) -> None:
    """Deadlines met for good (an accepted task): nothing more to remind of."""
    if keys:
        await conn.execute(delete(deadline).where(deadline.c.key.in_(list(keys))))


@dataclass(frozen=True)
class Approaching:
    """A deadline within a subscription's longest lead time, and the leads it was reminded at."""

    subscriber: Subscriber
    deadline: Deadline
    reminded: frozenset[int]


async def approaching(conn: AsyncConnection, today: date) -> list[Approaching]:
    """Each live subscription naming a deadline's kind, in its region (or above it, with
    include_subregions), whose deadline is today or at most the subscription's longest lead away."""
    columns = ", ".join(f"s.{c.strip()}" for c in _SUB_COLUMNS.split(","))
    rows = (await conn.execute(text(
        f"SELECT {columns}, d.key AS d_key, d.kind AS d_kind, d.region AS d_region, d.deadline AS d_deadline, "
        "d.title AS d_title, d.details AS d_details, d.as_of AS d_as_of, d.event_id AS d_event_id, "
        f"ARRAY(SELECT r.lead_days FROM {SCHEMA}.reminder r WHERE r.subscription_id = s.id "
        "AND r.deadline_key = d.key AND r.deadline = d.deadline) AS reminded "
        f"FROM {SCHEMA}.deadline d JOIN {SCHEMA}.subscription s ON s.deleted_at IS NULL "
        "AND d.kind = ANY(s.events) AND (s.region = d.region "
        "OR (s.include_subregions AND starts_with(d.region, s.region))) "
        "WHERE d.deadline >= :today "
        "AND d.deadline - CAST(:today AS date) <= (SELECT max(l) FROM unnest(s.reminder_days) l) "
        "ORDER BY d.key, s.id"), {"today": today})).all()
    return [Approaching(_subscriber(r), Deadline(
        key=r.d_key, kind=r.d_kind, region=r.d_region, deadline=r.d_deadline, title=r.d_title,
        details=r.d_details, as_of=r.d_as_of, event_id=r.d_event_id), frozenset(r.reminded)) for r in rows]


async def claim_reminders(conn: AsyncConnection, rows: Sequence[tuple[UUID, str, date, int, UUID]]
                          ) -> set[tuple[UUID, str, date, int]]:
    """Record reminders (subscription, deadline key, deadline, lead, event id) as made; those
    another replica made first are left out of the answer."""
    if not rows:
        return set()
    claimed = (await conn.execute(text(
        f"INSERT INTO {SCHEMA}.reminder (subscription_id, deadline_key, deadline, lead_days, event_id) "
        "SELECT * FROM unnest(CAST(:s AS uuid[]), CAST(:k AS text[]), CAST(:d AS date[]), "
        "CAST(:l AS int[]), CAST(:e AS uuid[])) ON CONFLICT DO NOTHING "
        "RETURNING subscription_id, deadline_key, deadline, lead_days"),
        {"s": [r[0] for r in rows], "k": [r[1] for r in rows], "d": [r[2] for r in rows],
         "l": [r[3] for r in rows], "e": [r[4] for r in rows]})).all()
    return {(r[0], r[1], r[2], r[3]) for r in claimed}


# --- routing: deliveries and digest items ------------------------------------------------------

def webhook_data(notice: Notice, message: Message, path: str) -> dict[str, Any]:
    """The structured part of a notification (the webhook body carries it, the inbox keeps it)."""
    return {"event_id": str(notice.event_id), "kind": notice.kind, "region": notice.region,
            "region_path": path, "occurred_at": notice.occurred_at.isoformat(),
            "subject": message.subject, "text": message.text,
            "payload": json.loads(json.dumps(dict(notice.payload), default=str))}


_DELIVERY = ["id", "event_id", "subscription_id", "channel", "kind", "region", "recipient", "subject", "body",
             "data"]
_DIGEST_ITEM = ["subscription_id", "event_id", "kind", "region", "headline", "recorded_at"]


async def enqueue(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> int:
    """Insert deliveries, one statement over arrays for all of a notice's subscribers; one that
    exists already (same event, subscription, channel) is skipped."""
    # `data` travels as JSON text and becomes jsonb row by row (bulk.insert).
    return await bulk.insert(conn, delivery, rows, _DELIVERY,
                             on_conflict="(event_id, subscription_id, channel) DO NOTHING")


def delivery_rows(sub: Subscriber, notice: Notice, message: Message, path: str) -> list[dict[str, Any]]:
    data = json.dumps(webhook_data(notice, message, path), ensure_ascii=False)
    return [{"id": delivery_id(notice.event_id, sub.rule.id, channel), "event_id": notice.event_id,
             "subscription_id": sub.rule.id, "channel": channel, "kind": notice.kind,
             "region": notice.region, "recipient": sub.recipient, "subject": message.subject,
             "body": message.text, "data": data} for channel in sub.channels]


async def add_digest_items(conn: AsyncConnection, rows: Sequence[dict[str, Any]]) -> None:
    """A notice's digest items, one statement over arrays; one there already is skipped."""
    await bulk.insert(conn, digest_item, rows, _DIGEST_ITEM, on_conflict="(subscription_id, event_id) DO NOTHING")


async def start_digest(conn: AsyncConnection, sub_id: UUID, day: date, event_id: UUID) -> bool:
    """Claim the (subscription, day) digest; False when it was made already (here or elsewhere)."""
    row = (await conn.execute(insert(digest).values(subscription_id=sub_id, day=day, event_id=event_id)
                              .on_conflict_do_nothing().returning(digest.c.day))).first()
    return row is not None


async def take_digest_items(conn: AsyncConnection, sub_id: UUID, digest_event: UUID, until: datetime
                            ) -> list[Any]:
    rows = (await conn.execute(text(
        f"UPDATE {SCHEMA}.digest_item SET digest_event_id = :e WHERE subscription_id = :s "
        "AND digest_event_id IS NULL AND recorded_at <= :until "
        "RETURNING event_id, kind, region, headline, recorded_at"),
        {"e": digest_event, "s": sub_id, "until": until})).all()
    await conn.execute(text(f"UPDATE {SCHEMA}.digest SET items = :n WHERE event_id = :e"),
                       {"n": len(rows), "e": digest_event})
    return list(rows)


# --- the send queue ---------------------------------------------------------------------------

_CLAIMED = ("d.id, d.event_id, d.subscription_id, d.channel, d.kind, d.region, d.recipient, d.subject, "
            "d.body, d.data, d.attempts, d.claim_token, s.email, s.webhook_url, s.webhook_secret, "
            "s.inbox, s.deleted_at")


async def claim(conn: AsyncConnection, n: int, lease_seconds: float, token: UUID) -> list[Any]:
    """Lease up to n due deliveries (SKIP LOCKED: replicas never wait on, nor take, each other's);
    an expired lease (its sender died) makes a delivery due again. Counts the attempt."""
    return list((await conn.execute(text(
        f"WITH picked AS (SELECT id FROM {SCHEMA}.delivery WHERE status = 'pending' "
        "AND next_attempt_at <= now() AND (lease_until IS NULL OR lease_until < now()) "
        "ORDER BY next_attempt_at, id LIMIT :n FOR UPDATE SKIP LOCKED) "
        f"UPDATE {SCHEMA}.delivery d SET lease_until = now() + CAST(:lease AS double precision) "
        "* interval '1 second', claim_token = :token, attempts = d.attempts + 1 "
        f"FROM picked, {SCHEMA}.subscription s WHERE d.id = picked.id AND s.id = d.subscription_id "
        f"RETURNING {_CLAIMED}"), {"n": n, "lease": lease_seconds, "token": token})).all())


async def mark_sent(conn: AsyncConnection, delivery: UUID, token: UUID) -> Any:
    """Sent, if this sender still holds the lease (else another took it over: it reports)."""
    return (await conn.execute(text(
        f"UPDATE {SCHEMA}.delivery SET status = 'sent', sent_at = now(), lease_until = NULL, "
        "last_error = NULL WHERE id = :id AND claim_token = :t AND status = 'pending' "
        "RETURNING id, event_id, subscription_id, channel, region, attempts"),
        {"id": delivery, "t": token})).first()


async def mark_failed(conn: AsyncConnection, delivery: UUID, token: UUID, error: str) -> Any:
    return (await conn.execute(text(
        f"UPDATE {SCHEMA}.delivery SET status = 'failed', failed_at = now(), lease_until = NULL, "
        "last_error = :e WHERE id = :id AND claim_token = :t AND status = 'pending' "
        "RETURNING id, event_id, subscription_id, channel, region, attempts"),
        {"id": delivery, "t": token, "e": error[:4000]})).first()


async def mark_cancelled(conn: AsyncConnection, row_id: UUID, token: UUID, reason: str) -> None:
    d = delivery.c
    await conn.execute(update(delivery).where(d.id == row_id, d.claim_token == token, d.status == "pending")
                       .values(status="cancelled", lease_until=None, last_error=reason))


async def schedule_retry(conn: AsyncConnection, delivery: UUID, token: UUID, error: str,
                         delay_seconds: float) -> bool:
    row = (await conn.execute(text(
        f"UPDATE {SCHEMA}.delivery SET lease_until = NULL, last_error = :e, next_attempt_at = now() + "
        "CAST(:delay AS double precision) * interval '1 second' "
        "WHERE id = :id AND claim_token = :t AND status = 'pending' RETURNING id"),
        {"id": delivery, "t": token, "e": error[:4000], "delay": delay_seconds})).first()
    return row is not None


async def put_in_inbox(conn: AsyncConnection, d: Any) -> None:
    await conn.execute(text(
        f"INSERT INTO {SCHEMA}.inbox_message (id, recipient, subscription_id, event_id, kind, region, "
        "subject, body, data) VALUES (:id, :recipient, :sub, :event, :kind, :region, :subject, :body, "
        "CAST(:data AS jsonb)) ON CONFLICT (id) DO NOTHING"),
        {"id": d.id, "recipient": d.recipient, "sub": d.subscription_id, "event": d.event_id,
         "kind": d.kind, "region": d.region, "subject": d.subject, "body": d.body,
         "data": json.dumps(d.data, ensure_ascii=False)})


async def queue_depth(conn: AsyncConnection) -> int:
    return int((await conn.execute(select(func.count()).select_from(delivery)
                                   .where(delivery.c.status == "pending"))).scalar_one())


# --- read side --------------------------------------------------------------------------------

async def inbox(conn: AsyncConnection, recipient: str, unread: bool, limit: int,
                before: tuple[datetime, UUID] | None = None) -> dict[str, Any]:
    """One page of a recipient's messages, newest first: by created_at descending, then id (index
    inbox_recipient). `before`: the (created_at, id) of the previous page's last message, whose
    successors in that order this page holds; `next`: the same of this page's last message, None
    on the last page. The order is total and a message's key never changes, so paging on reads
    each message once, and one recorded meanwhile (created_at: its transaction's start, after the
    pages already read) comes before the cursor, for a read from the top."""
    m = inbox_message.c
    query = (select(m.id, m.subscription_id, m.event_id, m.kind, m.region, m.subject, m.body, m.data,
                    m.created_at, m.read_at)
             .where(m.recipient == recipient).order_by(m.created_at.desc(), m.id).limit(limit + 1))
    if unread:
        query = query.where(m.read_at.is_(None))
    if before is not None:
        at, last = before
        # Strictly after (at, last) in (created_at desc, id asc); `created_at <= at` alone bounds
        # the index scan, the rest drops the cursor's own timestamp's ids up to and with its own.
        query = query.where(m.created_at <= at, or_(m.created_at < at, m.id > last))
    # One more than asked: whether a next page exists, without a second query.
    rows = (await conn.execute(query)).mappings().all()
    page = rows[:limit]
    count = (await conn.execute(select(func.count()).select_from(inbox_message)
                                .where(m.recipient == recipient, m.read_at.is_(None)))).scalar_one()
    return {"recipient": recipient, "unread": int(count), "items": [dict(r) for r in page],
            "next": (page[-1]["created_at"], page[-1]["id"]) if len(rows) > limit else None}


async def mark_read(conn: AsyncConnection, recipient: str, message_id: UUID) -> Any:
    m = inbox_message.c
    return (await conn.execute(update(inbox_message).where(m.id == message_id, m.recipient == recipient)
                               .values(read_at=func.coalesce(m.read_at, func.now()))
                               .returning(m.id, m.read_at))).first()


async def deliveries(conn: AsyncConnection, subscription_id: UUID | None, event_id: UUID | None,
                     status: str | None, limit: int, recipient: str | None = None,
                     under: str | None = None) -> list[dict[str, Any]]:
    """`recipient`: only theirs; `under`: only of subscriptions within that region prefix."""
    rows = (await conn.execute(text(
        f"SELECT id, event_id, subscription_id, channel, kind, region, recipient, subject, status, "
        f"attempts, next_attempt_at, last_error, created_at, sent_at, failed_at FROM {SCHEMA}.delivery d "
        "WHERE (CAST(:sub AS uuid) IS NULL OR subscription_id = :sub) "
        "AND (CAST(:event AS uuid) IS NULL OR event_id = :event) "
        "AND (CAST(:recipient AS text) IS NULL OR recipient = :recipient) "
        f"AND (CAST(:under AS text) IS NULL OR EXISTS (SELECT 1 FROM {SCHEMA}.subscription s "
        "WHERE s.id = d.subscription_id AND starts_with(s.region, :under))) "
        "AND (CAST(:status AS text) IS NULL OR status = :status) ORDER BY created_at, id LIMIT :limit"),
        {"sub": subscription_id, "event": event_id, "status": status, "recipient": recipient, "under": under,
         "limit": limit})).mappings().all()
    return [dict(r) for r in rows]

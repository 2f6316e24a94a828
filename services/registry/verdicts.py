"""A receipt for every verdict on intake, to the publisher's own subject.

Every message a publisher sends on `cso.intake.<source>.…` gets one receipt on
`cso.receipts.<source>.<verdict>` (contracts/receipts.py, IntakeReceipt): `accepted` (the record's
id and region), `refused` (field, reason, a stable code), `duplicate` (the event_id was taken
before: the first verdict, which stands) or `waiting` (for a predecessor or the county's divisions,
until when), and a fact that waited gets `accepted` or `refused` later.

Receipts are staged in registry's `receipt_outbox` in the transaction of the verdict, so a crash
loses neither or both; a relay of their own publishes them to CSO_RECEIPTS with their receipt_id as
Nats-Msg-Id.
Receipt ids are derived from what they answer (the event_id and verdict, or the message's stream
sequence), so a verdict staged twice (a redelivery after a crash) is one receipt.

A refused event_id is spent (the contract: "mint a new id"): it stays in the inbox, and the same id
sent again is answered `duplicate` with the refusal. JetStream drops a resend within two minutes
by its Nats-Msg-Id anyway, so a corrected fact under the same id could not be judged again reliably.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from nats.aio.msg import Msg
from sqlalchemy.ext.asyncio import AsyncConnection

from contracts import Envelope, Topology
from contracts.deadletter import MAX_DATA_CHARACTERS, event_id_of
from contracts.envelope import event_field
from contracts.receipts import FirstVerdict, IntakeReceipt, RefusalCode, WaitsFor
from contracts.subjects import is_source_token
from cso import outbox

from . import store
from .domain import NotYet, Rejected
from .receipts import note_refusals
from .store import SCHEMA
from .waiting import Clock, Settled, Waiter

NAMESPACE = UUID("6f1d0c7e-3b7a-4d53-9f0e-2a4c8b1e5d90")   # receipt ids: uuid5 of what they answer
REASON_CHARS = 1000
# Receipts have an outbox of their own (migration 0007) and a relay of their own (app.py): the
# `outbox` table stays the log of registry's events.
OUTBOX = store.receipt_outbox.name

ACTIONS = {
    "accepted": "nothing: it is in registry's record",
    "refused": "fix the fact and publish it under a NEW event_id: this one is spent",
    "duplicate": "nothing: this event_id was taken before and its first verdict stands",
    "waiting": "nothing: registry applies it when what it waits for arrives, or refuses it "
               "(waited_too_long) at `until`",
}


def receipt_id(*parts: object) -> UUID:
    return uuid.uuid5(NAMESPACE, "/".join(str(p) for p in parts))


def in_event(rejected: Rejected) -> Rejected:
    """The refusal naming its field by the path in the event (contracts.envelope.event_field)."""
    if isinstance(rejected, NotYet):
        return NotYet(event_field(rejected.field), rejected.message, waits_for=rejected.waits_for)
    return type(rejected)(event_field(rejected.field), rejected.message, code=rejected.code)


def code_of(rejected: Rejected) -> RefusalCode:
    try:
        return RefusalCode(rejected.code)
    except ValueError:
        return RefusalCode.RULE


def waits_for(reason: NotYet) -> WaitsFor:
    kind = "divisions" if reason.waits_for.startswith("county:") else "predecessor"
    return WaitsFor(kind=kind, key=reason.waits_for, field=event_field(reason.field), reason=reason.message)


class Receipts:
    """The receipts of one transaction, staged together."""

    def __init__(self, topology: Topology, now: datetime) -> None:
        self.topology, self.now = topology, now
        self.rows: list[tuple[UUID, str, str, str | None, bytes]] = []

    def add(self, receipt: IntakeReceipt) -> None:
        if not is_source_token(receipt.source):  # an operator's fact (intake version 1): no publisher to tell
            return
        subject = self.topology.receipts_subject(receipt.source, receipt.verdict)
        data = receipt.model_dump(mode="json", exclude_none=True)
        data.setdefault("event_id", None)  # said even when unreadable: the contract has it always
        self.rows.append((receipt.receipt_id, subject, "IntakeReceipt", None,
                          json.dumps(data, ensure_ascii=False).encode()))

    def accepted(self, envelope: Envelope[Any], record_id: str, region: str) -> None:
        self.add(IntakeReceipt(
            receipt_id=receipt_id(envelope.event_id, "accepted"), event_id=envelope.event_id,
            source=envelope.source, verdict="accepted", type=envelope.type, region=region, id=record_id,
            action=ACTIONS["accepted"], decided_at=self.now))

    def refused(self, envelope: Envelope[Any], rejected: Rejected) -> None:
        self.add(IntakeReceipt(
            receipt_id=receipt_id(envelope.event_id, "refused"), event_id=envelope.event_id,
            source=envelope.source, verdict="refused", type=envelope.type, region=envelope.region,
            field=rejected.field, reason=rejected.message[:REASON_CHARS], code=code_of(rejected),
            action=ACTIONS["refused"], decided_at=self.now))

    def waiting(self, waiter: Waiter) -> None:
        envelope = waiter.envelope
        self.add(IntakeReceipt(
            receipt_id=receipt_id(envelope.event_id, "waiting"), event_id=envelope.event_id,
            source=envelope.source, verdict="waiting", type=envelope.type, region=envelope.region,
            reason=waiter.reason.message[:REASON_CHARS], waits_for=waits_for(waiter.reason),
            until=waiter.until, action=ACTIONS["waiting"], decided_at=self.now))

    async def stage(self, conn: AsyncConnection) -> int:
        await outbox.add_messages(conn, SCHEMA, self.rows, table=OUTBOX)
        return len(self.rows)


async def tell(conn: AsyncConnection, topology: Topology, clock: Clock, settled: Settled,
               refused: Sequence[tuple[Envelope[Any], Rejected]] = ()) -> None:
    """Everything one transaction decided, kept and told: refusals noted for the receipts query,
    a receipt each, and a dead letter for each fact refused after it waited (its message was acked
    when it was parked). `refused`: more refusals of the batch (facts that are no registry fact)."""
    now = clock()
    receipts = Receipts(topology, now)
    for envelope, recorded in settled.accepted:
        receipts.accepted(envelope, recorded.aggregate_id, recorded.region)
    all_refused = [(e, in_event(r)) for e, r, _ in settled.refused] + [(e, in_event(r)) for e, r in refused]
    for envelope, rejected in all_refused:
        receipts.refused(envelope, rejected)
    for waiter in settled.waiting:
        receipts.waiting(waiter)
    await note_refusals(conn, [e for e, _ in all_refused], {e.event_id: r for e, r in all_refused})
    await receipts.stage(conn)
    dead = [(e, in_event(r)) for e, r, from_room in settled.refused if from_room]
    if dead:
        await _deadletter_waited(conn, topology, settled, dead, now)


async def _deadletter_waited(conn: AsyncConnection, topology: Topology, settled: Settled,
                             dead: Sequence[tuple[Envelope[Any], Rejected]], now: datetime) -> None:
    """Dead letters for facts refused after waiting, staged like the receipts (the operators' record)."""
    taken = await store.inbox_entries(conn, [e.event_id for e, _ in dead])
    seqs = {event_id: row.stream_seq for event_id, row in taken.items()}
    rows = []
    for envelope, rejected in dead:
        record = {
            "service": "registry", "reason": str(rejected), "event_id": str(envelope.event_id),
            "msg_id": str(envelope.event_id),
            "subject": topology.intake_subject_for(envelope.source, envelope.type, envelope.region),
            "stream": topology.stream("CSO_INTAKE"), "stream_seq": seqs.get(envelope.event_id) or 1,
            "deliveries": 1, "dead_lettered_at": now.isoformat(),
            "waited_since": (w.isoformat() if (w := settled.refused_after.get(envelope.event_id)) else None),
            "data": (data := envelope.model_dump_json())[:MAX_DATA_CHARACTERS],
            "data_bytes": len(data.encode()), "truncated": len(data) > MAX_DATA_CHARACTERS}
        rows.append((receipt_id(envelope.event_id, "deadletter"), topology.deadletter_subject("registry"),
                     "DeadLetter", None, json.dumps(record).encode()))
    await outbox.add_messages(conn, SCHEMA, rows, table=OUTBOX)


class IntakeVerdicts:
    """The consumer's side (cso.consumer.Verdicts): receipts for what the handler never sees."""

    def __init__(self, topology: Topology, clock: Clock) -> None:
        self.topology, self.clock = topology, clock

    async def broken(self, conn: AsyncConnection, broken: Sequence[tuple[Msg, str]]) -> None:
        """A message that breaks its contract: refused (`contract`), to the publisher its subject
        names. Its event_id, when readable and new, is spent like any refused one."""
        receipts = Receipts(self.topology, self.clock())
        spent: list[tuple[dict[str, Any], str, int]] = []   # (the refusal, stream, sequence)
        for msg, reason in broken:
            parsed = self.topology.parse_intake_subject(msg.subject)
            if parsed is None or parsed.source is None:
                continue  # not intake version 2: no publisher to tell (the dead letter goes to the operators)
            field, _, message = reason.partition(": ")
            event_id = event_id_of(msg.data)
            seq = msg.metadata.sequence.stream
            receipts.add(IntakeReceipt(
                receipt_id=receipt_id("broken", msg.metadata.stream, seq),
                event_id=UUID(event_id) if event_id else None,
                msg_id=None if event_id else (msg.headers or {}).get("Nats-Msg-Id"),
                source=parsed.source, verdict="refused", field=field or "$", reason=(message or reason)[:REASON_CHARS],
                code=RefusalCode.CONTRACT, action=ACTIONS["refused"], decided_at=receipts.now))
            if event_id:
                spent.append(({"event_id": event_id, "source": parsed.source, "type": parsed.event,
                               "field": field or "$", "reason": (message or reason)[:REASON_CHARS],
                               "code": RefusalCode.CONTRACT.value}, msg.metadata.stream, seq))
        if spent:
            # Only an id that was new is spent by this refusal; one taken before keeps its verdict.
            claimed = await store.claim_event_ids(conn, [r["event_id"] for r, _, _ in spent],
                                                  [stream for _, stream, _ in spent], [q for _, _, q in spent])
            await store.note_refusals(conn, [r for r, _, _ in spent if UUID(r["event_id"]) in claimed])
        await receipts.stage(conn)

    async def duplicates(self, conn: AsyncConnection, duplicates: Sequence[tuple[Msg, Envelope[Any]]]) -> None:
        """An event_id taken before: `duplicate`, with the first verdict. A redelivery of the very
        message that took it (same stream sequence) is no resend: its receipt went with its verdict."""
        ids = list({env.event_id for _, env in duplicates})
        taken = await store.inbox_entries(conn, ids)
        first = await first_verdicts(conn, ids)
        receipts = Receipts(self.topology, self.clock())
        for msg, env in duplicates:
            row = taken.get(env.event_id)
            meta = msg.metadata
            if row is not None and row.stream == meta.stream and row.stream_seq == meta.sequence.stream:
                continue
            receipts.add(IntakeReceipt(
                receipt_id=receipt_id(env.event_id, "duplicate", meta.stream, meta.sequence.stream),
                event_id=env.event_id, source=env.source, verdict="duplicate", type=env.type,
                region=env.region, first=first.get(env.event_id), action=ACTIONS["duplicate"],
                decided_at=receipts.now))
        await receipts.stage(conn)


async def first_verdicts(conn: AsyncConnection, ids: Sequence[UUID]) -> dict[UUID, FirstVerdict]:
    """What registry decided about each of these event ids: accepted, refused or waiting."""
    found: dict[UUID, FirstVerdict] = {}
    for r in (await store.waiting_events(conn, ids)).values():
        found[r.event_id] = FirstVerdict(verdict="waiting", field=r.field, reason=r.reason, until=r.until)
    for r in (await store.refused_events(conn, ids)).values():
        found[r.event_id] = FirstVerdict(verdict="refused", field=r.field, reason=r.reason[:REASON_CHARS],
                                         code=RefusalCode(r.code) if r.code in RefusalCode.__members__.values()
                                         else RefusalCode.RULE)
    for r in (await store.accepted_events(conn, ids)).values():
        found[r.event_id] = FirstVerdict(verdict="accepted", id=str(r.record_id), region=r.region)
    return found

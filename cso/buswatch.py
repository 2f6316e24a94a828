"""Noticing that the bus forgot, and refilling it from PostgreSQL (the record of truth).

JetStream acknowledges a publish before it is on disk, and a lost or truncated store loses
acknowledged messages. Every service therefore compares, on start and periodically, what it knows
it published (the last sequence each stream acknowledged to its outbox relay, outbox_stream) and
applied (its consumer positions) with what each stream now holds. A stream that was recreated,
whose last sequence went backwards, or that reports lost messages is a gap: it is logged with the
numbers, counted, announced as BusGapDetected, and repaired — the producer republishes its outbox
(kept for its retention period) from its first row bound for that stream (its relay's position
moves back there, `outbox.rewind`), and the consumer
starts over from the stream's beginning; event-id deduplication makes both harmless. A partitioned
consumer starts over in every partition (Consumer.restart deletes every durable of its layout):
the replica that found the gap records it in tables all partitions share, so no other would.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Protocol

from nats.aio.client import Client
from nats.js.errors import NotFoundError
from prometheus_client import Counter
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from contracts import Topology, make_event
from contracts import events as ev

from . import outbox
from .consumer import POSITION_SEPARATOR, Consumer

log = logging.getLogger(__name__)
GAPS = Counter("cso_bus_gaps_total", "Streams found to have lost messages", ["service", "stream", "side"])


@dataclass(frozen=True)
class Gap:
    stream: str
    side: str          # "producer" (our published events are gone) or "consumer"
    known_seq: int     # the highest sequence we had published or applied
    stream_last_seq: int
    recreated: bool
    lost: int
    # The stream as last seen intact (its last sequence, and when), and its first sequence now:
    # what was lost is after known_seq, at least through seen_last_seq.
    seen_last_seq: int = 0
    intact_at: datetime | None = None
    stream_first_seq: int = 0
    stream_created: datetime | None = None

    @property
    def lost_at_least(self) -> int:
        return max(self.lost, self.seen_last_seq - self.known_seq,
                   self.stream_first_seq - 1 - self.known_seq if not self.recreated else 0, 0)


# A stream this young is checked against our outbox too (see check); the clocks of NATS and
# PostgreSQL may differ by up to CLOCK_SKEW.
YOUNG_STREAM = timedelta(minutes=10)
CLOCK_SKEW = timedelta(seconds=2)

# Told, inside the repair's transaction, of each gap found (registry announces lost intake).
GapListener = Callable[[AsyncConnection, Gap], Awaitable[None]]


class Watched(Protocol):
    """What BusWatch reads of the service it watches (cso.service.Runtime), named here so that the
    runtime imports this module and not the other way round."""

    name: str
    schema: str
    topology: Topology
    engine: AsyncEngine
    nc: Client | None
    relay: outbox.Relay | None
    consumers: list[Consumer]
    gap_listeners: list[GapListener]

    @property
    def needed_streams(self) -> tuple[str, ...]: ...

    async def check_streams(self) -> list[str]: ...


class BusWatch:
    def __init__(self, runtime: Watched, interval: float = 5.0) -> None:
        self.runtime, self.interval = runtime, interval

    async def check(self) -> list[Gap]:
        rt = self.runtime
        assert rt.nc is not None
        js = rt.nc.jetstream()
        # A lost store loses the streams themselves. The operator makes them again (cso migrate,
        # cso up); until then a missing stream is skipped, and once it is back its new creation
        # time is the gap.
        await rt.check_streams()
        schema = rt.schema
        # Read what we know before asking the server: anything acked later is within the stream.
        async with rt.engine.connect() as conn:
            acked: dict[str, int] = dict((await conn.execute(text(
                f'SELECT stream, last_seq FROM "{schema}".outbox_stream WHERE outbox = \'outbox\''))).all())
            applied: dict[str, int] = {}
            for key, last in (await conn.execute(text(
                    f'SELECT stream, last_seq FROM "{schema}".consumer_position'))).all():
                # A partition's row (`<stream>#p<i>`, cso/consumer.py): the stream held at least
                # what any partition applied.
                stream_name = key.split(POSITION_SEPARATOR)[0]
                applied[stream_name] = max(applied.get(stream_name, 0), last)
            seen = {r[0]: (r[1], r[2], r[3], r[4]) for r in (await conn.execute(text(
                f'SELECT stream, created, last_seq, messages, checked_at FROM "{schema}".bus_stream'))).all()}
        gaps: list[Gap] = []
        consumed = {c.stream for c in rt.consumers}
        # Every stream the service uses is looked at from its first check on, before it published
        # anything there: a stream first seen after it was lost and made again looked new, not
        # recreated (registry's CSO_REGISTRY, wiped within seconds of its first event: never refilled).
        for stream in sorted(set(acked) | set(applied) | consumed | set(rt.needed_streams)):
            try:
                info = await js.stream_info(stream)
            except NotFoundError:
                continue
            last, created, first = info.state.last_seq, info.created, info.state.first_seq
            lost = len(info.state.lost.msgs or []) if info.state.lost and info.state.lost.msgs else 0
            messages = info.state.messages
            before = seen.get(stream)
            recreated = before is not None and before[0] is not None and created is not None \
                and abs((before[0] - created).total_seconds()) > 0.001
            if not recreated and acked.get(stream) and created is not None \
                    and datetime.now(timezone.utc) - created < YOUNG_STREAM:
                # A stream made lately may have been made again after a loss that our last look
                # did not tell apart (a look between the new stream's creation and this one): our
                # own record says it too, if events we published were acknowledged before it existed.
                async with rt.engine.connect() as conn:
                    older = (await conn.execute(text(
                        f'SELECT last_seq FROM "{schema}".outbox_stream WHERE outbox = \'outbox\' '
                        "AND stream = :s AND first_published_at < :t"),
                        {"s": stream, "t": created - CLOCK_SKEW})).scalar()
                if older:
                    log.warning("%s: %s was made at %s, after events we published to it were acknowledged: "
                                "it was made again", rt.name, stream, created.isoformat())
                    recreated = True
            if before is not None and not recreated and not info.config.max_age:
                # cso never deletes from a stream without an age limit: fewer messages than we saw
                # plus those appended since means some vanished (a truncated block loses them
                # without a trace but the jump of its first sequence).
                expected = before[2] + max(0, last - before[1])
                if messages < expected:
                    lost += expected - messages
            if before is not None and not recreated and not info.config.max_age:
                # A stream that starts after what we applied lost what lay between (a truncated
                # block, or messages deleted by hand).
                for known in (acked.get(stream), applied.get(stream)):
                    if known and first > known + 1 and info.state.messages:
                        lost = max(lost, first - 1 - int(known))
            seen_last = int(before[1]) if before is not None else 0
            if recreated:
                # Our consumers may have seen the lost stream reach further since the last look.
                seen_last = max([seen_last, *(c.last_seen_before(created) for c in rt.consumers
                                              if c.stream == stream)])
            # A consumer that had applied nothing of a stream that held messages lost them all.
            consumer_known = applied.get(stream) or (0 if stream in consumed and seen_last else None)
            for side, known in (("producer", acked.get(stream)), ("consumer", consumer_known)):
                if known is not None and (known or side == "consumer") and (recreated or last < known or lost):
                    gap = Gap(stream, side, int(known), last, recreated, lost, seen_last_seq=seen_last,
                              intact_at=before[3] if before is not None else None, stream_first_seq=first,
                              stream_created=created)
                    # Repair before recording the stream's new state: if this check dies
                    # half-way, the next one still sees the gap.
                    await self.repair(gap)
                    gaps.append(gap)
            async with rt.engine.begin() as conn:
                await conn.execute(text(
                    f'INSERT INTO "{schema}".bus_stream (stream, created, last_seq, messages) VALUES (:s, :c, :l, :m) '
                    "ON CONFLICT (stream) DO UPDATE SET created = excluded.created, last_seq = excluded.last_seq, "
                    "messages = excluded.messages, checked_at = now()"),
                    {"s": stream, "c": created, "l": last, "m": messages})
        return gaps

    async def repair(self, gap: Gap) -> None:
        rt = self.runtime
        log.error("%s: bus gap on %s (%s side): we had sequence %d, the stream's last is %d%s%s",
                  rt.name, gap.stream, gap.side, gap.known_seq, gap.stream_last_seq,
                  ", stream recreated" if gap.recreated else "", f", {gap.lost} lost" if gap.lost else "")
        GAPS.labels(rt.name, gap.stream, gap.side).inc()
        async with rt.engine.begin() as conn:
            if gap.side == "producer":
                # From the first row the outbox keeps of the lost stream, not the outbox's first
                # (review finding 5): the rows of other streams above it go out again too (one
                # position for all), and what they already hold is dropped as a duplicate. Not
                # only the rows made since the loss: a consumer lagging behind it (targets during a
                # backfill, a service that was down) had not read what the stream held before, and
                # every inbox keeps its event ids, so a longer refill applies nothing twice.
                await outbox.rewind(conn, rt.schema, stream=gap.stream, subjects=self.subjects(gap.stream))
            else:
                await conn.execute(text(
                    f'UPDATE "{rt.schema}".consumer_position SET last_seq = 0 WHERE stream = :s OR stream LIKE :p'),
                    {"s": gap.stream, "p": f"{gap.stream}{POSITION_SEPARATOR}%"})
            announcement = make_event(ev.BusGapDetected(
                stream=gap.stream, consumer=f"{rt.name}:{gap.side}", applied_sequence=gap.known_seq,
                stream_last_sequence=gap.stream_last_seq, lost_after_sequence=gap.known_seq,
                lost_through_sequence=max(gap.seen_last_seq, gap.known_seq), lost_at_least=gap.lost_at_least,
                stream_recreated=gap.recreated, stream_first_sequence=gap.stream_first_seq,
                action=self.action(gap)), source=f"cso-{rt.name}", region="00")
            await outbox.add(conn, rt.schema, rt.topology, [(announcement, gap.stream)])
            for listener in rt.gap_listeners:
                await listener(conn, gap)
        if gap.side == "consumer":
            for consumer in rt.consumers:
                if consumer.stream == gap.stream:
                    # Every partition's durable, not only this replica's: the others' replicas
                    # read the reset positions and the stream's new state, and see no gap.
                    await consumer.restart(from_start=True)
        if rt.relay:
            rt.relay.notify()

    def subjects(self, stream: str) -> tuple[str, ...]:
        """The subjects `stream` takes, as the topology makes them."""
        for spec in self.runtime.topology.streams:
            if spec.name == stream:
                return spec.subjects
        return (">",)   # a stream cso does not make: every row may have gone there

    def action(self, gap: Gap) -> str:
        """What the gap means and what is done about it, in the announcement's words."""
        rt = self.runtime
        if gap.side == "producer":
            return (f"{rt.name} publishes its outbox again (the record of truth in PostgreSQL); "
                    "consumers drop what they already applied: nothing to do")
        if gap.stream == rt.topology.stream("CSO_INTAKE"):
            return ("facts that outside systems published on intake and registry had not applied are gone, "
                    "and no outbox holds them; registry told each publisher on cso.receipts.<source>.lost: "
                    "each must ask for its receipts and publish again, same event_id, what has none "
                    "(cso publish --reconcile FILE)")
        return (f"{rt.name} reads the stream again from its start; what its producer republishes from "
                "its outbox comes back: nothing to do")

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("%s: bus check failed (%s); retrying", self.runtime.name, e)
            await asyncio.sleep(self.interval)



"""Noticing that the bus forgot, and refilling it from PostgreSQL (the record of truth).

JetStream acknowledges a publish before it is on disk, and a lost or truncated store loses
acknowledged messages. Every service therefore compares, on start and periodically, what it knows
it published (its outbox's acked sequences) and applied (its consumer positions) with what each
stream now holds. A stream that was recreated, whose last sequence went backwards, or that reports
lost messages is a gap: it is logged with the numbers, counted, announced as BusGapDetected, and
repaired — the producer republishes its outbox (kept for its retention period), and the consumer
starts over from the stream's beginning; event-id deduplication makes both harmless.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nats.js.errors import NotFoundError
from prometheus_client import Counter
from sqlalchemy import text

from contracts import events as ev
from contracts import make_event

from . import outbox

if TYPE_CHECKING:
    from .service import Runtime

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


class BusWatch:
    def __init__(self, runtime: Runtime, interval: float = 5.0) -> None:
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
            acked = dict((await conn.execute(text(
                f'SELECT stream, max(stream_seq) FROM "{schema}".outbox WHERE published_at IS NOT NULL '
                "AND stream IS NOT NULL GROUP BY stream"))).all())
            applied = dict((await conn.execute(text(
                f'SELECT stream, last_seq FROM "{schema}".consumer_position'))).all())
            seen = {r[0]: (r[1], r[2], r[3]) for r in (await conn.execute(text(
                f'SELECT stream, created, last_seq, messages FROM "{schema}".bus_stream'))).all()}
        gaps: list[Gap] = []
        for stream in sorted(set(acked) | set(applied) | {c.stream for c in rt.consumers}):
            try:
                info = await js.stream_info(stream)
            except NotFoundError:
                continue
            last, created = info.state.last_seq, info.created
            lost = len(info.state.lost.msgs or []) if info.state.lost and info.state.lost.msgs else 0
            messages = info.state.messages
            before = seen.get(stream)
            recreated = before is not None and before[0] is not None and created is not None \
                and abs((before[0] - created).total_seconds()) > 0.001
            if before is not None and not recreated and not info.config.max_age:
                # cso never deletes from a stream without an age limit: fewer messages than we saw
                # plus those appended since means some vanished (a truncated block loses them
                # without a trace but the jump of its first sequence).
                expected = before[2] + max(0, last - before[1])
                if messages < expected:
                    lost += expected - messages
            for side, known in (("producer", acked.get(stream)), ("consumer", applied.get(stream))):
                if known and (recreated or last < known or lost):
                    gap = Gap(stream, side, int(known), last, recreated, lost)
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
                await conn.execute(text(
                    f'UPDATE "{rt.schema}".outbox SET published_at = NULL, stream_seq = NULL WHERE stream = :s'),
                    {"s": gap.stream})
            else:
                await conn.execute(text(
                    f'UPDATE "{rt.schema}".consumer_position SET last_seq = 0 WHERE stream = :s'), {"s": gap.stream})
            announcement = make_event(ev.BusGapDetected(
                stream=gap.stream, consumer=f"{rt.name}:{gap.side}", applied_sequence=gap.known_seq,
                stream_last_sequence=gap.stream_last_seq), source=f"cso-{rt.name}", region="00")
            await outbox.add(conn, rt.schema, rt.topology, [(announcement, gap.stream)])
        if gap.side == "consumer":
            for consumer in rt.consumers:
                if consumer.stream == gap.stream:
                    await consumer.restart(from_start=True)
        if rt.relay:
            rt.relay.notify()

    async def run(self) -> None:
        while True:
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("%s: bus check failed (%s); retrying", self.runtime.name, e)
            await asyncio.sleep(self.interval)


